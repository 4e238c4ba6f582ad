"""The train half of the pipeline: snapshot the pool -> dataset -> supervised run -> version.

`TrainingJob` runs one training run end to end in the daemon's event loop (the heavy work is in
the subprocess): it records the run and the pool version it trained on, streams progress into the
state store, and on success hands the adapter to `release` (gate, then canary or activation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sam_brain.errors import SamBrainError, TrainingCancelled, TrainingFailed
from sam_brain.home import Home
from sam_brain.hub import resolve_model
from sam_brain.protocols import Progress, TrainResult, TrainSpec
from sam_brain.store import Run, now_iso
from sam_brain.train.dataset import base_model_ref, build_dataset
from sam_brain.train.losspoints import record_progress
from sam_brain.train.release import Exclusive, Outcome, release
from sam_brain.train.supervisor import TrainingProcess

log = logging.getLogger(__name__)


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
        self.ref = base_model_ref(home, backend)
        self.run: Run | None = None
        self.process: TrainingProcess | None = None
        self._last_progress = 0.0

    def open_run(self) -> Run:
        """Create the run's record (pending) once; the scheduler calls it before the task starts."""
        if self.run is None:
            self.run = self.home.store.create_run(
                self.trigger,
                self.backend,
                self.ref,
                samples_count=0,
                pool_version=self.home.pool.version,
                attempt=self.attempt,
            )
        return self.run

    async def execute(self) -> Run:
        """Run to the end; a failure is recorded on the run and re-raised as TrainingFailed."""
        run = self.open_run()
        try:
            base, counts = await self._prepare(run)
            result = await self._train(run, base)
            metrics = await self._release(run, base, counts, result)
            self._finish(run, "completed", metrics=metrics)
        except asyncio.CancelledError:
            self._finish(run, "failed", reason="daemon stopped")
            raise
        except TrainingCancelled as err:
            self._finish(run, "cancelled", reason=str(err))
            raise
        except SamBrainError as err:
            self._finish(run, "failed", reason=str(err))
            raise TrainingFailed(str(err)) from err
        except Exception as err:  # never let a bug in one run take the daemon down
            self._finish(run, "failed", reason=f"{type(err).__name__}: {err}")
            log.exception("training run %s crashed", run.run_id)
            raise TrainingFailed(f"{type(err).__name__}: {err}") from err
        return self.home.store.get_run(run.run_id)

    def run_dir(self, run: Run) -> Path:
        return self.home.runs_dir / run.run_id

    async def _prepare(self, run: Run) -> tuple[Path, dict[str, int]]:
        """Resolve the base model and write the dataset; the run turns `training`."""
        base = await asyncio.to_thread(resolve_model, self.ref)
        data = self.run_dir(run) / "data"
        counts = await asyncio.to_thread(build_dataset, self.home, data, None, base)
        if counts["train"] == 0:
            raise TrainingFailed("no trainable samples in the pool")
        self.home.store.update_run(
            run.run_id,
            status="training",
            started_at=now_iso(),
            samples_count=counts["train"],
            output_path=str(self.run_dir(run) / "adapter"),
        )
        return base, counts

    def _spec(self, run: Run, base: Path) -> TrainSpec:
        home = self.home
        active = home.versions.current()
        init = ""
        if home.config.training.continue_from_active and active and active.base_model == self.ref:
            init = active.adapter_path  # each version builds on the one users run now
        return TrainSpec(
            run_id=run.run_id,
            base_model=str(base),
            data_dir=str(self.run_dir(run) / "data"),
            out_dir=str(self.run_dir(run) / "adapter"),
            profile=asdict(home.config.profile()),
            seed=home.config.training.seed,
            init_adapter=init,
        )

    async def _train(self, run: Run, base: Path) -> TrainResult:
        """Supervise the worker subprocess until it returns an adapter."""
        t = self.home.config.training
        self.process = TrainingProcess(
            self.backend,
            self._spec(run, base),
            self.run_dir(run),
            nice=t.nice,
            timeout_s=t.timeout_minutes * 60,
        )
        return await self.process.run(self._on_progress)

    async def _release(
        self, run: Run, base: Path, counts: dict[str, int], result: TrainResult
    ) -> dict[str, Any]:
        """Hand the adapter to the gate; returns the run's final metrics."""
        home = self.home
        metrics: dict[str, Any] = dict(result.metrics)
        metrics["dataset"] = counts
        # The run stays "training" while the gate evaluates it, so `--wait` returns only
        # once its version is active, a canary or rejected.
        home.store.update_run(run.run_id, metrics=metrics, progress={"message": "evaluating"})
        self.outcome = outcome = await asyncio.to_thread(
            release,
            home,
            Path(result.adapter_dir),
            base_model_dir=str(base),
            base_ref=self.ref,
            run_id=run.run_id,
            samples=counts["train"],
            metrics=result.metrics,
            description=f"run {run.run_id} ({self.trigger})",
            test_path=self.run_dir(run) / "data" / "test.jsonl",
            held_out=counts.get("held_out_groups", 0),
            exclusive=self.exclusive,
            pool_version=run.pool_version,
        )
        released = {
            "version": outcome.version,
            "action": outcome.action,
            "reasons": outcome.reasons,
        }
        home.store.add_event("released", {"run_id": run.run_id, **released})
        log.info("run %s -> %s %s", run.run_id, outcome.version, outcome.action)
        pruned = await asyncio.to_thread(
            home.versions.prune, home.config.deployment.keep_versions, home.runs_dir
        )
        if pruned:
            log.info("pruned %s (deployment.keep_versions)", ", ".join(pruned))
        metrics["release"] = released
        return metrics

    def _finish(self, run: Run, status: str, reason: str = "", **fields: Any) -> None:
        self.home.store.update_run(
            run.run_id, status=status, reason=reason, finished_at=now_iso(), **fields
        )
        if status != "completed":
            log.warning("training run %s %s: %s", run.run_id, status, reason)

    def _on_progress(self, p: Progress) -> None:
        if self.run is not None:  # every loss point, unthrottled: the dashboard's curves
            record_progress(self.home.store, self.run.run_id, p)
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
