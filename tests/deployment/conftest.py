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
