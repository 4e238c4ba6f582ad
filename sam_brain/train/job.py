"""The train half of the pipeline: snapshot the pool -> dataset -> supervised run -> version.

`TrainingJob` runs one training run end to end in the daemon's event loop (the heavy work is in
the subprocess): it records the run and the pool version it trained on, streams progress into the
state store, and on success hands the adapter to `release` (gate, then canary or activation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sam_brain.errors import SamBrainError, TrainingFailed
from sam_brain.home import Home
from sam_brain.hub import resolve_model
from sam_brain.pipeline.split import ensure_nonempty
from sam_brain.pipeline.tokens import fit_rows
from sam_brain.pool import write_jsonl_atomic
from sam_brain.protocols import Progress, TrainSpec
from sam_brain.store import Run, now_iso
from sam_brain.train.release import Exclusive, Outcome, release
from sam_brain.train.supervisor import TrainingProcess

log = logging.getLogger(__name__)


def base_model_ref(home: Home, backend: str) -> str:
    t = home.config.training
    return t.mlx_base_model if backend == "mlx" else t.cuda_base_model


def build_dataset(
    home: Home, out: Path, now: float | None = None, base: Path | None = None
) -> dict[str, int]:
    """Write train/valid/test JSONL of trainable samples (+ preference.jsonl); returns counts.

    A tiny pool may have no validation group yet; then the smallest deterministic group is
    moved to val for this dataset only (see split.ensure_nonempty). Rows longer than the
    profile's length in the base model's tokens (`base`, when given) are cut again into
    windows, and a row that still does not fit (one step longer than the length) is left out,
    so the trainer never truncates a supervised turn; both are counted (`resplit`, `too_long`).
    """
    now = time.time() if now is None else now
    rows = list(home.pool.samples(f"ready_after <= {now!r}"))
    sft = [(s, split) for s, split in rows if s.kind == "sft"]
    groups = {s.group: split for s, split in sft}
    groups = ensure_nonempty(groups)
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for s, _ in sft:
        by_split[groups[s.group]].append({"messages": s.messages})
    fit = fit_rows(home.config, by_split, base)
    counts = {
        "train": write_jsonl_atomic(out / "train.jsonl", by_split["train"]),
        "val": write_jsonl_atomic(out / "valid.jsonl", by_split["val"]),
        "test": write_jsonl_atomic(out / "test.jsonl", by_split["test"]),
    }
    prefs = [
        {"prompt": s.messages, "chosen": s.chosen, "rejected": s.rejected}
        for s, split in rows
        if s.kind == "preference" and split == "train"
    ]
    if prefs:
        counts["preference"] = write_jsonl_atomic(out / "preference.jsonl", prefs)
    counts.update({k: v for k, v in fit.items() if v})
    return counts


def iso_to_epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def new_samples_since_last_run(home: Home) -> int:
    """Trainable samples first seen after the last completed run was created."""
    since = 0.0
    for run in home.store.runs(50):
        if run.status == "completed":
            since = iso_to_epoch(run.created_at)
            break
    return home.pool.trainable_count(since=since)


class TrainingJob:
    """One run: create the record, build data, supervise the worker, register the result."""

    def __init__(
        self,
        home: Home,
        backend: str,
        trigger: str,
        attempt: int = 1,
        exclusive: Exclusive[Any] | None = None,
    ) -> None:
        self.home = home
        self.exclusive = exclusive
        self.outcome: Outcome | None = None
        self.backend = backend
        self.trigger = trigger
        self.attempt = attempt
        self.run: Run | None = None
        self.process: TrainingProcess | None = None
        self._last_progress = 0.0

    async def execute(self) -> Run:
        """Run to the end; a failure is recorded on the run and re-raised as TrainingFailed."""
        home = self.home
        ref = base_model_ref(home, self.backend)
        run = home.store.create_run(
            self.trigger,
            self.backend,
            ref,
            samples_count=0,
            pool_version=home.pool.version,
            attempt=self.attempt,
        )
        self.run = run
        run_dir = home.runs_dir / run.run_id
        try:
            base = await asyncio.to_thread(resolve_model, ref)
            counts = await asyncio.to_thread(build_dataset, home, run_dir / "data", None, base)
            if counts["train"] == 0:
                raise TrainingFailed("no trainable samples in the pool")
            home.store.update_run(
                run.run_id,
                status="training",
                started_at=now_iso(),
                samples_count=counts["train"],
                output_path=str(run_dir / "adapter"),
            )
            profile = home.config.profile()
            active = home.versions.current()
            init = ""
            if home.config.training.continue_from_active and active and active.base_model == ref:
                init = active.adapter_path  # each version builds on the one users run now
            spec = TrainSpec(
                run_id=run.run_id,
                base_model=str(base),
                data_dir=str(run_dir / "data"),
                out_dir=str(run_dir / "adapter"),
                profile=asdict(profile),
                seed=home.config.training.seed,
                init_adapter=init,
            )
            self.process = TrainingProcess(
                self.backend,
                spec,
                run_dir,
                nice=home.config.training.nice,
                timeout_s=home.config.training.timeout_minutes * 60,
            )
            result = await self.process.run(self._on_progress)
            metrics: dict[str, Any] = dict(result.metrics)
            metrics["dataset"] = counts
            # The run stays "training" while the gate evaluates it, so `--wait` returns only
            # once its version is active, a canary or rejected.
            home.store.update_run(run.run_id, metrics=metrics, progress={"message": "evaluating"})
            self.outcome = await asyncio.to_thread(
                release,
                home,
                Path(result.adapter_dir),
                base_model_dir=str(base),
                base_ref=ref,
                run_id=run.run_id,
                samples=counts["train"],
                metrics=result.metrics,
                description=f"run {run.run_id} ({self.trigger})",
                test_path=run_dir / "data" / "test.jsonl",
                exclusive=self.exclusive,
                pool_version=run.pool_version,
            )
            home.store.add_event(
                "released",
                {
                    "run_id": run.run_id,
                    "version": self.outcome.version,
                    "action": self.outcome.action,
                    "reasons": self.outcome.reasons,
                },
            )
            log.info("run %s -> %s %s", run.run_id, self.outcome.version, self.outcome.action)
            metrics["release"] = {
                "version": self.outcome.version,
                "action": self.outcome.action,
                "reasons": self.outcome.reasons,
            }
            home.store.update_run(
                run.run_id, status="completed", finished_at=now_iso(), metrics=metrics
            )
        except asyncio.CancelledError:
            home.store.update_run(
                run.run_id, status="failed", reason="daemon stopped", finished_at=now_iso()
            )
            raise
        except SamBrainError as err:
            status = "cancelled" if str(err) == "cancelled" else "failed"
            home.store.update_run(run.run_id, status=status, reason=str(err), finished_at=now_iso())
            log.warning("training run %s %s: %s", run.run_id, status, err)
            raise TrainingFailed(str(err)) from err
        except Exception as err:  # never let a bug in one run take the daemon down
            home.store.update_run(
                run.run_id,
                status="failed",
                reason=f"{type(err).__name__}: {err}",
                finished_at=now_iso(),
            )
            log.exception("training run %s crashed", run.run_id)
            raise TrainingFailed(f"{type(err).__name__}: {err}") from err
        return home.store.get_run(run.run_id)

    def _on_progress(self, p: Progress) -> None:
        now = time.monotonic()
        # Throttle database writes; the last report of a run always lands via the final update.
        if now - self._last_progress < 1.0 and p.step < p.total_steps:
            return
        self._last_progress = now
        if self.run is not None:
            self.home.store.update_run(self.run.run_id, progress=asdict(p))

    async def cancel(self) -> None:
        if self.process is not None:
            await self.process.cancel()


def summarize_runs(home: Home) -> dict[str, int]:
    return dict(Counter(r.status for r in home.store.runs(1000)))
