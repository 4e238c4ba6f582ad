"""Training on a Ray cluster: the same worker and spec, submitted as a Ray job.

`RemoteRun` is the remote half of the supervisor's seam (`TrainingProcess` with
`training.remote` set). It packs the run's scrubbed dataset files and its spec (and the adapter
the run builds on, if any) into the job's working directory, refusing above
`training.remote_max_upload_mb`; ships the code as `py_modules`; and passes the job only the
allow-listed variables in `PASSED_ENV` (no credential of the daemon's environment travels). The
job (`sam_brain.train.remote_job`) prints the worker's `@@` reports; they are read from the
job's log stream as from a local worker's stdout, and after the result the adapter's files
arrive in the same stream, each with its SHA-256, checked before the adapter lands in the run
folder. `remote.json` in the run folder names the job: a resumed run reattaches to a job still
running (the daemon died or lost the connection) or collects one that finished meanwhile, and
otherwise submits a new job that continues from the checkpoint kept in `training.remote_storage`
on the cluster. Ray is imported only here, and only when a run is remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sam_brain.config import TrainingConfig
from sam_brain.errors import TrainingCancelled, TrainingFailed, WorkerKilled
from sam_brain.fsutil import write_text_atomic
from sam_brain.protocols import Progress, TrainResult, TrainSpec
from sam_brain.train.remote_transfer import Incoming, land_adapter
from sam_brain.train.resume import DATA_FILES

log = logging.getLogger(__name__)

REMOTE_STATE = "remote.json"
# Variables a job may see from the daemon's environment: switches, never credentials.
PASSED_ENV = ("SAM_BRAIN_CUDA_QUANTIZE", "OMP_NUM_THREADS", "HF_HUB_OFFLINE")
STOP_WAIT_S = 120  # Ray's SIGTERM-to-SIGKILL wait for a stopped job: time to checkpoint
LIVE = ("PENDING", "RUNNING")
RECONNECT_S = 30.0


class RemoteUnreachable(TrainingFailed):
    """The Ray cluster at the configured address could not be reached."""


def connect(address: str) -> Any:
    """A Ray Jobs client for `address`; one-line `RemoteUnreachable` naming it otherwise."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:
        raise RemoteUnreachable(
            f"training.remote is {address} but Ray is not installed (pip install 'sam-brain[remote]')"
        ) from err
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(name, address) != address:  # Ray would use it instead of `address`
            raise TrainingFailed(
                f"{name}={os.environ[name]} in the daemon's environment overrides"
                f" training.remote = {address}; unset it"
            )
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # ConnectionError, or whatever ray:// raises
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RemoteUnreachable(f"Ray cluster at {address} is unreachable: {first}") from err


def runtime_env(upload: Path, t: TrainingConfig) -> dict[str, Any]:
    """The job's runtime environment: its files, the code, and allow-listed variables only."""
    import backends
    import sam_brain

    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(
        RAY_JOB_STOP_WAIT_TIME_S=str(STOP_WAIT_S),
        RAY_DEDUP_LOGS="0",  # every progress line of the rank-0 worker, not a summary
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    code = [str(Path(m.__file__ or "").parent) for m in (sam_brain, backends)]
    return {
        "working_dir": str(upload),
        "py_modules": code,
        "env_vars": env,
        "excludes": ["__pycache__", "*.pyc"],
    }


def pack(spec: TrainSpec, base_ref: str, t: TrainingConfig, budget_mb: float, dest: Path) -> int:
    """Write the job's working directory into `dest`; returns its size in bytes.

    Raises:
        TrainingFailed: It is larger than `training.remote_max_upload_mb`.
    """
    data = dest / "data"
    data.mkdir(parents=True)
    for name in DATA_FILES:
        src = Path(spec.data_dir) / name
        if src.exists():
            shutil.copy2(src, data / name)
    init = ""
    if spec.init_adapter:
        shutil.copytree(
            spec.init_adapter,
            dest / "init_adapter",
            ignore=shutil.ignore_patterns("checkpoint", "*.gguf"),
        )
        init = "init_adapter"
    # A local model folder is used by path (a shared mount, or the same machine); a hub id is
    # downloaded on the cluster.
    base = spec.base_model if not base_ref or Path(base_ref).expanduser().is_dir() else base_ref
    remote_spec = replace(spec, base_model=base, data_dir="data", out_dir="", init_adapter=init)
    (dest / "spec.json").write_text(remote_spec.to_json(), encoding="utf-8")
    r = t.remote_resources
    job = {"storage": t.remote_storage, "memory_budget_mb": budget_mb, **asdict(r)}
    (dest / "job.json").write_text(json.dumps(job), encoding="utf-8")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    if size > t.remote_max_upload_mb * 1e6:
        raise TrainingFailed(
            f"the remote job's dataset and spec are {size / 1e6:.1f} MB, above"
            f" training.remote_max_upload_mb = {t.remote_max_upload_mb:g}"
        )
    return size


class RemoteRun:
    """One training run as a Ray job; `run` and `cancel` behave as `TrainingProcess`'s."""

    def __init__(
        self,
        t: TrainingConfig,
        backend: str,
        spec: TrainSpec,
        run_dir: Path,
        base_ref: str = "",
        memory_budget_mb: float = -1.0,
    ) -> None:
        self.t = t
        self.address = t.remote
        self.backend = backend
        self.spec = spec
        self.run_dir = run_dir
        self.base_ref = base_ref
        self.budget = memory_budget_mb
        self.client: Any = None
        self.submitting: asyncio.Future[str] | None = None
        self.job_id = ""
        self.reattached = False
        self.finished = False
        self.cancel_requested = False
        self.notes: list[str] = []

    async def run(
        self,
        on_progress: Callable[[Progress], None],
        on_preflight: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainResult:
        timeout = self.t.remote_timeout_minutes * 60
        try:
            return await asyncio.wait_for(self._run(on_progress, on_preflight), timeout)
        except TimeoutError:
            await self.cancel(grace_s=30.0)
            raise TrainingFailed(
                f"remote training exceeded {self.t.remote_timeout_minutes:g} minutes"
                " (training.remote_timeout_minutes)"
            ) from None
        except asyncio.CancelledError:
            # The daemon is stopping: stop the job (it checkpoints); the next start resumes it.
            if not self.finished:  # also a job still being submitted (`cancel` waits for it)
                await asyncio.shield(self.cancel(grace_s=10.0))
            raise

    async def _run(
        self,
        on_progress: Callable[[Progress], None],
        on_preflight: Callable[[dict[str, Any]], None] | None,
    ) -> TrainResult:
        self.client = await asyncio.to_thread(connect, self.address)
        # Shielded: a timeout or a stop while the job is being submitted still learns its id.
        self.submitting = asyncio.ensure_future(asyncio.to_thread(self._attach_or_submit))
        self.job_id = await asyncio.shield(self.submitting)
        if self.cancel_requested:  # asked while the job was being submitted
            self.cancel_requested = False
            await self.cancel()
        incoming = Incoming()
        await self._follow(incoming, on_progress, None if self.reattached else on_preflight)
        info = await asyncio.to_thread(self.client.get_job_info, self.job_id)
        self.finished = True
        status = str(getattr(info.status, "value", info.status))
        if self.cancel_requested:
            raise TrainingCancelled()
        if incoming.error is not None:
            raise TrainingFailed(incoming.error)
        if status != "SUCCEEDED" or incoming.result is None:
            why = (info.message or "").strip().splitlines()[-1:] or [""]
            raise TrainingFailed(
                f"Ray job {self.job_id} on {self.address} ended {status}: {why[0]};"
                f" see {self.run_dir / 'train.log'}"
            )
        out = self.run_dir / "adapter"
        await asyncio.to_thread(land_adapter, incoming.files(), out)
        result = replace(incoming.result, adapter_dir=str(out))
        result.notes = [*result.notes, f"trained on the Ray cluster at {self.address}"]
        return result

    def _attach_or_submit(self) -> str:
        """The job id: the run's job still running or finished meanwhile, else a new one."""
        state = self._read_state()
        if state and state.get("address") == self.address:
            try:
                info = self.client.get_job_info(state["job_id"])
            except Exception:  # unknown to this cluster (restarted): submit a new job
                info = None
            status = str(getattr(getattr(info, "status", ""), "value", ""))
            done = status == "SUCCEEDED" and state.get("spec") == self._spec_digest()
            if status in LIVE or done:
                self.reattached = True
                log.info("run %s: reattached to Ray job %s", self.spec.run_id, state["job_id"])
                return str(state["job_id"])
        with tempfile.TemporaryDirectory(prefix="sam-remote-") as tmp:
            size = pack(self.spec, self.base_ref, self.t, self.budget, Path(tmp) / "job")
            r = self.t.remote_resources
            single = r.workers == 1
            job_id = self.client.submit_job(
                entrypoint=f"python -m sam_brain.train.remote_job {self.backend}",
                submission_id=f"sam-brain-{self.spec.run_id}-{int(time.time() * 1000)}",
                runtime_env=runtime_env(Path(tmp) / "job", self.t),
                metadata={"sam_brain_run": self.spec.run_id},
                entrypoint_num_cpus=r.cpus_per_worker if single else 0,
                entrypoint_num_gpus=r.gpus_per_worker if single else 0,
            )
        log.info("run %s: Ray job %s (%.1f MB sent)", self.spec.run_id, job_id, size / 1e6)
        state = {"address": self.address, "job_id": job_id, "spec": self._spec_digest()}
        write_text_atomic(self.run_dir / REMOTE_STATE, json.dumps(state) + "\n")
        return str(job_id)

    def _spec_digest(self) -> str:
        return hashlib.sha256(self.spec.to_json().encode()).hexdigest()[:32]

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.run_dir / REMOTE_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("job_id") else None

    async def _follow(
        self,
        incoming: Incoming,
        on_progress: Callable[[Progress], None],
        on_preflight: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        """Read the job's log to its end; a dropped stream is picked up again where it was."""
        seen = 0  # lines handled: the stream starts at the log's beginning each time
        with open(self.run_dir / "train.log", "a", encoding="utf-8") as log_fh:
            while True:
                lines, buffer = 0, ""
                try:
                    async for chunk in self.client.tail_job_logs(self.job_id):
                        buffer += chunk
                        *complete, buffer = buffer.split("\n")
                        for line in complete:
                            lines += 1
                            if lines > seen:
                                seen = lines
                                self._line(line, incoming, on_progress, on_preflight, log_fh)
                    if buffer:
                        lines += 1
                        if lines > seen:
                            self._line(buffer, incoming, on_progress, on_preflight, log_fh)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    await self._reconnect(err)

    async def _reconnect(self, err: Exception) -> None:
        """Wait for the cluster to answer again; `WorkerKilled` (a retry reattaches) if it won't."""
        deadline = time.monotonic() + RECONNECT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(2.0)
            try:
                await asyncio.to_thread(self.client.get_job_status, self.job_id)
                return
            except Exception:
                continue
        raise WorkerKilled(
            f"lost the connection to the Ray cluster at {self.address} ({type(err).__name__});"
            f" job {self.job_id} runs on and the next attempt reattaches to it"
        )

    def _line(
        self,
        text: str,
        incoming: Incoming,
        on_progress: Callable[[Progress], None],
        on_preflight: Callable[[dict[str, Any]], None] | None,
        log_fh: Any,
    ) -> None:
        # Lines of Ray Train workers come prefixed with "(RayTrainWorker pid=...)".
        at = text.find("@@{")
        if at < 0:
            log_fh.write(text + "\n")
            return
        try:
            msg = json.loads(text[at + 2 :])
        except json.JSONDecodeError:
            log_fh.write(text + "\n")
            return
        kind = msg.pop("kind", "")
        if kind != "chunk":  # the adapter's bytes stay out of the log
            log_fh.write(text[at:] + "\n")
        if incoming.take(kind, msg):
            return
        if kind == "progress":
            on_progress(Progress(**msg))
        elif kind == "preflight" and on_preflight is not None:
            on_preflight(msg)
        elif kind == "result":
            incoming.result = TrainResult(**msg)
        elif kind == "error":
            incoming.error = str(msg.get("reason", "unknown error"))
        elif kind == "checkpoint":  # kept on the cluster: the run record names its step
            state = self._read_state() or {}
            state["checkpoint_step"] = int(msg.get("step", 0))
            write_text_atomic(self.run_dir / REMOTE_STATE, json.dumps(state) + "\n")

    async def cancel(self, grace_s: float = 60.0) -> None:
        """Stop the job (SIGTERM: it checkpoints) and wait up to `grace_s` for it to end."""
        self.cancel_requested = True  # also when the job is being submitted right now
        if not self.job_id and self.submitting is not None:
            with contextlib.suppress(Exception):
                self.job_id = await self.submitting
        if not self.job_id or self.finished or self.client is None:
            return
        try:
            await asyncio.to_thread(self.client.stop_job, self.job_id)
        except Exception as err:  # unreachable now: the job stops itself at its timeout
            log.warning("could not stop Ray job %s: %s", self.job_id, err)
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(self.client.get_job_status, self.job_id)
            if str(getattr(status, "value", status)) not in LIVE:
                return
            await asyncio.sleep(0.5)
