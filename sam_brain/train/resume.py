"""Whether an interrupted or cancelled run continues, and the plan that lets it.

At its start a run writes `plan.json` into its folder: the training config it was started with
(backend, base model, profile, seed, the adapter it builds on), the digest of its dataset files
and the profile the memory fit settled on. Their hash is the run's fingerprint, recorded on the
run. The next run continues the latest interrupted or cancelled run (same id, same folder, from
its last checkpoint) unless that config changed, its dataset files changed, or samples it trained
on were removed or rewritten in the pool (forgotten, re-scrubbed): then it starts over, and both
records say why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backends.checkpoint import load_checkpoint
from sam_brain.fsutil import write_text_atomic
from sam_brain.home import Home
from sam_brain.store import Run
from sam_brain.train.dataset import SAMPLES, sample_digest

PLAN = "plan.json"
DATA_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl", "preference.jsonl")
RESUMABLE = ("interrupted", "cancelled")
LIVE = ("pending", "training")


def dataset_digest(data: Path) -> str:
    """The digest of the data files a backend reads (a missing file counts as empty)."""
    h = hashlib.sha256()
    for name in DATA_FILES:
        path = data / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return h.hexdigest()[:32]


def config_key(home: Home, backend: str, base_ref: str, init_adapter: str) -> dict[str, Any]:
    """The training config a run's checkpoint depends on (not the memory-fitted profile)."""
    init = ""
    if init_adapter:
        owner = next((v for v in home.store.versions() if v.adapter_path == init_adapter), None)
        init = f"{owner.version}:{owner.checksum}" if owner else init_adapter
    return {
        "backend": backend,
        "base_model": base_ref,
        "profile": asdict(home.config.profile()),
        "seed": home.config.training.seed,
        "init_adapter": init,
    }


def fingerprint(config: dict[str, Any], data_digest: str) -> str:
    blob = json.dumps([config, data_digest], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def write_plan(run_dir: Path, plan: dict[str, Any]) -> None:
    write_text_atomic(run_dir / PLAN, json.dumps(plan, indent=1, sort_keys=True) + "\n")


def read_plan(run_dir: Path) -> dict[str, Any] | None:
    try:
        plan = json.loads((run_dir / PLAN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def checkpoint_step(run_dir: Path) -> int:
    """The step of the run's last checkpoint (0 when it has none).

    A remote run's checkpoint stays on the cluster; its job reports the step (`remote.json`).
    """
    try:
        found = load_checkpoint(run_dir / "adapter" / "checkpoint")
    except (OSError, ValueError):
        found = None
    if found is None:
        try:
            remote = json.loads((run_dir / "remote.json").read_text(encoding="utf-8"))
            return int(remote.get("checkpoint_step", 0))
        except (OSError, ValueError, AttributeError):
            return 0
    return int(found[1].get("step", 0))


def recover_interrupted(home: Home) -> list[Run]:
    """Runs a dead daemon left pending/training become `interrupted` (resumable); returns them."""
    out = []
    for run in home.store.runs(50):
        if run.status not in LIVE:
            continue
        step = checkpoint_step(home.runs_dir / run.run_id)
        home.store.update_run(
            run.run_id,
            status="interrupted",
            reason=f"daemon stopped during the run; checkpoint at step {step}, the next run resumes it",
        )
        out.append(home.store.get_run(run.run_id))
    return out


def resumable_run(home: Home) -> Run | None:
    """The latest run when it was interrupted or cancelled (an older one was superseded)."""
    last = home.store.last_run()
    return last if last is not None and last.status in RESUMABLE else None


def why_not_resume(home: Home, run: Run, config: dict[str, Any]) -> str | None:
    """Why `run` cannot continue under `config` (see `config_key`), or None when it can."""
    run_dir = home.runs_dir / run.run_id
    plan = read_plan(run_dir)
    if plan is None:
        if checkpoint_step(run_dir) == 0:
            return None  # stopped before its dataset was written: nothing trained, it starts now
        return "it has no plan.json (it started before runs could resume)"
    changed = sorted(k for k in config if plan.get("config", {}).get(k) != config[k])
    if changed:
        return "training config changed since it started: " + ", ".join(changed)
    data = run_dir / "data"
    if dataset_digest(data) != plan.get("dataset_digest"):
        return "its dataset files are missing or changed"
    try:
        pinned: dict[str, str] = json.loads((data / SAMPLES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"its dataset's sample list ({data / SAMPLES}) is missing or unreadable"
    current = {s.id: sample_digest(s) for s, _ in home.pool.samples() if s.id in pinned}
    gone = sum(1 for i, d in pinned.items() if current.get(i) != d)
    if gone:
        return (
            f"{gone} of the {len(pinned)} samples it trains on were removed or rewritten"
            " in the pool since it started (forgotten, excluded or re-scrubbed)"
        )
    return None
