"""The training subprocess: `python -m sam_brain.train.worker BACKEND SPEC.json`.

Runs one backend's `train()` and reports to the supervisor on stdout, one JSON object per line
prefixed with `@@` (`preflight`, `progress`, `result`, `error`). SIGTERM asks for a clean stop:
the backend sees `cancelled()` turn true, saves its checkpoint, and the worker exits 3.

With `SAM_BRAIN_MEMORY_BUDGET_MB` set (0: the memory free now, on the GPU for CUDA on a GPU,
else in RAM), the backend's pre-flight estimate is compared with it first, and the batch (then
the sequence length) is halved until the estimate fits; the `preflight` report carries the
profile it settled on and a note per change, so the run records them and a resume trains with
the same shape.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sam_brain.errors import SamBrainError
from sam_brain.protocols import Preflight, TrainingBackend, TrainSpec

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3


def emit(kind: str, payload: dict[str, Any]) -> None:
    # Under torchrun every process runs a worker; rank 0 speaks for the run (errors from any).
    if kind != "error" and os.environ.get("RANK", "0") != "0":
        return
    sys.stdout.write("@@" + json.dumps({"kind": kind, **payload}, default=str) + "\n")
    sys.stdout.flush()


MIN_SEQ = 64  # below this a chat turn hardly fits: report instead of shrinking further


def free_memory_mb(backend: str) -> float:
    """Memory the run can have now: free GPU memory for CUDA on a GPU, else available RAM."""
    if backend == "cuda":
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.mem_get_info()[0]) / 1e6
    import psutil

    return float(psutil.virtual_memory().available) / 1e6


def fit_memory(
    backend: TrainingBackend, spec: TrainSpec, budget_mb: float
) -> tuple[TrainSpec, Preflight, list[str]]:
    """Shrink the spec's batch, then sequence length, until the estimate fits `budget_mb`.

    Halving the batch doubles `grad_accum`, so the optimizer step stays the same size. Returns
    the spec to train with, its pre-flight and a note per change (none with no budget).
    """
    pre = backend.preflight(spec)
    notes: list[str] = []
    while budget_mb > 0 and pre.estimated_memory_mb > budget_mb:
        p = dict(spec.profile)
        before = pre.estimated_memory_mb
        if int(p["batch_size"]) > 1:
            p["batch_size"], p["grad_accum"] = int(p["batch_size"]) // 2, int(p["grad_accum"]) * 2
            change = f"batch_size {p['batch_size']}, grad_accum {p['grad_accum']}"
        elif int(p["max_seq_length"]) > MIN_SEQ:
            p["max_seq_length"] = max(MIN_SEQ, int(p["max_seq_length"]) // 2)
            change = f"max_seq_length {p['max_seq_length']}"
        else:
            notes.append(
                f"memory: estimate {before:.0f} MB is above the {budget_mb:.0f} MB free even at"
                " batch_size 1 and the shortest length; training anyway"
            )
            break
        spec = replace(spec, profile=p)
        pre = backend.preflight(spec)
        notes.append(
            f"memory: estimate {before:.0f} MB above {budget_mb:.0f} MB free; trained with"
            f" {change} (estimate {pre.estimated_memory_mb:.0f} MB)"
        )
    return spec, pre, notes


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m sam_brain.train.worker BACKEND SPEC.json", file=sys.stderr)
        return 2
    backend_name, spec_path = args
    nice = int(os.environ.get("SAM_BRAIN_NICE", "0") or 0)
    if nice > 0:
        os.nice(nice)
    stop = {"requested": False}

    def on_term(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        from sam_brain import registry
        from sam_brain.train.supervisor import lock_worker

        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds it for the run
            lock = lock_worker(Path(spec_path).parent)  # noqa: F841 - held until exit
        spec = TrainSpec.from_json(Path(spec_path).read_text(encoding="utf-8"))
        backend = registry.backend(backend_name)
        budget = float(os.environ.get("SAM_BRAIN_MEMORY_BUDGET_MB", "-1") or -1)
        if budget == 0:
            budget = free_memory_mb(backend_name)
        spec, pre, fitted = fit_memory(backend, spec, budget)
        emit("preflight", {**asdict(pre), "profile": spec.profile, "fitted": fitted})
        result = backend.train(
            spec, lambda p: emit("progress", asdict(p)), lambda: stop["requested"]
        )
    except SamBrainError as err:
        emit("error", {"reason": str(err), "type": err.__class__.__name__})
        return EXIT_FAILED
    except MemoryError as err:
        emit("error", {"reason": f"out of memory: {err}", "type": "MemoryError"})
        return EXIT_FAILED
    except Exception as err:  # the supervisor records any crash as a failed run
        traceback.print_exc()
        emit("error", {"reason": f"{err.__class__.__name__}: {err}", "type": "crash"})
        return EXIT_FAILED
    emit("result", asdict(result))
    if stop["requested"]:
        return EXIT_CANCELLED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
