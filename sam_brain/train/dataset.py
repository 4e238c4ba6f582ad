"""The training data of one run: a snapshot of the pool's trainable samples as JSONL files.

`build_dataset` writes what the backends read (`train.jsonl`, `valid.jsonl`, `test.jsonl` and,
when the pool has preference pairs, `preference.jsonl`); the threshold check counts the samples
that arrived since the last completed run.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sam_brain.fsutil import write_jsonl_atomic, write_text_atomic
from sam_brain.home import Home
from sam_brain.pipeline.split import ensure_nonempty, hold_out_groups
from sam_brain.pipeline.tokens import fit_rows
from sam_brain.pipeline.training_select import selector, trainable_count
from sam_brain.protocols import Sample

SAMPLES = "samples.json"  # in a run's data folder: id -> content digest of every sample used


def sample_digest(s: Sample) -> str:
    """What a sample contributes to training (its turns and preference pair), hashed."""
    body = json.dumps([s.messages, s.chosen, s.rejected], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def base_model_ref(home: Home, backend: str) -> str:
    t = home.config.training
    return t.mlx_base_model if backend == "mlx" else t.cuda_base_model


def build_dataset(
    home: Home,
    out: Path,
    now: float | None = None,
    base: Path | None = None,
    pool_version: int | None = None,
) -> dict[str, int]:
    """Write train/valid/test JSONL of trainable samples (+ preference.jsonl); returns counts.

    A tiny pool may have no validation group yet; then the smallest deterministic group is
    moved to val for this dataset only (see split.ensure_nonempty). With no test group either, a
    share of the train sessions is held out for the gate and kept out of training
    (split.hold_out_groups); `held_out_groups` in the counts says how many. Rows longer than the
    profile's length in the base model's tokens (`base`, when given) are cut again into windows,
    and a row that still does not fit (one step longer than the length) is left out, so the
    trainer never truncates a supervised turn; both are counted (`resplit`, `too_long`).

    With `pool_version` the rows are read from the pool as it was at that version (the one the
    run recorded), so an ingest that lands meanwhile cannot leak in; `samples.json` lists the
    samples used with their content digest, so a resume can tell whether any was removed since.

    Raises:
        NotFound: `pool_version` no longer exists.
    """
    now = time.time() if now is None else now
    pool = home.pool if pool_version is None else home.pool.at_version(pool_version)
    belongs = selector(home.config, home.training)  # only this training's samples
    rows = [(s, split) for s, split in pool.samples(ready_before=now) if belongs(s)]
    sft = [(s, split) for s, split in rows if s.kind == "sft"]
    groups = ensure_nonempty({s.group: split for s, split in sft})
    held = hold_out_groups(groups, home.config.deployment.gate_holdout_share)
    moved = sum(1 for g, split in held.items() if split != groups[g])
    groups = held
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for s, _ in sft:
        by_split[groups[s.group]].append({"messages": s.messages})
    fit = fit_rows(home.config, by_split, base)
    counts = {
        "train": write_jsonl_atomic(out / "train.jsonl", by_split["train"]),
        "val": write_jsonl_atomic(out / "valid.jsonl", by_split["val"]),
        "test": write_jsonl_atomic(out / "test.jsonl", by_split["test"]),
    }
    if moved:
        counts["held_out_groups"] = moved
    prefs = [
        {"prompt": s.messages, "chosen": s.chosen, "rejected": s.rejected}
        for s, split in rows
        # a held-out session's preference pairs stay out of training too
        if s.kind == "preference" and split == "train" and groups.get(s.group) != "test"
    ]
    if prefs:
        counts["preference"] = write_jsonl_atomic(out / "preference.jsonl", prefs)
    used = {
        s.id: sample_digest(s)
        for s, split in rows
        if s.kind == "sft"
        or (s.kind == "preference" and split == "train" and groups.get(s.group) != "test")
    }
    write_text_atomic(out / SAMPLES, json.dumps(used, sort_keys=True))
    counts.update({k: v for k, v in fit.items() if v})
    return counts


def new_samples_since_last_run(home: Home) -> int:
    """The training's trainable samples first seen after its last completed run was created."""
    since = 0.0
    for run in home.store.runs(50):
        if run.status == "completed":
            since = datetime.fromisoformat(run.created_at).timestamp()
            break
    return trainable_count(home.pool, home.config, home.training, since=since)
