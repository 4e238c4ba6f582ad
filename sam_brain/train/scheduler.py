"""Deciding when to collect and when to train, through apscheduler.

`Coordinator` owns the single training slot: at most one run at a time, automatic runs only when
enough new samples wait, inside the nightly window (if set) and under the daily cap; a failed run
is retried with exponential backoff up to `max_retries` times. A run the daemon's last stop
interrupted continues at the first check (inside the window unless it was asked for by hand); one
a user cancelled waits for `--force` (or a threshold's worth of samples after the cancel); a
forced run asked for while one trains joins it. Periodic collection of polled
sources (git, docs, distillation inbox, and a sessions rescan that catches missed file events)
runs on the same scheduler, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from sam_brain.errors import Conflict, TrainingCancelled, TrainingFailed
from sam_brain.home import Home
from sam_brain.schedule_window import in_window
from sam_brain.store import Run
from sam_brain.train.dataset import new_samples_since_last_run
from sam_brain.train.job import TrainingJob
from sam_brain.train.release import Exclusive
from sam_brain.train.resume import resumable_run

MANUAL = ("forced", "api")  # triggers of runs a user asked for: they resume outside the window

log = logging.getLogger(__name__)


class Coordinator:
    """The daemon's scheduling brain; all methods run on the event loop."""

    def __init__(
        self,
        home: Home,
        backend: str,
        collect: Callable[[], Awaitable[None]] | None = None,
        monitor: Callable[[], Awaitable[None]] | None = None,
        exclusive: Exclusive[Any] | None = None,
    ) -> None:
        self.home = home
        self.backend = backend
        self.collect = collect
        self.monitor = monitor  # serving health + canary steps (deployment/)
        self.exclusive = exclusive  # shares the chat server's resident base with the gate
        self.scheduler = AsyncIOScheduler()
        self.job: TrainingJob | None = None
        self.task: asyncio.Task[Any] | None = None
        self.retry_at: datetime | None = None
        self._attempt = 1
        self._checking = False
        self._starting = asyncio.Lock()  # one start at a time: a second caller joins or conflicts

    def start(self) -> None:
        t = self.home.config.training
        self.scheduler.add_job(
            _ends_quietly(self.check),
            "interval",
            seconds=t.check_interval_seconds,
            id="threshold",
            next_run_time=datetime.now() + timedelta(seconds=1),
            max_instances=1,
            coalesce=True,
        )
        if self.monitor is not None:
            self.scheduler.add_job(
                _ends_quietly(self.monitor),
                "interval",
                seconds=self.home.config.deployment.monitor_interval_seconds,
                id="monitor",
                max_instances=1,
                coalesce=True,
            )
        if self.collect is not None:
            self.scheduler.add_job(
                _ends_quietly(self.collect),
                "interval",
                seconds=t.check_interval_seconds,
                id="collect",
                max_instances=1,
                coalesce=True,
            )
        self.scheduler.start()

    async def stop(self) -> None:
        # Jobs still running are cancelled by the shutdown; `_ends_quietly` keeps that out of the log.
        if self.scheduler.running:  # not yet when the daemon stops during its first poll
            self.scheduler.shutdown(wait=False)
        if self.task is not None and not self.task.done():
            if self.job is not None:
                await self.job.cancel(shutdown=True)  # interrupted, not cancelled: it resumes
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    @property
    def training(self) -> bool:
        return self.task is not None and not self.task.done()

    def runs_today(self) -> int:
        midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        return sum(self.home.store.run_counts(since=midnight.astimezone().isoformat()).values())

    def interrupted(self) -> Run | None:
        """The run the daemon's last stop interrupted, waiting to continue."""
        run = resumable_run(self.home)
        return run if run is not None and run.status == "interrupted" else None

    def held_by_cancel(self) -> str | None:
        """Why automatic runs wait after a user's cancel (until enough samples arrive after it)."""
        run = resumable_run(self.home)
        if run is None or run.status != "cancelled" or not run.finished_at:
            return None
        need = self.home.config.training.min_for_training
        since = datetime.fromisoformat(run.finished_at).timestamp()
        new = self.home.pool.trainable_count(since=since)
        if new >= need:
            return None
        return (
            f"run {run.run_id} was cancelled ({new} new samples since, {need} needed;"
            " `samctl train --force` continues it)"
        )

    def why_not(self, now: datetime | None = None) -> str | None:
        """The reason an automatic run would not start now, or None when it would."""
        t = self.home.config.training
        now = now or datetime.now()
        if self.training:
            return "a run is in progress"
        if self.retry_at is not None and now < self.retry_at:
            return f"retry scheduled at {self.retry_at.isoformat(timespec='seconds')}"
        waiting = self.interrupted()  # already counted and past the threshold when it started
        held = None if waiting or self.retry_at else self.held_by_cancel()
        if held is not None:
            return held
        new = new_samples_since_last_run(self.home)
        if waiting is None and self.retry_at is None and new < t.min_for_training:
            return f"{new} new samples, {t.min_for_training} needed"
        manual = waiting is not None and waiting.trigger in MANUAL
        if not manual and not in_window(t.nightly_window, now):
            return f"outside the training window {t.nightly_window}"
        if waiting is None and self.runs_today() >= t.max_runs_per_day:
            return f"daily cap of {t.max_runs_per_day} runs reached"
        return None

    async def check(self) -> None:
        """The periodic threshold check."""
        if self._checking:
            return
        self._checking = True
        try:
            reason = await asyncio.to_thread(self.why_not)
            if reason is None:
                trigger = "retry" if self.retry_at is not None else "threshold"
                await self.start_run(trigger)
        except Conflict:
            pass  # a forced run took the slot while this check was deciding
        except Exception:
            log.exception("threshold check failed")
        finally:
            self._checking = False

    async def start_run(self, trigger: str, force: bool = False) -> tuple[str, bool]:
        """Start a run now (or continue the interrupted/cancelled one); returns (id, joined).

        `force` skips the sample threshold but not the one-at-a-time rule: while a run is
        starting or training, a forced request joins it (joined=True) and others conflict.
        """
        async with self._starting:
            if self.training:
                assert self.job is not None and self.job.run is not None
                if force:
                    return self.job.run.run_id, True
                raise Conflict(f"run {self.job.run.run_id} is already training")
            if force and self.runs_today() >= self.home.config.training.max_runs_per_day:
                log.info("forced run goes past the daily cap")
            attempt = self._attempt if trigger == "retry" else 1
            self.retry_at = None
            job = TrainingJob(
                self.home, self.backend, trigger, attempt=attempt, exclusive=self.exclusive
            )
            # Recorded now, so the caller gets its id without waiting for the run.
            run = await asyncio.to_thread(job.open_run)
            self.job = job
            self.task = asyncio.get_running_loop().create_task(self._run(job))
            return run.run_id, False

    async def _run(self, job: TrainingJob) -> None:
        try:
            await job.execute()
            self._attempt = 1
        except TrainingFailed as err:
            retries = self.home.config.training.max_retries
            if isinstance(err, TrainingCancelled) or job.attempt > retries:
                self._attempt = 1
                if job.run is not None and not isinstance(err, TrainingCancelled):
                    self._give_up(job.run.run_id, job.attempt)
                return
            delay = self.home.config.training.retry_backoff_seconds * 2 ** (job.attempt - 1)
            self._attempt = job.attempt + 1
            self.retry_at = datetime.now() + timedelta(seconds=delay)
            log.info("run failed (%s); retry %d/%d in %.0fs", err, job.attempt, retries, delay)

    def _give_up(self, run_id: str, attempts: int) -> None:
        """An interrupted run out of retries is failed, so no check resumes it again."""
        run = self.home.store.get_run(run_id)
        if run.status == "interrupted":
            self.home.store.update_run(
                run_id, status="failed", reason=f"{run.reason}; gave up after {attempts} attempts"
            )

    async def cancel(self) -> bool:
        if not self.training or self.job is None:
            return False
        await self.job.cancel()
        return True


def _ends_quietly(job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A periodic job that returns, instead of raising, when shutdown cancels it mid-run.

    apscheduler logs a cancelled job as a failure with a traceback; at shutdown it is not one.
    """

    async def run() -> None:
        try:
            await job()
        except asyncio.CancelledError:
            log.debug("job %s cancelled by shutdown", getattr(job, "__name__", job))

    return run
