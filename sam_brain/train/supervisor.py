"""Supervising the training subprocess from the daemon's event loop.

The worker runs at lowered priority with the fast BLAS preloaded (MLX on Linux CPU), its stdout
carries `@@{json}` reports, and its stderr goes to the run's log file. A crash, a timeout or an
error report becomes a `TrainingFailed`; a cancel sends SIGTERM so the trainer saves first.
A worker holds `worker.lock` in its run folder: one left running by a daemon that died is
stopped before the run's next worker starts, so two never write the same checkpoint.
With `training.remote` set the same spec trains as a Ray job instead (`train/remote.py`,
imported only then); an unreachable cluster falls back to a local run when
`training.remote_fallback` is `local`, noted in `notes` for the run record.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sam_brain.config import TrainingConfig
from sam_brain.errors import TrainingCancelled, TrainingFailed, WorkerKilled
from sam_brain.protocols import Progress, TrainResult, TrainSpec

if TYPE_CHECKING:
    from sam_brain.train.remote import RemoteRun

log = logging.getLogger(__name__)

OPENBLAS_PATHS = (  # Debian's libopenblas0-pthread
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)


def worker_env(backend: str) -> dict[str, str]:
    """Environment for the worker: OpenBLAS preloaded for MLX on Linux, tokenizers quiet."""
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if backend == "mlx" and sys.platform.startswith("linux") and "LD_PRELOAD" not in env:
        for path in OPENBLAS_PATHS:
            if Path(path).exists():
                env["LD_PRELOAD"] = path
                break
    return env


WORKER_LOCK = "worker.lock"


def lock_worker(run_dir: Path) -> IO[str]:
    """Called by the worker: hold the run's lock (with its pid) for the process's lifetime."""
    fh = open(run_dir / WORKER_LOCK, "a+")  # noqa: SIM115 - held until the process exits
    fcntl.flock(fh, fcntl.LOCK_EX)
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def stop_orphan(run_dir: Path, grace_s: float = 30.0) -> int | None:
    """Stop a worker still holding the run's lock (SIGTERM: it saves; then SIGKILL).

    Returns the pid it stopped, or None when no worker held the lock.
    """
    path = run_dir / WORKER_LOCK
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # nobody holds it; closing the file releases it again
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
        pid = int(text) if text.isdigit() else 0
        if pid <= 0:
            return None
        log.warning("stopping worker %d left running in %s", pid, run_dir)
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return pid
                except BlockingIOError:
                    time.sleep(0.1)
        return pid


class TrainingProcess:
    """One supervised run of `python -m sam_brain.train.worker`."""

    def __init__(
        self,
        backend: str,
        spec: TrainSpec,
        run_dir: Path,
        nice: int = 10,
        timeout_s: float = 4 * 3600.0,
        memory_budget_mb: float = -1.0,
        remote: TrainingConfig | None = None,
        base_ref: str = "",
    ) -> None:
        self.remote = remote if remote is not None and remote.remote else None
        self.base_ref = base_ref  # the base as configured: a remote job resolves a hub id itself
        self.remote_run: RemoteRun | None = None
        self.notes: list[str] = []  # for the run record (a remote run that trained locally)
        self.backend = backend
        self.spec = spec
        self.run_dir = run_dir
        self.nice = nice
        self.timeout_s = timeout_s
        self.memory_budget_mb = memory_budget_mb  # <0: no memory fit; 0: free memory (worker)
        self.proc: asyncio.subprocess.Process | None = None
        self.cancel_requested = False

    async def run(
        self,
        on_progress: Callable[[Progress], None],
        on_preflight: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainResult:
        """Train in a local subprocess, or as a Ray job with `training.remote` set."""
        if self.remote is None:
            return await self._run_local(on_progress, on_preflight)
        from sam_brain.train.remote import RemoteRun, RemoteUnreachable

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "spec.json").write_text(self.spec.to_json(), encoding="utf-8")
        self.remote_run = RemoteRun(
            self.remote, self.backend, self.spec, self.run_dir, self.base_ref,
            self.memory_budget_mb,
        )  # fmt: skip
        try:
            return await self.remote_run.run(on_progress, on_preflight)
        except RemoteUnreachable as err:
            if self.remote.remote_fallback != "local":
                raise
            self.notes.append(f"remote: {err}; trained locally (training.remote_fallback)")
            log.warning("%s; training locally (training.remote_fallback)", err)
            self.remote_run = None
            return await self._run_local(on_progress, on_preflight)

    async def _run_local(
        self,
        on_progress: Callable[[Progress], None],
        on_preflight: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(stop_orphan, self.run_dir)
        spec_path = self.run_dir / "spec.json"
        spec_path.write_text(self.spec.to_json(), encoding="utf-8")
        log_path = self.run_dir / "train.log"
        env = worker_env(self.backend)
        # The worker lowers its own priority: a preexec_fn would force fork(), which LanceDB's
        # runtime threads in this process do not survive reliably.
        env["SAM_BRAIN_NICE"] = str(self.nice)
        if self.memory_budget_mb >= 0:
            env["SAM_BRAIN_MEMORY_BUDGET_MB"] = f"{self.memory_budget_mb:.0f}"
        with open(log_path, "ab") as log_fh:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sam_brain.train.worker",
                self.backend,
                str(spec_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=log_fh,
                env=env,
            )
            try:
                result, error = await asyncio.wait_for(
                    self._read(on_progress, on_preflight), timeout=self.timeout_s
                )
            except TimeoutError:
                await self.cancel(grace_s=30.0)
                raise TrainingFailed(
                    f"training exceeded {self.timeout_s / 60:.0f} minutes"
                ) from None
            except BaseException:
                # The daemon is shutting down (task cancelled): stop the worker, don't orphan it.
                if self.proc.returncode is None:
                    await asyncio.shield(self.cancel(grace_s=10.0))
                raise
            code = await self.proc.wait()
        if self.cancel_requested:
            raise TrainingCancelled()
        if error is not None:
            raise TrainingFailed(error)
        if code != 0 or result is None:
            reason = f"training process exited with code {code}"
            if code < 0:
                reason = f"training process killed by signal {-code}"
                if -code == signal.SIGKILL:
                    reason += " (out of memory?)"
                raise WorkerKilled(f"{reason}; see {log_path}")
            raise TrainingFailed(f"{reason}; see {log_path}")
        return result

    async def _read(
        self,
        on_progress: Callable[[Progress], None],
        on_preflight: Callable[[dict[str, Any]], None] | None,
    ) -> tuple[TrainResult | None, str | None]:
        assert self.proc is not None and self.proc.stdout is not None
        result: TrainResult | None = None
        error: str | None = None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").strip()
            if not text.startswith("@@"):
                log.debug("worker: %s", text)
                continue
            try:
                msg = json.loads(text[2:])
            except json.JSONDecodeError:
                continue
            kind = msg.pop("kind", "")
            if kind == "progress":
                on_progress(Progress(**msg))
            elif kind == "preflight" and on_preflight is not None:
                on_preflight(msg)
            elif kind == "result":
                result = TrainResult(**msg)
            elif kind == "error":
                error = str(msg.get("reason", "unknown error"))
        return result, error

    async def cancel(self, grace_s: float = 60.0) -> None:
        """Ask the worker to stop (it saves a checkpoint), then kill it after `grace_s`."""
        if self.remote_run is not None:
            self.cancel_requested = True
            await self.remote_run.cancel(grace_s)
            return
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self.cancel_requested = True
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
