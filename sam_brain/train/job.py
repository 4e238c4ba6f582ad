"""The train half of the pipeline: snapshot the pool -> dataset -> supervised run -> version.

`TrainingJob` runs one training run end to end in the daemon's event loop (the heavy work is in
the subprocess): it records the run and the pool version it trains on, writes the dataset once
from that pool version, streams progress into the state store, and on success hands the adapter
to `release` (gate, then canary or activation). Opening a job continues the latest interrupted
or cancelled run from its checkpoint when `resume.why_not_resume` allows, else starts a new run
whose record says why it did not continue (see train/resume.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sam_brain.errors import (
    NotFound,
    SamBrainError,
    TrainingCancelled,
    TrainingFailed,
    WorkerKilled,
)
from sam_brain.home import Home
from sam_brain.hub import resolve_model
from sam_brain.protocols import Progress, TrainResult, TrainSpec
from sam_brain.store import Run, now_iso
from sam_brain.train import resume
from sam_brain.train.dataset import base_model_ref, build_dataset
from sam_brain.train.losspoints import record_progress
from sam_brain.train.release import Exclusive, Outcome, release
from sam_brain.train.runs import prune_runs
from sam_brain.train.supervisor import TrainingProcess

log = logging.getLogger(__name__)


class TrainingJob:
    """One run: open (or reopen) the record, build data, supervise the worker, register."""

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
        self.init_adapter = ""
        self.config: dict[str, Any] = {}
        self.notes: list[str] = []  # for a new run: why it did not continue an earlier one
        self.resumed = False
        self.stopping = False  # the daemon is shutting down: a stop interrupts, not cancels

    def open_run(self) -> Run:
        """The run's record, once: the interrupted/cancelled run it continues, or a new one.

        Checking a resume reads the pool (`resume.why_not_resume`): call it off the event loop.
        """
        if self.run is None:
            self.init_adapter = self._init_adapter()
            self.config = resume.config_key(self.home, self.backend, self.ref, self.init_adapter)
            self.run = self._continue() or self._create()
        return self.run

    def _init_adapter(self) -> str:
        active = self.home.versions.current()
        if not (self.home.config.training.continue_from_active and active):
            return ""
        # Each version builds on the one users run now (when it shares the base model).
        return active.adapter_path if active.base_model == self.ref else ""

    def _create(self) -> Run:
        run = self.home.store.create_run(
            self.trigger,
            self.backend,
            self.ref,
            samples_count=0,
            pool_version=self.home.pool.version,
            attempt=self.attempt,
        )
        if self.notes:
            self.home.store.update_run(run.run_id, notes=self.notes)
            run = self.home.store.get_run(run.run_id)
        return run

    def _continue(self) -> Run | None:
        """Reopen the latest interrupted or cancelled run when it can continue; None otherwise."""
        store = self.home.store
        prev = resume.resumable_run(self.home)
        if prev is None:
            return None
        why = resume.why_not_resume(self.home, prev, self.config)
        if why is not None:
            self.notes.append(f"started over instead of resuming run {prev.run_id}: {why}")
            store.update_run(
                prev.run_id,
                status="failed" if prev.status == "interrupted" else prev.status,
                reason=f"{prev.reason}; not resumed: {why}".lstrip("; "),
                finished_at=prev.finished_at or now_iso(),
            )
            log.info("run %s not resumed: %s", prev.run_id, why)
            return None
        self.resumed = True
        step = resume.checkpoint_step(self.run_dir(prev))
        note = f"resumed from step {step} ({prev.status}: {prev.reason or 'no reason given'})"
        store.update_run(
            prev.run_id,
            status="pending",
            reason="",
            finished_at=None,
            attempt=self.attempt,
            notes=[*prev.notes, note],
        )
        log.info("run %s %s", prev.run_id, note)
        return store.get_run(prev.run_id)

    async def execute(self) -> Run:
        """Run to the end; a failure is recorded on the run and re-raised as TrainingFailed."""
        run = self.run if self.run is not None else await asyncio.to_thread(self.open_run)
        try:
            base, counts = await self._prepare(run)
            result = await self._train(run, base)
            metrics = await self._release(run, base, counts, result)
            self._finish(run, "completed", metrics=metrics)
        except asyncio.CancelledError:
            # The worker saved a checkpoint on SIGTERM: the next start continues from it.
            self._interrupted(run, "daemon stopped")
            raise
        except TrainingCancelled as err:
            if self.stopping:
                self._interrupted(run, "daemon stopped")
            else:
                self._finish(run, "cancelled", reason=str(err))
            raise
        except WorkerKilled as err:  # the retry continues it from its checkpoint
            self._interrupted(run, str(err))
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
        """Resolve the base model and write the dataset (once); the run turns `training`."""
        base = await asyncio.to_thread(resolve_model, self.ref)
        run_dir = self.run_dir(run)
        plan = resume.read_plan(run_dir) if self.resumed else None
        if plan is None:
            plan = await asyncio.to_thread(self._plan, run, base)
        counts: dict[str, int] = plan["counts"]
        if counts["train"] == 0:
            raise TrainingFailed("no trainable samples in the pool")
        self.home.store.update_run(
            run.run_id,
            status="training",
            started_at=run.started_at or now_iso(),
            samples_count=counts["train"],
            output_path=str(run_dir / "adapter"),
            fingerprint=plan["fingerprint"],
        )
        return base, counts

    def _plan(self, run: Run, base: Path) -> dict[str, Any]:
        """Write the dataset from the run's pool version, and the plan a resume checks."""
        data = self.run_dir(run) / "data"
        version = run.pool_version
        try:
            counts = build_dataset(self.home, data, None, base, pool_version=version)
        except NotFound as err:  # compacted away since the run was recorded: use the current one
            version = self.home.pool.version
            self._note(run, f"{err}; dataset read from pool version {version}")
            self.home.store.update_run(run.run_id, pool_version=version)
            counts = build_dataset(self.home, data, None, base, pool_version=version)
        digest = resume.dataset_digest(data)
        plan = {
            "run_id": run.run_id,
            "config": self.config,
            "pool_version": version,
            "dataset_digest": digest,
            "counts": counts,
            "init_adapter": self.init_adapter,
            "profile": asdict(self.home.config.profile()),
            "fitted": False,
            "fingerprint": resume.fingerprint(self.config, digest),
        }
        resume.write_plan(self.run_dir(run), plan)
        return plan

    def _note(self, run: Run, note: str) -> None:
        notes = self.home.store.get_run(run.run_id).notes
        self.home.store.update_run(run.run_id, notes=[*notes, note])

    def _spec(self, run: Run, base: Path, plan: dict[str, Any]) -> TrainSpec:
        return TrainSpec(
            run_id=run.run_id,
            base_model=str(base),
            data_dir=str(self.run_dir(run) / "data"),
            out_dir=str(self.run_dir(run) / "adapter"),
            profile=plan["profile"],  # as fitted to memory at the start: the checkpoint's shape
            seed=self.home.config.training.seed,
            init_adapter=plan["init_adapter"],
        )

    async def _train(self, run: Run, base: Path) -> TrainResult:
        """Supervise the worker subprocess until it returns an adapter."""
        t = self.home.config.training
        run_dir = self.run_dir(run)
        plan = resume.read_plan(run_dir)
        if plan is None:
            raise TrainingFailed(f"{run_dir / resume.PLAN} is missing or unreadable")
        # A run fitted to memory once keeps that shape, so its checkpoint matches on resume.
        budget = -1.0 if plan.get("fitted") else t.memory_budget_mb

        def on_preflight(msg: dict[str, Any]) -> None:
            plan.update(profile=msg.get("profile", plan["profile"]), fitted=True)
            resume.write_plan(run_dir, plan)
            for note in msg.get("fitted", []):
                self._note(run, note)

        self.process = TrainingProcess(
            self.backend,
            self._spec(run, base, plan),
            run_dir,
            nice=t.nice,
            timeout_s=t.timeout_minutes * 60,
            memory_budget_mb=budget,
            remote=t,
            base_ref=self.ref,
        )
        try:
            result = await self.process.run(self._on_progress, on_preflight)
        finally:
            for note in self.process.notes:  # e.g. a remote run that trained locally
                self._note(run, note)
        if result.notes:
            self._note(run, "trainer: " + "; ".join(result.notes))
        return result

    async def _release(
        self, run: Run, base: Path, counts: dict[str, int], result: TrainResult
    ) -> dict[str, Any]:
        """Hand the adapter to the gate; returns the run's final metrics."""
        home = self.home
        metrics: dict[str, Any] = dict(result.metrics)
        metrics["dataset"] = counts
        done = next((v for v in home.store.versions() if v.run_id == run.run_id), None)
        if done is not None:  # killed after registering, before completing: don't register twice
            metrics["release"] = {"version": done.version, "action": "already released"}
            return metrics
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
            pool_version=home.store.get_run(run.run_id).pool_version,
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
        await asyncio.to_thread(prune_runs, home, home.config.training.keep_runs, {run.run_id})
        metrics["release"] = released
        return metrics

    def _finish(self, run: Run, status: str, reason: str = "", **fields: Any) -> None:
        self.home.store.update_run(
            run.run_id, status=status, reason=reason, finished_at=now_iso(), **fields
        )
        if status != "completed":
            log.warning("training run %s %s: %s", run.run_id, status, reason)

    def _interrupted(self, run: Run, why: str) -> None:
        step = resume.checkpoint_step(self.run_dir(run))
        reason = f"{why}; checkpoint at step {step}, the next run continues it"
        self._finish(run, "interrupted", reason=reason)

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

    async def cancel(self, shutdown: bool = False) -> None:
        """Stop the worker (it checkpoints); `shutdown`: the daemon stops, the run resumes later."""
        self.stopping = shutdown
        if self.process is not None:
            await self.process.cancel()
