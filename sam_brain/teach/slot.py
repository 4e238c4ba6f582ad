"""The daemon's teach slot: one teach job at a time, in a background thread.

`POST /api/teach` starts a job here; `GET /api/teach` reads `status()`; a second start while one
runs is a 409. The daemon's shutdown cancels the running job: its progress file stays, so the
same job started again resumes.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

from sam_brain.errors import Conflict
from sam_brain.home import Home
from sam_brain.teach.jobs import JobSpec, load_job
from sam_brain.teach.progress import JobStatus, recent_jobs
from sam_brain.teach.runner import run_job
from sam_brain.teacher_ledger import Ledger, stats

log = logging.getLogger(__name__)


class TeachSlot:
    def __init__(self, home: Home, exclusive: Any = None) -> None:
        self.home = home
        self.exclusive = exclusive
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._status: JobStatus | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, spec: JobSpec) -> JobStatus:
        """Start `spec` in the background (or resume it: the same spec is the same job).

        Raises:
            Conflict: A teach job is already running.
            BadRequest: The job kind is unknown or not in this build.
        """
        load_job(spec.kind)  # an unknown or missing job is a 400 now, not a failed thread later
        with self._lock:
            if self.running and self._status is not None:
                raise Conflict(
                    f"teach job {self._status.job_id} is running; cancel it or wait"
                    " (`samctl teach status`)"
                )
            self._cancel = threading.Event()
            self._status = JobStatus(job_id=spec.job_id, kind=spec.kind, spec=spec.to_dict())
            self._thread = threading.Thread(
                target=self._run, args=(spec, self._cancel), name="teach", daemon=True
            )
            self._thread.start()
            return self._status

    def _run(self, spec: JobSpec, cancel: threading.Event) -> None:
        try:
            run_job(
                self.home, spec, cancel=cancel, exclusive=self.exclusive, on_change=self._update
            )
        except Exception:  # run_job reports job failures itself; this is a bug in the slot
            log.exception("teach slot crashed")

    def _update(self, status: JobStatus) -> None:
        # A snapshot taken in the job's thread: API threads never read a dict being updated.
        self._status = JobStatus(**copy.deepcopy(status.to_dict()))

    def cancel(self) -> bool:
        """Ask the running job to stop at its next request; False when none runs."""
        if not self.running:
            return False
        self._cancel.set()
        return True

    def close(self, timeout: float = 3.0) -> None:
        """Cancel and wait a little (the daemon is stopping; answers in flight are kept)."""
        self.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        current = self._status.to_dict() if self._status is not None else None
        return {
            "teaching": self.running,
            "current": current,
            "recent": recent_jobs(self.home.data),
        }

    def stats(self) -> dict[str, Any]:
        ledger = Ledger(self.home.data / "state.db")
        try:
            return stats(ledger, self.home.config.teacher)
        finally:
            ledger.close()
