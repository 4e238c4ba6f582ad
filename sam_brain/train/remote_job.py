"""The Ray job's entrypoint on the cluster: `python -m sam_brain.train.remote_job BACKEND`.

Started in the job's working directory (`spec.json`, `job.json`, `data/`, maybe
`init_adapter/`, see `sam_brain.train.remote.pack`). The run's folder on the cluster is
`STORAGE/RUN_ID` (`training.remote_storage`): the data is copied there and the adapter with its
checkpoint is written there, so a later job for the same run continues from that checkpoint.
One worker runs `sam_brain.train.worker` in this process, exactly as a local run does; more run
the backend's DDP path under Ray Train's `TorchTrainer` (each Ray Train worker is one rank;
the backend joins the process group Ray Train made). SIGTERM (`ray job stop`) asks for a
clean stop: one worker saves and exits 3; under Ray Train a `STOP` file tells every rank, and
the ranks agree to stop at the same step. After a finished run the adapter's files (not the
checkpoint) follow the result on stdout, base64 in `chunk` reports, each announced with its
size and SHA-256, for the daemon to check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sam_brain.fsutil import write_text_atomic
from sam_brain.protocols import TrainSpec
from sam_brain.train.remote_transfer import send_files
from sam_brain.train.worker import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, emit

STOP = "STOP"
RESULT = "result.json"


def watch_checkpoints(ckpt: Path, every_s: float = 0.5) -> None:
    """Report each new checkpoint's step, so the daemon's run record names it (a thread)."""
    from backends.checkpoint import load_checkpoint

    last = -1

    def loop() -> None:
        nonlocal last
        while True:
            try:
                found = load_checkpoint(ckpt)
            except (OSError, ValueError):
                found = None
            step = int(found[1].get("step", 0)) if found else 0
            if step != last:
                last = step
                emit("checkpoint", {"step": step})
            time.sleep(every_s)

    threading.Thread(target=loop, daemon=True, name="checkpoints").start()


def prepare(workdir: Path) -> tuple[TrainSpec, dict[str, Any], Path]:
    """The spec with the run's folder on the cluster, the job settings and that folder."""
    job: dict[str, Any] = json.loads((workdir / "job.json").read_text(encoding="utf-8"))
    spec = TrainSpec.from_json((workdir / "spec.json").read_text(encoding="utf-8"))
    root = Path(os.path.expanduser(str(job["storage"]))) / spec.run_id
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for src in (workdir / "data").iterdir():
        shutil.copy2(src, data / src.name)
    init = ""
    if spec.init_adapter:
        shutil.rmtree(root / "init_adapter", ignore_errors=True)
        shutil.copytree(workdir / spec.init_adapter, root / "init_adapter")
        init = str(root / "init_adapter")
    base = spec.base_model
    if not Path(base).is_dir():
        from sam_brain.hub import resolve_model

        base = str(resolve_model(base))
    spec = replace(
        spec, base_model=base, data_dir=str(data), out_dir=str(root / "adapter"), init_adapter=init
    )
    (root / "spec.json").write_text(spec.to_json(), encoding="utf-8")
    return spec, job, root


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the backend's own loop; rank 0 reports, as under torchrun."""
    import ray.train

    from sam_brain import registry

    rank = ray.train.get_context().get_world_rank()
    os.environ["RANK"] = str(rank)  # `emit` lets rank 0 alone speak
    spec = TrainSpec.from_json(config["spec"])
    stop = Path(config["stop"])
    result = registry.backend(config["backend"]).train(
        spec, lambda p: emit("progress", asdict(p)), stop.exists
    )
    if rank == 0:  # Ray Train keeps only metrics tied to checkpoints: a file is plainer
        write_text_atomic(Path(config["result"]), json.dumps(asdict(result)))


def run_ddp(backend_name: str, spec: TrainSpec, job: dict[str, Any], root: Path) -> int:
    """Train with `workers` Ray Train workers; the result as the worker would report it."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from sam_brain.train.supervisor import lock_worker

    lock = lock_worker(root)  # noqa: F841 - one job at a time writes this run's checkpoint
    stop = root / STOP
    stop.unlink(missing_ok=True)
    stopped = {"requested": False}

    def on_term(signum: int, frame: object) -> None:
        stopped["requested"] = True
        stop.touch()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # No pre-flight here: the driver would import torch only for it; the ranks check the
    # options themselves, and DDP runs are not fitted to memory.
    gpus, cpus = float(job["gpus_per_worker"]), float(job["cpus_per_worker"])
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "backend": backend_name,
            "spec": spec.to_json(),
            "stop": str(stop),
            "result": str(root / RESULT),
        },
        scaling_config=ScalingConfig(
            num_workers=int(job["workers"]), use_gpu=gpus > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(name=spec.run_id, storage_path=str(root / "ray-train")),
    )
    (root / RESULT).unlink(missing_ok=True)
    try:
        trainer.fit()
    except Exception as err:  # Ray wraps the worker's error; its first line names it
        traceback.print_exc()
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        emit("error", {"reason": f"Ray Train: {reason}", "type": "crash"})
        return EXIT_FAILED
    emit("result", json.loads((root / RESULT).read_text(encoding="utf-8")))
    return EXIT_CANCELLED if stopped["requested"] else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sam_brain.train.remote_job BACKEND", file=sys.stderr)
        return 2
    backend = args[0]
    try:
        spec, job, root = prepare(Path.cwd())
    except Exception as err:  # the daemon records it as the run's failure
        traceback.print_exc()
        emit("error", {"reason": f"remote job setup: {type(err).__name__}: {err}", "type": "crash"})
        return EXIT_FAILED
    budget = float(job.get("memory_budget_mb", -1))
    watch_checkpoints(Path(spec.out_dir) / "checkpoint")
    if int(job["workers"]) > 1:
        code = run_ddp(backend, spec, job, root)
    else:
        from sam_brain.train import worker

        os.environ["SAM_BRAIN_MEMORY_BUDGET_MB"] = f"{budget:.0f}" if budget >= 0 else "-1"
        code = worker.main([backend, str(root / "spec.json")])
    time.sleep(0.6)  # the watcher reports the checkpoint saved on the way out
    if code == EXIT_OK:
        send_files(Path(spec.out_dir), emit)
    return code


if __name__ == "__main__":
    sys.exit(main())
