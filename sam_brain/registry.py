"""The one explicit name table for plug-ins, imported lazily.

A Linux host never imports `mlx` unless the MLX backend is chosen, and the MLX path never imports
torch: modules load only when their name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
import sys
from typing import TYPE_CHECKING, Any

from sam_brain.errors import BackendUnavailable

if TYPE_CHECKING:
    from sam_brain.protocols import TrainingBackend

BACKENDS: dict[str, str] = {
    "mlx": "backends.mlx:MLXBackend",
    "cuda": "backends.cuda:CudaBackend",
}

COLLECTORS: dict[str, str] = {
    "sessions": "collectors.sessions:SessionCollector",
    "git": "collectors.git:GitCollector",
    "distill": "collectors.distillation:DistillationCollector",
    "docs": "collectors.docs:DocsCollector",
}

TEACHERS: dict[str, str] = {
    "anthropic": "teachers.anthropic_api:AnthropicTeacher",
    "openai": "teachers.openai_api:OpenAITeacher",
}


def load(table: dict[str, str], name: str, kind: str) -> Any:
    """Import and return the object registered under `name`."""
    try:
        target = table[name]
    except KeyError:
        raise BackendUnavailable(
            f"unknown {kind} {name!r} (choose one of: {', '.join(sorted(table))})"
        ) from None
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = "mlx" if name == "mlx" else "cuda" if name == "cuda" else ""
        hint = f"; install with: pip install 'sam-brain[{extra}]'" if extra else ""
        raise BackendUnavailable(f"{kind} {name!r} cannot load: {err}{hint}") from err
    return getattr(module, attr)


def backend(name: str) -> TrainingBackend:
    """An instance of the training backend called `name` (each backend module asserts, for mypy,
    that its class satisfies `TrainingBackend`)."""
    instance: TrainingBackend = load(BACKENDS, name, "backend")()
    return instance


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def cuda_available() -> bool:
    """A cheap check that avoids importing torch: a driver tool or device node is present."""
    return shutil.which("nvidia-smi") is not None or any(
        p for p in ("/dev/nvidia0", "/proc/driver/nvidia/version") if _exists(p)
    )


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()


def choose_backend(setting: str) -> tuple[str, str]:
    """Resolve `training.backend`; returns (name, why) for `/api/self`.

    Apple Silicon -> MLX; a CUDA GPU -> CUDA; a CPU-only host -> MLX when mlx-lm is installed,
    because on a real model (SmolLM2-135M, `bench/train.py --real`) our MLX loop trains about
    2x faster than the torch path (torch wins only on tiny test models); else the torch path
    (named "cuda"; it runs on the CPU).
    """
    if setting != "auto":
        return setting, "set in config"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mlx", "Apple Silicon"
    if cuda_available() and _has_module("torch"):
        return "cuda", "CUDA GPU present"
    if _has_module("mlx_lm"):
        return (
            "mlx",
            "no GPU; MLX trains real models about 2x faster than torch on CPUs (docs/benchmarks.md)",
        )
    if _has_module("torch"):
        return "cuda", "no GPU and no mlx-lm; torch LoRA on the CPU"
    raise BackendUnavailable(
        "no training backend installed: pip install 'sam-brain[mlx]' or 'sam-brain[cuda]'"
    )


def mlx_available() -> bool:
    """mlx-lm is installed: chat serving and the evaluation gate can run (they use MLX)."""
    return _has_module("mlx_lm")
