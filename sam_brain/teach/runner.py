"""Run one teach job: the budgeted teacher, the progress file, concurrency or batches, status.

`run_job(home, spec)` builds the teacher from `[teacher]`, wraps it in the ledger and the daily
budget, and calls the job's `run(ctx)`. A budget stop, a cancel or a failure leaves the progress
file behind: the same spec run again (`samctl teach ...` repeated) resumes where it stopped,
replaying paid answers instead of asking again. Keys must be usable as batch custom ids.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from sam_brain import registry
from sam_brain.errors import BudgetExhausted, SamBrainError, TeacherError
from sam_brain.home import Home
from sam_brain.pipeline.ingest import store_result
from sam_brain.protocols import CollectResult, Sample, Teacher, TeacherReply, TeacherRequest
from sam_brain.teach.jobs import Handler, JobCancelled, JobSpec, load_job
from sam_brain.teach.progress import JobStatus, ProgressLog, jobs_dir
from sam_brain.teacher_ledger import (
    Budget,
    Budgeted,
    Clock,
    Ledger,
    Spend,
    cost_usd,
    utc_now,
    worst_case_usd,
)

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what Message Batches accept as a custom id
FLUSH_EVERY = 64  # samples buffered before one store_result (each opens the dedup index)
MAX_FAILURES_IN_A_ROW = 3  # a dead server stops the job instead of failing every request


def make_teacher(home: Home) -> Teacher:
    """The configured teacher (`teacher.provider` through the name table)."""
    cfg = home.config.teacher
    teacher: Teacher = registry.load(registry.TEACHERS, cfg.provider, "teacher")(cfg)
    return teacher


class Context:
    """The `JobContext` a job runs in (see `sam_brain.teach.jobs`)."""

    def __init__(
        self,
        home: Home,
        spec: JobSpec,
        teacher: Budgeted,
        progress: ProgressLog,
        status: JobStatus,
        cancel: threading.Event,
        exclusive: Any = None,
        on_change: Callable[[JobStatus], None] | None = None,
    ) -> None:
        self.home = home
        self.config = home.config.teacher
        self.spec = spec
        self.job_id = status.job_id
        self.teacher = teacher
        self.batcher: Any = teacher.inner  # the Message Batches methods, when the teacher has them
        self.progress = progress
        self.status = status
        self.cancel = cancel
        self.exclusive = exclusive
        self.on_change = on_change
        self._samples: list[Sample] = []
        self._keys: list[str] = []
        self._counts: Counter[str] = Counter()
        self._saved_at = 0.0

    # -- what jobs call ----------------------------------------------------------------------

    def set_total(self, total: int) -> None:
        self.status.total = total
        self._changed(force=True)

    def count(self, reason: str, n: int = 1) -> None:
        self._counts[reason] += n
        self.status.counts[reason] = self.status.counts.get(reason, 0) + n
        self._changed()

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled(f"teach job {self.job_id} cancelled; run it again to resume")

    def log(self, message: str) -> None:
        log.info("teach %s: %s", self.job_id, message)
        self.status.message = message
        self._changed(force=True)

    def ask_all(self, requests: Sequence[TeacherRequest], handle: Handler) -> None:
        for r in requests:
            if not KEY_RE.match(r.key):
                raise ValueError(f"teach request key {r.key!r} must match {KEY_RE.pattern}")
        todo = [r for r in requests if r.key not in self.progress.done]
        self.status.done += len(requests) - len(todo)
        try:
            for r in todo:  # answered before a crash or a stop: replay, do not pay again
                if r.key in self.progress.replies:
                    self._handled(r, self.progress.replies[r.key], handle)
            ask = [r for r in todo if r.key not in self.progress.replies]
            batching = hasattr(self.batcher, "submit_batch") and (
                len(requests) >= self.config.batch_min_requests or self.progress.batches
            )
            if batching:
                self._batched(ask, handle)
            else:
                self._concurrent(ask, handle)
        finally:
            self._flush()

    # -- internals ---------------------------------------------------------------------------

    def _changed(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < 1.0:
            return
        self._saved_at = now
        self.status.save(self.progress.path.parent)
        if self.on_change is not None:
            self.on_change(self.status)

    def _ask_one(self, request: TeacherRequest) -> TeacherReply:
        reply = self.teacher.ask(request)
        self.progress.add_reply(request.key, reply)  # paid: on disk before anything else
        return reply

    def _concurrent(self, requests: Sequence[TeacherRequest], handle: Handler) -> None:
        queue = list(reversed(requests))
        failures = 0
        stop: SamBrainError | None = None
        with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
            running: dict[Future[TeacherReply], TeacherRequest] = {}
            while queue or running:
                while queue and stop is None and len(running) < max(1, self.config.concurrency):
                    if self.cancel.is_set():
                        stop = JobCancelled(f"teach job {self.job_id} cancelled; run it again")
                        break
                    r = queue.pop()
                    running[pool.submit(self._ask_one, r)] = r
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    r = running.pop(fut)
                    try:
                        reply = fut.result()
                    except (BudgetExhausted, JobCancelled) as err:
                        stop = stop or err
                        continue
                    except TeacherError as err:
                        self.count("teacher_error")
                        failures += 1
                        log.warning("teach %s: %s: %s", self.job_id, r.key, err)
                        if failures >= MAX_FAILURES_IN_A_ROW:
                            stop = stop or err
                        continue
                    failures = 0
                    self.status.usd += cost_usd(self.config, reply)
                    self._handled(r, reply, handle)
        if stop is not None:
            raise stop

    def _batched(self, requests: Sequence[TeacherRequest], handle: Handler) -> None:
        by_key = {r.key: r for r in requests}
        for batch_id, keys in list(self.progress.batches.items()):  # submitted before a stop
            self._collect(batch_id, [by_key[k] for k in keys if k in by_key], handle)
        pending = [r for r in requests if r.key not in self.progress.replies]
        budget = self.teacher.budget
        while pending:
            self.check_cancelled()
            # Submit only what the day's budget can pay for in the worst case.
            left = budget.config.max_usd_per_day - budget.ledger.spent(
                budget.clock().date().isoformat()
            )
            chunk: list[TeacherRequest] = []
            claim = 0.0
            for r in pending:
                cost = worst_case_usd(self.config, r, batch=True)
                if claim + cost > left:
                    break
                chunk.append(r)
                claim += cost
            if not chunk:
                budget.reserve(float("inf"))  # raises BudgetExhausted with the day's numbers
            pending = pending[len(chunk) :]
            batch_id = self.batcher.submit_batch(chunk)
            self.progress.append({"t": "batch", "id": batch_id, "keys": [r.key for r in chunk]})
            self.log(f"batch {batch_id}: {len(chunk)} requests submitted")
            self._collect(batch_id, chunk, handle)

    def _collect(self, batch_id: str, requests: list[TeacherRequest], handle: Handler) -> None:
        inner = self.batcher
        while inner.batch_status(batch_id) != "ended":
            self.check_cancelled()  # the batch id stays in the progress file: a rerun polls it
            time.sleep(self.config.batch_poll_seconds)
        by_key = {r.key: r for r in requests}
        for key, reply, why in inner.batch_results(batch_id):
            r = by_key.get(key)
            if r is None or key in self.progress.replies:
                continue  # read (and paid) before a crash
            if reply is None:
                self.count(f"batch_{why}")
                continue
            self.teacher.record(reply, batch=True)
            self.progress.add_reply(key, reply)
            self.status.usd += cost_usd(self.config, reply, batch=True)
            self._handled(r, reply, handle)
        self.progress.append({"t": "batch_done", "id": batch_id})

    def _handled(self, request: TeacherRequest, reply: TeacherReply, handle: Handler) -> None:
        outcome = handle(request, reply)
        self._samples.extend(outcome.samples)
        self._keys.append(request.key)
        self._counts.update(outcome.counts)
        for reason, n in outcome.counts.items():
            self.status.counts[reason] = self.status.counts.get(reason, 0) + n
        self.status.done += 1
        if len(self._samples) >= FLUSH_EVERY:
            self._flush()
        self._changed()

    def _flush(self) -> None:
        """Store the buffered samples, then mark their keys done with their counts."""
        if not self._keys and not self._counts:
            return
        if self._samples:
            report = store_result(self.home, "teacher", CollectResult(samples=self._samples))
            self._counts["stored"] += report.stored
            self.status.stored += report.stored
            for reason, n in report.dropped.items():
                self._counts[reason] += n
                self.status.counts[reason] = self.status.counts.get(reason, 0) + n
        self.progress.append({"t": "done", "keys": self._keys, "counts": dict(self._counts)})
        self._samples, self._keys, self._counts = [], [], Counter()
        self._changed(force=True)


def run_job(
    home: Home,
    spec: JobSpec,
    *,
    cancel: threading.Event | None = None,
    teacher: Teacher | None = None,
    exclusive: Any = None,
    clock: Clock = utc_now,
    on_change: Callable[[JobStatus], None] | None = None,
) -> JobStatus:
    """Run (or resume) `spec` to its end, a budget stop, a cancel or a failure; never raises
    for those: the returned status says which (`state`, `error`)."""
    job_id = spec.job_id
    folder = jobs_dir(home.data) / job_id
    progress = ProgressLog(folder / "progress.jsonl")
    status = JobStatus(job_id=job_id, kind=spec.kind, spec=spec.to_dict())
    status.counts = {k: v for k, v in progress.counts.items() if k != "stored"}
    status.stored = progress.counts.get("stored", 0)
    ledger = Ledger(home.data / "state.db")
    status.usd = (
        ledger.totals("job", "WHERE job=?", (job_id,)).get(job_id, Spend(0, 0, 0, 0, 0, 0.0)).usd
    )
    try:
        job = load_job(spec.kind)
        budgeted = Budgeted(
            teacher or make_teacher(home), Budget(ledger, home.config.teacher, clock), job_id
        )
        ctx = Context(
            home,
            spec,
            budgeted,
            progress,
            status,
            cancel or threading.Event(),
            exclusive,
            on_change,
        )
        status.save(folder)
        job.run(ctx)
        status.state = "done"
    except BudgetExhausted as err:
        status.state, status.error = "budget", str(err)
    except JobCancelled as err:
        status.state, status.error = "cancelled", str(err)
    except SamBrainError as err:
        status.state, status.error = "failed", str(err)
    except Exception as err:  # a job bug must not take the daemon down; its trace goes to the log
        log.exception("teach job %s crashed", job_id)
        status.state, status.error = "failed", f"{type(err).__name__}: {err}"
    finally:
        ledger.close()
    status.finished = time.time()
    status.save(folder)
    event = {k: getattr(status, k) for k in ("job_id", "state", "done", "total", "stored", "usd")}
    home.store.add_event("teach", {**event, "error": status.error})
    if on_change is not None:
        on_change(status)
    log.info(
        "teach %s: %s (%d/%d, %d stored)",
        job_id,
        status.state,
        status.done,
        status.total,
        status.stored,
    )
    return status
