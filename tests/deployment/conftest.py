"""Serving fixtures: LoRA adapters of the tiny model, a registry of them, a chat server factory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from deployment.serving import ChatServer, add_routes
from sam_brain.store import Store
from sam_brain.versions import Versions

Served = tuple[TestClient[Any, Any], ChatServer, "CountingLoader"]


def write_adapter(model_dir: Path, out: Path, seed: int, keys: list[str]) -> Path:
    """An mlx-lm adapter folder with random, clearly non-zero LoRA weights (no training)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    loaded: Any = load(str(model_dir))
    model = loaded[0]
    model.freeze()
    lora = {"rank": 4, "scale": 10.0, "dropout": 0.0, "keys": keys}
    linear_to_lora_layers(model, 4, lora)
    mx.random.seed(seed)
    params: Any = tree_flatten(model.trainable_parameters())
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.3) for k, v in params]))
    out.mkdir(parents=True)
    mx.save_safetensors(
        str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    config = {"fine_tune_type": "lora", "num_layers": 4, "lora_parameters": lora}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def lora_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [
        write_adapter(tiny_model, root / "a0", 1, ["self_attn.q_proj", "self_attn.v_proj"]),
        write_adapter(tiny_model, root / "a1", 2, ["self_attn.q_proj", "self_attn.v_proj"]),
        # A different structure (other modules): the swap must rebuild the LoRA layers.
        write_adapter(tiny_model, root / "a2", 3, ["mlp.down_proj", "self_attn.o_proj"]),
    ]


@pytest.fixture
def lora_versions(tmp_path: Path, lora_adapters: list[Path]) -> Versions:
    """v1.0.0 (active), v1.0.1 and v1.0.2 (inactive): the three adapters."""
    vs = Versions(Store(tmp_path / "state.db"), tmp_path / "versions")
    for a in lora_adapters:
        vs.register(a)
    vs.activate("v1.0.0")
    return vs


class CountingLoader:
    """Wraps mlx_lm.load and counts base-model loads."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: str) -> tuple[Any, Any]:
        from mlx_lm import load

        self.calls += 1
        loaded: Any = load(path)
        return loaded[0], loaded[1]


@pytest.fixture
async def make_served(
    lora_versions: Versions, tiny_model: Path, aiohttp_client: Any
) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Builds a `ChatServer` on `lora_versions` (keyword arguments passed on) behind a client."""
    servers: list[ChatServer] = []

    async def make(**kwargs: Any) -> Served:
        loader = CountingLoader()
        server = ChatServer(
            lora_versions, tiny_model, loader=loader, default_max_tokens=8, **kwargs
        )
        servers.append(server)
        app = web.Application()
        add_routes(app, server)
        return await aiohttp_client(app), server, loader

    yield make
    for server in servers:
        server.close()


@pytest.fixture
async def served(make_served: Callable[..., Awaitable[Served]]) -> Served:
    return await make_served()


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
