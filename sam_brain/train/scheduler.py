"""Deciding when to collect and when to train, through apscheduler.

`Coordinator` owns the machine's single training slot: at most one run at a time (trainings that
are due meanwhile wait in `train/queue.py`), automatic runs only when enough new samples wait, inside the nightly window (if set) and under the daily cap; a failed run
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

from sam_brain.config import DEFAULT_TRAINING
from sam_brain.errors import Conflict, TrainingCancelled, TrainingFailed
from sam_brain.home import Home
from sam_brain.pipeline.training_select import trainable_count
from sam_brain.schedule_window import in_window
from sam_brain.store import Run
from sam_brain.train.dataset import base_model_ref, new_samples_since_last_run
from sam_brain.train.job import TrainingJob
from sam_brain.train.queue import Lineage, RunQueue
from sam_brain.train.release import Exclusive
from sam_brain.train.resume import resumable_run

MANUAL = ("forced", "api")  # triggers of runs a user asked for: they resume outside the window

log = logging.getLogger(__name__)


class Coordinator:
    """The daemon's scheduling brain; all methods run on the event loop.

    Every training (the default and each `[trainings.NAME]`) is checked on its own threshold;
    the machine trains one at a time: a training that wants the slot while another trains waits
    in `queue` and starts when the slot frees. Methods take the training's name, default "sam".
    """

    def __init__(
        self,
        home: Home,
        backend: str,
        collect: Callable[[], Awaitable[None]] | None = None,
        monitor: Callable[[], Awaitable[None]] | None = None,
        exclusive: Exclusive[Any] | None = None,
    ) -> None:
        self.home = home
        self.homes = {h.training: h for h in home.trainings()}
        self.backend = backend
        self.collect = collect
        self.monitor = monitor  # serving health + canary steps (deployment/)
        self.exclusive = exclusive  # shares the chat server's resident base with the gate
        self.scheduler = AsyncIOScheduler()
        self.job: TrainingJob | None = None
        self.task: asyncio.Task[Any] | None = None
        self.lineages = {name: Lineage() for name in self.homes}
        self.queue = RunQueue()
        self._checking = False
        self._next: asyncio.Task[None] | None = None  # starting the next queued training
        self._starting = asyncio.Lock()  # one start at a time: a second caller joins or conflicts

    @property
    def retry_at(self) -> datetime | None:
        """The default training's pending retry."""
        return self.lineages[DEFAULT_TRAINING].retry_at

    def _home(self, training: str) -> Home:
        try:
            return self.homes[training]
        except KeyError:
            return self.home.for_training(training)  # raises NotFound naming the trainings

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
        self.queue.clear()
        if self.task is not None and not self.task.done():
            if self.job is not None:
                await self.job.cancel(shutdown=True)  # interrupted, not cancelled: it resumes
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    @property
    def training(self) -> bool:
        """The slot is taken: some training's run is starting or training."""
        return self.task is not None and not self.task.done()

    @property
    def running(self) -> str | None:
        """The name of the training whose run holds the slot."""
        return self.job.home.training if self.training and self.job is not None else None

    def runs_today(self, training: str = DEFAULT_TRAINING) -> int:
        midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        since = midnight.astimezone().isoformat()
        return sum(self._home(training).store.run_counts(since=since).values())

    def interrupted(self, training: str = DEFAULT_TRAINING) -> Run | None:
        """The run the daemon's last stop interrupted, waiting to continue."""
        run = resumable_run(self._home(training))
        return run if run is not None and run.status == "interrupted" else None

    def held_by_cancel(self, training: str = DEFAULT_TRAINING) -> str | None:
        """Why automatic runs wait after a user's cancel (until enough samples arrive after it)."""
        home = self._home(training)
        run = resumable_run(home)
        if run is None or run.status != "cancelled" or not run.finished_at:
            return None
        need = home.config.training.min_for_training
        since = datetime.fromisoformat(run.finished_at).timestamp()
        new = trainable_count(home.pool, home.config, home.training, since=since)
        if new >= need:
            return None
        return (
            f"run {run.run_id} was cancelled ({new} new samples since, {need} needed;"
            " `samctl train --force` continues it)"
        )

    def why_not(self, now: datetime | None = None, training: str = DEFAULT_TRAINING) -> str | None:
        """The reason an automatic run of `training` would not start now, or None when it would."""
        running = self.running
        if running == training:
            return "a run is in progress"
        if running is not None:
            where = self.queue.position(training)
            queued = f"; queued at position {where}" if where else ""
            return f"training {running!r} is running (one run at a time){queued}"
        return self.own_reason(training, now or datetime.now())

    def own_reason(self, training: str, now: datetime | None = None) -> str | None:
        """`why_not` regardless of the slot: the training's own threshold, window and cap."""
        now = now or datetime.now()
        home = self._home(training)
        t = home.config.training
        retry_at = self.lineages[training].retry_at if training in self.lineages else None
        if retry_at is not None and now < retry_at:
            return f"retry scheduled at {retry_at.isoformat(timespec='seconds')}"
        waiting = self.interrupted(training)  # already counted and past the threshold
        held = None if waiting or retry_at else self.held_by_cancel(training)
        if held is not None:
            return held
        new = new_samples_since_last_run(home)
        if waiting is None and retry_at is None and new < t.min_for_training:
            return f"{new} new samples, {t.min_for_training} needed"
        manual = waiting is not None and waiting.trigger in MANUAL
        if not manual and not in_window(t.nightly_window, now):
            return f"outside the training window {t.nightly_window}"
        if waiting is None and self.runs_today(training) >= t.max_runs_per_day:
            return f"daily cap of {t.max_runs_per_day} runs reached"
        return None

    async def check(self) -> None:
        """The periodic threshold check of every training; due ones queue for the slot."""
        if self._checking:
            return
        self._checking = True
        try:
            for name in self.homes:
                if name == self.running or self.queue.position(name) is not None:
                    continue
                reason = await asyncio.to_thread(self.own_reason, name, datetime.now())
                if reason is None:
                    retry = self.lineages[name].retry_at is not None
                    self.queue.add(name, "retry" if retry else "threshold")
            await self._start_next()
        except Exception:
            log.exception("threshold check failed")
        finally:
            self._checking = False

    async def _start_next(self) -> None:
        """Start the first queued training that still wants a run, when the slot is free."""
        # The entry leaves the queue only once its run holds the slot, so the queue and the
        # slot never both look empty while a training is on its way in.
        while not self.training and len(self.queue):
            waiting = self.queue.peek()
            assert waiting is not None
            manual = waiting.trigger in MANUAL
            if not manual:
                reason = await asyncio.to_thread(self.own_reason, waiting.training, datetime.now())
                if reason is not None:  # no longer due (cancelled meanwhile, window closed)
                    self.queue.remove(waiting.training)
                    continue
            try:
                await self.start_run(waiting.trigger, force=manual, training=waiting.training)
            except Conflict:
                pass  # a user's run took the slot while this one was starting
            except Exception:
                self.queue.remove(waiting.training)
                log.exception("queued run of %s could not start", waiting.training)

    async def start_run(
        self, trigger: str, force: bool = False, training: str = DEFAULT_TRAINING
    ) -> tuple[str, bool]:
        """Start a run of `training` now (or continue its interrupted/cancelled one); returns
        (id, joined). While another training holds the slot the request queues: id "".

        `force` skips the sample threshold but not the one-at-a-time rule: while a run of the
        same training is starting or training, a forced request joins it (joined=True) and
        others conflict.
        """
        home = self._home(training)
        async with self._starting:
            if self.training:
                assert self.job is not None and self.job.run is not None
                if self.running != training:
                    self.queue.add(training, trigger)
                    return "", False
                if force:
                    return self.job.run.run_id, True
                raise Conflict(f"run {self.job.run.run_id} is already training")
            if force and self.runs_today(training) >= home.config.training.max_runs_per_day:
                log.info("forced run goes past the daily cap")
            lineage = self.lineages.setdefault(training, Lineage())
            attempt = lineage.attempt if trigger == "retry" else 1
            lineage.retry_at = None
            # The chat server's resident base judges only candidates trained on that base.
            shared = base_model_ref(home, self.backend) == base_model_ref(self.home, self.backend)
            exclusive = self.exclusive if shared else None
            job = TrainingJob(home, self.backend, trigger, attempt=attempt, exclusive=exclusive)
            # Recorded now, so the caller gets its id without waiting for the run.
            run = await asyncio.to_thread(job.open_run)
            self.job = job
            self.task = asyncio.get_running_loop().create_task(self._run(job))
            self.queue.remove(training)  # it holds the slot now
            return run.run_id, False

    async def _run(self, job: TrainingJob) -> None:
        try:
            await self._attempt_run(job)
        finally:
            if len(self.queue):  # stop() empties the queue first, so a shutdown starts nothing
                # The next queued training starts once this task has ended (the slot is free).
                asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._next = asyncio.get_running_loop().create_task(self._start_queued())

    async def _start_queued(self) -> None:
        try:
            await self._start_next()
        except Exception:
            log.exception("starting the next queued training failed")

    async def _attempt_run(self, job: TrainingJob) -> None:
        lineage = self.lineages.setdefault(job.home.training, Lineage())
        t = job.home.config.training
        try:
            await job.execute()
            lineage.attempt = 1
        except TrainingFailed as err:
            retries = t.max_retries
            if isinstance(err, TrainingCancelled) or job.attempt > retries:
                lineage.attempt = 1
                if job.run is not None and not isinstance(err, TrainingCancelled):
                    self._give_up(job.home, job.run.run_id, job.attempt)
                return
            delay = t.retry_backoff_seconds * 2 ** (job.attempt - 1)
            lineage.attempt = job.attempt + 1
            lineage.retry_at = datetime.now() + timedelta(seconds=delay)
            log.info("run failed (%s); retry %d/%d in %.0fs", err, job.attempt, retries, delay)

    @staticmethod
    def _give_up(home: Home, run_id: str, attempts: int) -> None:
        """An interrupted run out of retries is failed, so no check resumes it again."""
        run = home.store.get_run(run_id)
        if run.status == "interrupted":
            home.store.update_run(
                run_id, status="failed", reason=f"{run.reason}; gave up after {attempts} attempts"
            )

    async def cancel(self, training: str | None = None) -> bool:
        """Stop the running run (of `training`, when given) or take `training` off the queue."""
        if training is not None and self.queue.remove(training):
            return True
        if not self.training or self.job is None:
            return False
        if training is not None and self.running != training:
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
