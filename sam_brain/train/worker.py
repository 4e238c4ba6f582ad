"""The training subprocess: `python -m sam_brain.train.worker BACKEND SPEC.json`.

Runs one backend's `train()` and reports to the supervisor on stdout, one JSON object per line
prefixed with `@@` (`progress`, `result`, `error`). SIGTERM asks for a clean stop: the backend
sees `cancelled()` turn true, saves its checkpoint, and the worker exits 3.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sam_brain.errors import SamBrainError
from sam_brain.protocols import TrainSpec

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3


def emit(kind: str, payload: dict[str, Any]) -> None:
    # Under torchrun every process runs a worker; rank 0 speaks for the run (errors from any).
    if kind != "error" and os.environ.get("RANK", "0") != "0":
        return
    sys.stdout.write("@@" + json.dumps({"kind": kind, **payload}, default=str) + "\n")
    sys.stdout.flush()


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

        spec = TrainSpec.from_json(Path(spec_path).read_text(encoding="utf-8"))
        backend = registry.backend(backend_name)
        pre = backend.preflight(spec)
        emit("preflight", asdict(pre))
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
