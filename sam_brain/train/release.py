"""Releasing a trained adapter: register -> evaluate -> canary, activate or reject.

Nothing is registered before `deployment.adapter_check` finds the files fit the base model. Every
candidate, the first one included, is then judged by the gate (deployment/evaluate.py) against the
incumbent, or the base model when there is none, on held-out rows: the run's test split, or the
sessions the dataset build held out when the pool has no test split yet (on mlx-lm, else on torch).
A candidate judged better goes live directly when it is the first version; later ones start as a
canary at the first weight step and climb through `deployment.canary_steps`. With fewer than
`deployment.gate_min_rows` held-out rows there is no verdict: the version is marked `ungated` and
may only start as a canary (beside the base model for a first version), unless its task cases
(`deployment.gate_cases`, or the training's own) find it significantly worse: that rejects it.
The report is kept.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from deployment import canary
from deployment.adapter_check import check_adapter
from deployment.evaluate import EvalReport, evaluate_version
from deployment.task_gate import resolve_case_files, task_markdown
from sam_brain.errors import BadRequest, Conflict, PromotionRejected
from sam_brain.fsutil import write_jsonl_atomic, write_text_atomic
from sam_brain.home import Home
from sam_brain.hub import base_fingerprint, resolve_model
from sam_brain.registry import mlx_available
from sam_brain.store import Version
from sam_brain.train.policies import gate_config

log = logging.getLogger(__name__)
T = TypeVar("T")

# Runs `fn(resident_model)` with the one resident copy of the base (the chat server's, or a
# fresh one when nothing is serving).
Exclusive = Callable[[Callable[[Any], T]], T]


class ReleaseAction(StrEnum):
    """What the release did with a candidate; the values appear in events and API replies."""

    ACTIVATED = "activated"
    CANARY = "canary"
    REJECTED = "rejected"
    DRY_RUN = "dry-run"


@dataclass
class Outcome:
    """What happened to a candidate."""

    version: str
    action: ReleaseAction
    reasons: list[str]
    report: dict[str, Any] | None = None


def check_size(adapter_dir: Path, max_mb: float) -> None:
    size = sum(f.stat().st_size for f in adapter_dir.glob("*.safetensors")) / 2**20
    if size > max_mb:
        raise PromotionRejected(
            f"adapter is {size:.0f} MB, above deployment.max_adapter_mb={max_mb:.0f}"
        )


def _provenance(base_model_dir: str, pool_version: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "base_model_hash": base_fingerprint(base_model_dir) if base_model_dir else ""
    }
    if pool_version is not None:
        out["pool_version"] = pool_version
    return out


def check_base(adapter_dir: Path, base_ref: str, base_model_dir: str) -> None:
    """Refuse an adapter whose manifest names another base model than the one we serve."""
    for name in ("manifest.json", "train_manifest.json"):
        path = adapter_dir / name
        if not path.is_file():
            continue
        try:
            recorded = str(json.loads(path.read_text(encoding="utf-8")).get("base_model") or "")
        except (OSError, ValueError, AttributeError):
            continue
        known = {
            base_ref,
            base_model_dir,
            str(Path(base_model_dir).resolve()) if base_model_dir else "",
        }
        if recorded and recorded not in known:
            raise PromotionRejected(
                f"adapter at {adapter_dir} was trained on {recorded}, "
                f"not on the configured base model {base_ref}"
            )


def local_exclusive(base_model: str) -> Exclusive[Any]:
    """An `Exclusive` that loads its own resident base (CLI, daemon without chat serving)."""
    from deployment.resident import ResidentModel

    holder: dict[str, Any] = {}

    def run(fn: Callable[[Any], Any]) -> Any:
        if "m" not in holder:
            holder["m"] = ResidentModel(base_model)
        return fn(holder["m"])

    return run


def release(
    home: Home,
    adapter_dir: Path,
    *,
    base_model_dir: str,
    base_ref: str,
    run_id: str = "",
    samples: int = 0,
    metrics: dict[str, Any] | None = None,
    description: str = "",
    test_path: Path | None = None,
    held_out: int = 0,
    exclusive: Exclusive[Any] | None = None,
    dry_run: bool = False,
    pool_version: int | None = None,
    gate_cases: Sequence[str] | None = None,
) -> Outcome:
    """Check `adapter_dir`, register it and let the gate decide what happens to it.

    Args:
        test_path: Held-out rows to judge on; None (a manual deploy): the pool's test split.
        held_out: Sessions the dataset build held out for the gate (no test split yet); named
            in the reasons so the report says where its held-out data came from.
        gate_cases: Task case files the gate runs (a named training's own); None: the default
            training's `deployment.gate_cases`.

    Raises:
        AdapterInvalid: The adapter does not fit the base (nothing is registered).
    """
    cfg = home.config
    base_dir = base_model_dir or str(resolve_model(base_ref))
    check_size(adapter_dir, cfg.deployment.max_adapter_mb)
    check_base(adapter_dir, base_ref, base_model_dir)
    layouts = check_adapter(adapter_dir, base_dir, base_ref)
    if dry_run:
        from sam_brain.versions import sanity_check

        sanity_check(adapter_dir)
        checked = f"adapter ({' and '.join(layouts)} files) fits the base model"
        return Outcome(version="", action=ReleaseAction.DRY_RUN, reasons=[checked])
    with tempfile.TemporaryDirectory(prefix="sam-gate-") as scratch:
        test, source = _held_out_data(home, test_path, held_out, Path(scratch))
        v = home.versions.register(
            adapter_dir,
            run_id=run_id,
            base_model=base_ref,
            training_samples=samples,
            metrics=metrics,
            description=description,
            provenance=_provenance(base_dir, pool_version),
        )
        run = exclusive or gate_exclusive(base_dir)
        report: EvalReport | None = None
        cases = resolve_case_files(
            cfg.deployment.gate_cases if gate_cases is None else gate_cases, home.data
        )
        if run is not None and test is not None:
            report = run(
                lambda model: evaluate_version(
                    home.versions, model, v.version, test, gate_config(cfg), cases
                )
            )
            report.notes.insert(0, f"held-out data: {source}")
            if cfg.deployment.gate_judge:
                _judge(home, run, report, test)
            _save_report(home, run_id or v.version, report)
    why = _ungated(run is not None, report, source, cfg.deployment.gate_min_rows)
    reasons = [*(report.gate.reasons if report else []), f"held-out data: {source}"]
    # Worse task cases block even when too few held-out rows leave the loss without a verdict.
    blocked = report is not None and report.tasks is not None and report.tasks.blocked
    if (not why or blocked) and report is not None and not report.gate.promote:
        canary.reject(home.versions, v.version, "; ".join(reasons))
        log.warning("%s rejected by the gate: %s", v.version, "; ".join(reasons))
        return Outcome(v.version, ReleaseAction.REJECTED, reasons, report.to_dict())
    if why:
        # Too few rows for a verdict either way: the canary's live health checks decide.
        log.warning("%s is %s; it may only start as a canary", v.version, why)
        reasons = [why, *reasons]
    home.versions.set_gate(v.version, "ungated" if why else "passed", reasons)
    return _roll_out(home, v, reasons, report, gated=not why)


def _ungated(can_judge: bool, report: EvalReport | None, source: str, minimum: int) -> str:
    """Why the gate gave no verdict ("" when it did)."""
    if not can_judge:
        return "ungated: no model to judge with (install mlx-lm, or torch + transformers + peft)"
    rows = report.scored if report else 0
    if rows < minimum:
        return f"ungated: {rows} held-out rows ({source}), the gate needs {minimum} to judge"
    return ""


def _judge(home: Home, run: Exclusive[Any], report: EvalReport, test: Path) -> None:
    """The optional judge (`deployment.gate_judge`): the configured teacher compares candidate
    and reference answers; its verdict joins the report, the decision stays the loss gate's."""
    from deployment.judge import judge_gate
    from sam_brain.errors import SamBrainError
    from sam_brain.registry import TEACHERS, load
    from sam_brain.teacher_ledger import Budget, Budgeted, Ledger

    cfg = home.config
    try:
        teacher = load(TEACHERS, cfg.teacher.provider, "teacher")(cfg.teacher)
    except SamBrainError as err:  # no key, no base_url: say so in the report, gate as usual
        report.notes.append(f"judge: {err}")
        return
    # The judge's calls count against the same daily budget as the teach jobs, under one job name.
    budget = Budget(Ledger(home.data / "state.db"), cfg.teacher)
    teacher = Budgeted(teacher, budget, "gate-judge")
    d = cfg.deployment
    prompts, tokens = d.gate_judge_prompts, gate_config(cfg).gen_max_tokens
    run(lambda model: judge_gate(report, model, teacher, test, prompts, tokens))


def gate_exclusive(base_model_dir: str) -> Exclusive[Any] | None:
    """The gate's own model when nothing shares one: mlx-lm, else torch, else None."""
    if mlx_available():
        return local_exclusive(base_model_dir)
    from deployment.torch_scorer import TorchResident, torch_available

    if not torch_available():
        return None
    holder: dict[str, Any] = {}

    def run(fn: Callable[[Any], Any]) -> Any:
        if "m" not in holder:
            holder["m"] = TorchResident(base_model_dir)
        return fn(holder["m"])

    return run


def _held_out_data(
    home: Home, test_path: Path | None, held_out: int, scratch: Path
) -> tuple[Path | None, str]:
    """The rows to judge on and where they came from (said in the report and the reasons)."""
    if test_path is not None:
        rows = _count_rows(test_path)
        if held_out:
            return (test_path if rows else None), (
                f"{rows} rows of {held_out} sessions held out from this run's training"
                " (the pool has no test split yet)"
            )
        return (test_path if rows else None), f"{rows} rows of the test split"
    rows_out = [
        {"messages": s.messages}
        for s, split in home.pool.samples()
        if split == "test" and s.kind == "sft"
    ]
    path = scratch / "pool-test.jsonl"
    write_jsonl_atomic(path, rows_out)
    return (path if rows_out else None), f"{len(rows_out)} rows of the pool's test split"


def _count_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _roll_out(
    home: Home, v: Version, reasons: list[str], report: EvalReport | None, gated: bool
) -> Outcome:
    steps = home.config.deployment.canary_steps
    rep = report.to_dict() if report else None
    # Only a judged candidate goes straight to active; an ungated one starts as a canary, beside
    # the active version or, for a first version, beside the base model.
    if gated and (home.versions.current() is None or steps[0] >= 100):
        home.versions.activate(v.version, reason="passed the gate")
        return Outcome(v.version, ReleaseAction.ACTIVATED, reasons, rep)
    if canary.canary_state(home.versions) is not None:
        # One canary at a time: the newer candidate replaces the one still climbing.
        canary.abort(home.versions, reason=f"superseded by {v.version}")
    canary.start_canary(home.versions, v.version, steps[0])
    return Outcome(v.version, ReleaseAction.CANARY, reasons, rep)


def _save_report(home: Home, name: str, report: EvalReport) -> None:
    out = home.reports_dir / f"eval-{name}.json"
    write_text_atomic(out, report.to_json())
    md = out.with_suffix(".md")
    md.write_text(render_markdown(report), encoding="utf-8")


def render_markdown(report: EvalReport) -> str:
    d = report.to_dict()
    lines = [
        f"# Evaluation of {d['candidate']} against {d['incumbent'] or 'the base model'}",
        "",
        f"Decision: **{'promote' if report.gate.promote else 'reject'}**",
        "",
    ]
    lines += [f"- {r}" for r in report.gate.reasons]
    lines += [f"- note: {n}" for n in report.notes]
    lines += ["", "| model | mean loss | perplexity |", "|---|---|---|"]
    for name, stats in (
        ("base", d["base"]),
        ("incumbent", d["incumbent_loss"]),
        ("candidate", d["candidate_loss"]),
    ):
        if stats:
            lines.append(
                f"| {name} | {stats.get('mean_loss', 0):.4f} | {stats.get('perplexity', 0):.2f} |"
            )
    lines += ["", "```json", json.dumps(d["comparison"], indent=2), "```", ""]
    if report.tasks is not None:
        lines += task_markdown(report.tasks)
    return "\n".join(lines)


def rollback_or_abort(home: Home, version: str | None = None) -> tuple[str, Version | None]:
    """`samctl rollback`: during a canary abort it (weight 0); otherwise go back a version.

    Returns:
        What was done and the version active afterwards (None: the base model serves).
    """
    running = canary.canary_state(home.versions)
    if running is not None and version is None:
        canary.abort(home.versions, reason="manual rollback during canary")
        # A first version's canary runs beside the base model: then the base serves again.
        active = home.versions.current()
        return "aborted canary " + running.version, active
    back = home.versions.rollback(version)
    return "rolled back", back


def start_canary_from(home: Home, target: str, traffic: int) -> Version:
    """`samctl canary VERSION|PATH --traffic N`: a registered version or an adapter folder.

    The traffic and "no canary running" are checked before an adapter folder is copied in, so a
    refused request leaves no version behind.
    """
    path = Path(target).expanduser()
    if path.is_dir():
        _check_canary_can_start(home, traffic)
        ref = configured_base_ref(home)
        check_size(path, home.config.deployment.max_adapter_mb)
        check_adapter(path, resolve_model(ref), ref)
        v = home.versions.register(path, base_model=ref, description=f"canary from {path}")
        # Started by hand, not judged: shown as ungated until a human promotes it.
        home.versions.set_gate(v.version, "ungated", ["canary started by hand, not gated"])
        name = v.version
    else:
        name = home.versions.get(target).version
    canary.start_canary(home.versions, name, traffic)
    return home.versions.get(name)


def start_canary_version(home: Home, version: str, traffic: int) -> Version:
    """Make the registered `version` the canary at `traffic` percent."""
    name = home.versions.get(version).version
    canary.start_canary(home.versions, name, traffic)
    return home.versions.get(name)


def _check_canary_can_start(home: Home, traffic: int) -> None:
    if not isinstance(traffic, int) or not 1 <= traffic <= 100:
        raise BadRequest(f"canary traffic must be within 1..100 percent, not {traffic}")
    running = canary.canary_state(home.versions)
    if running is not None:
        raise Conflict(f"canary {running.version} is still running; promote or abort it first")


def configured_base_ref(home: Home) -> str:
    from sam_brain.registry import choose_backend

    backend, _ = choose_backend(home.config.training.backend)
    t = home.config.training
    return t.mlx_base_model if backend == "mlx" else t.cuda_base_model
