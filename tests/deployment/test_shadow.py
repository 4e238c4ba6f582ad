"""Shadow mode: stable answers are replayed on the canary afterwards, bounded and preemptible."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from deployment import canary
from deployment.chat_request import parse_request
from deployment.serving import ChatServer
from deployment.shadow import Outcome, ShadowMirror
from sam_brain.config_load import parse_config
from sam_brain.control.api import make_app
from sam_brain.control.app import AppContext
from sam_brain.home import Home
from sam_brain.train.scheduler import Coordinator
from sam_brain.versions import Versions

HELLO = [{"role": "user", "content": "How do I list the files in a folder?"}]


def user_on(version: str, canary_version: str = "v1.0.1", percent: int = 10) -> str:
    """A conversation key that canary routing sends to `version`."""
    return next(
        u
        for u in (f"user-{i}" for i in range(1000))
        if canary.routes_to_canary(u, canary_version, percent) == (version == canary_version)
    )


@pytest.fixture
async def api(
    tmp_path: Path, tiny_model: Path, lora_adapters: list[Path], aiohttp_client: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], ChatServer]]:
    """The daemon's app on a real home (v1.0.0 active, v1.0.1 a 10 % canary), shadow mode on."""
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "sessions")]},
            "deployment": {"shadow": True},
        }
    )
    home = Home.open(cfg)
    for a in lora_adapters[:2]:
        home.versions.register(a)
    home.versions.activate("v1.0.0")
    canary.start_canary(home.versions, "v1.0.1", 10)
    server = ChatServer(
        home.versions, tiny_model, default_max_tokens=8, shadow=cfg.deployment.shadow
    )
    coordinator = Coordinator(home, "mlx")
    ctx = AppContext(
        home=home, coordinator=coordinator, backend="mlx", backend_why="test", chat=server
    )
    yield await aiohttp_client(make_app(ctx)), server
    server.close()
    home.close()


async def test_stable_answers_are_replayed_on_the_canary_end_to_end(api: Any) -> None:
    client, server = api
    stable_user, canary_user = user_on("v1.0.0"), user_on("v1.0.1")
    body = {"messages": HELLO, "max_tokens": 5, "user": stable_user}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200 and resp.headers["x-sam-version"] == "v1.0.0"
    assert (await resp.json())["model"] == "v1.0.0"
    assert server.shadow is not None
    await server.shadow.drain()
    windows = server.metrics()
    stable, candidate = windows["v1.0.0"], windows["v1.0.1"]
    assert (stable.requests, stable.shadow_requests) == (1, 0)
    assert (candidate.requests, candidate.shadow_requests, candidate.errors) == (1, 1, 0)
    assert candidate.completion_tokens == 5 and candidate.tokens_per_second > 0
    # Traffic the canary serves itself, and requests pinned to a version, are not mirrored.
    for extra in ({"user": canary_user}, {"user": stable_user, "model": "v1.0.0"}):
        resp = await client.post("/v1/chat/completions", json={**body, **extra})
        assert resp.status == 200
    streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert streamed.headers["x-sam-version"] == "v1.0.0"
    assert (await streamed.text()).endswith("data: [DONE]\n\n")
    await server.shadow.drain()
    candidate = server.metrics()["v1.0.1"]
    assert (candidate.requests, candidate.shadow_requests) == (3, 2)

    doc = await (await client.get("/api/canary")).json()
    assert doc["version"] == "v1.0.1"
    assert doc["shadow"] == {
        "enabled": True,
        "mirrored": 2,
        "dropped": 0,
        "preempted": 0,
        "skipped": 0,
        "queued": 0,
        "capacity": 8,
    }
    assert doc["metrics"]["shadow_requests"] == 2 and doc["metrics"]["requests"] == 3
    assert doc["stable_metrics"]["requests"] == 3 and doc["stable_metrics"]["latency_ms_p99"] > 0
    text = await (await client.get("/metrics")).text()
    assert 'sam_brain_shadow_requests_total{version="v1.0.1"} 2' in text
    assert 'sam_brain_shadow_requests_total{version="v1.0.0"} 0' in text
    assert "sam_brain_shadow_mirrored_total 2" in text
    assert 'sam_brain_request_latency_seconds_count{version="v1.0.1"} 3' in text
    assert 'sam_brain_request_latency_seconds{version="v1.0.1",quantile="0.99"}' in text
    assert 'sam_brain_generation_tokens_per_second{version="v1.0.1"}' in text


async def test_a_client_request_preempts_a_running_replay(
    make_served: Callable[..., Awaitable[Any]], lora_versions: Versions
) -> None:
    client, server, _ = await make_served(shadow=True)
    canary.start_canary(lora_versions, "v1.0.1", 10)
    long = parse_request({"messages": HELLO, "max_tokens": 2000})  # ~30 s if left to run
    assert server.shadow is not None and server.shadow.offer("v1.0.1", long)
    while not server.lock.locked():  # the replay holds the model
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    body = {"messages": HELLO, "max_tokens": 2, "user": user_on("v1.0.0")}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200 and resp.headers["x-sam-version"] == "v1.0.0"
    assert time.perf_counter() - started < 15
    await server.shadow.drain()
    stats = server.shadow.stats()
    assert (stats["preempted"], stats["mirrored"]) == (1, 1)  # then the 2-token copy ran
    candidate = server.metrics()["v1.0.1"]
    assert (candidate.requests, candidate.shadow_requests, candidate.completion_tokens) == (1, 1, 2)


async def test_a_replay_for_a_replaced_canary_is_skipped(
    make_served: Callable[..., Awaitable[Any]], lora_versions: Versions
) -> None:
    _, server, loader = await make_served(shadow=True)
    canary.start_canary(lora_versions, "v1.0.1", 10)
    assert server.shadow is not None
    server.shadow.offer("v1.0.2", parse_request({"messages": HELLO}))
    await server.shadow.drain()
    assert server.shadow.stats()["skipped"] == 1
    assert loader.calls == 0 and server.metrics() == {}


async def test_without_shadow_mode_nothing_is_mirrored(
    make_served: Callable[..., Awaitable[Any]], lora_versions: Versions
) -> None:
    client, server, _ = await make_served()
    canary.start_canary(lora_versions, "v1.0.1", 10)
    body = {"messages": HELLO, "max_tokens": 2, "user": user_on("v1.0.0")}
    assert (await client.post("/v1/chat/completions", json=body)).status == 200
    await asyncio.sleep(0.05)
    assert server.shadow is None and set(server.metrics()) == {"v1.0.0"}


async def test_the_mirror_queue_is_bounded_and_counts_drops() -> None:
    release = asyncio.Event()
    replayed: list[str] = []

    async def replay(version: str, request: Any) -> Outcome:
        await release.wait()
        replayed.append(version)
        if version == "boom":
            raise RuntimeError("candidate crashed")
        return "mirrored"

    mirror = ShadowMirror(replay, capacity=3)
    request = parse_request({"messages": HELLO})
    # Offered before the consumer runs: the queue holds 3, the next 2 are dropped.
    results = [mirror.offer(v, request) for v in ("a", "boom", "c", "d", "e")]
    assert results == [True, True, True, False, False]
    assert mirror.stats() == {
        "mirrored": 0,
        "dropped": 2,
        "preempted": 0,
        "skipped": 0,
        "queued": 3,
        "capacity": 3,
    }
    release.set()
    await mirror.drain()
    assert replayed == ["a", "boom", "c"]  # a failing replay does not stop the mirror
    assert mirror.stats()["mirrored"] == 3 and mirror.stats()["queued"] == 0
    mirror.close()
