"""The OpenAI-compatible chat endpoint on the tiny model: JSON, SSE, routing, swaps, errors."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from deployment import canary
from deployment.canary import HealthLimits
from deployment.resident import ResidentModel
from deployment.rollback import RollbackMonitor
from sam_brain.errors import BadRequest
from sam_brain.versions import Versions

HELLO = [{"role": "user", "content": "How do I list the files in a folder?"}]


@pytest.fixture
def adapters(lora_adapters: list[Path]) -> list[Path]:
    return lora_adapters


@pytest.fixture
def versions(lora_versions: Versions) -> Versions:
    return lora_versions


async def chat(client: TestClient[Any, Any], **body: Any) -> tuple[int, dict[str, Any], str]:
    resp = await client.post("/v1/chat/completions", json={"messages": HELLO, **body})
    return resp.status, await resp.json(), resp.headers.get("x-sam-version", "")


async def test_non_streaming_completion_names_its_version(served: Any) -> None:
    client, server, _ = served
    status, body, header = await chat(client, max_tokens=6)
    assert status == 200
    assert header == body["model"] == body["sam_version"] == "v1.0.0"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"  # a random tiny model never ends by itself
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 6
    window = server.metrics()["v1.0.0"]
    assert (window.requests, window.errors, window.swaps) == (1, 0, 1)
    assert window.mean_latency_ms > 0 and window.memory_mb > 50
    assert window.completion_tokens == 6 and window.tokens_per_second > 0
    assert window.latency_quantile(0.99) == window.latency_quantile(0.5) == window.mean_latency_ms


async def test_streaming_sends_sse_chunks_and_done(served: Any) -> None:
    client, _, _ = served
    _, plain, _ = await chat(client, max_tokens=6)
    resp = await client.post(
        "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 6, "stream": True}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["x-sam-version"] == "v1.0.0"
    events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(chunks) > 3 and text == plain["choices"][0]["message"]["content"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not valid JSON"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
        ({"messages": HELLO, "max_tokens": 0}, "'max_tokens' must be within 1..4096"),
        ({"messages": HELLO, "stream": "yes"}, "'stream' must be true or false"),
        ({"messages": HELLO, "temperature": 5}, "'temperature'"),
        ({"messages": HELLO, "stop": ["\n"]}, "'stop'"),
        ({"messages": HELLO, "model": "v9.9.9"}, "unknown model 'v9.9.9'"),
    ],
)
async def test_bad_requests_get_400_with_a_message(served: Any, body: Any, message: str) -> None:
    client, server, loader = served
    data = body if isinstance(body, str) else json.dumps(body)
    resp = await client.post("/v1/chat/completions", data=data)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert loader.calls == 0 and server.metrics() == {}  # nothing was generated or counted


async def test_models_lists_routed_pinned_and_base(served: Any, versions: Versions) -> None:
    client, _, _ = served
    canary.start_canary(versions, "v1.0.1", 10)
    resp = await client.get("/v1/models")
    ids = [m["id"] for m in (await resp.json())["data"]]
    # "sam" (issue 16) routes like the older "sam-brain": the default training's versions.
    assert ids == ["sam-brain", "sam", "v1.0.0", "v1.0.1", "base"]


async def test_canary_routing_is_sticky_per_user(served: Any, versions: Versions) -> None:
    client, server, loader = served
    canary.start_canary(versions, "v1.0.1", 50)
    users = [f"user-{i}" for i in range(10)]
    expected = {
        u: "v1.0.1" if canary.routes_to_canary(u, "v1.0.1", 50) else "v1.0.0" for u in users
    }
    assert set(expected.values()) == {"v1.0.0", "v1.0.1"}
    for _ in range(2):  # the second pass must land every user on the same version again
        for u in users:
            _, _, header = await chat(client, user=u, max_tokens=2)
            assert header == expected[u]
    window = server.metrics()
    counts = {v: sum(2 for u in users if expected[u] == v) for v in ("v1.0.0", "v1.0.1")}
    assert {v: m.requests for v, m in window.items()} == counts
    assert loader.calls == 1
    # Without a user id the first user message is the key: the same chat stays put.
    headers = {(await chat(client, max_tokens=1))[2] for _ in range(4)}
    assert len(headers) == 1


async def test_adapters_swap_without_reloading_the_base(
    served: Any, versions: Versions, tiny_model: Path
) -> None:
    client, server, loader = served
    canary.start_canary(versions, "v1.0.1", 10)
    order = ["v1.0.0", "v1.0.1", "base", "v1.0.0", "v1.0.1"]
    texts = [(await chat(client, model=m, max_tokens=12))[1] for m in order]
    out = {
        m: [
            t["choices"][0]["message"]["content"]
            for o, t in zip(order, texts, strict=True)
            if o == m
        ]
        for m in order
    }
    assert out["v1.0.0"][0] == out["v1.0.0"][1]  # swapping back restores the exact weights
    assert out["v1.0.1"][0] == out["v1.0.1"][1]
    assert len({out["v1.0.0"][0], out["v1.0.1"][0], out["base"][0]}) == 3
    assert loader.calls == 1
    # The bare base after adapters have been applied answers like a freshly loaded base.
    fresh = ResidentModel(tiny_model)
    assert fresh.generate(HELLO, 12).text == out["base"][0]
    resident = server.resident
    assert resident is not None and resident.last_swap_ms > 0
    # Promote the other-structured v1.0.2: its LoRA layers replace the q/v ones.
    canary.abort(versions)
    canary.start_canary(versions, "v1.0.2", 100)
    _, body, header = await chat(client, max_tokens=12)
    seen = {text for texts in out.values() for text in texts}
    assert header == "v1.0.2" and body["choices"][0]["message"]["content"] not in seen
    lora = {k.rsplit(".", 2)[-2] for k, _ in _flat(resident.model) if k.endswith("lora_a")}
    assert lora == {"down_proj", "o_proj"}
    assert loader.calls == 1


def _flat(model: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    flat: Any = tree_flatten(model.parameters())
    return list(flat)


async def test_routing_change_restarts_the_metrics_window(served: Any, versions: Versions) -> None:
    client, server, _ = served
    await chat(client, max_tokens=1)
    assert server.metrics()["v1.0.0"].requests == 1
    canary.start_canary(versions, "v1.0.1", 10)
    assert server.metrics() == {}


async def test_failing_version_counts_errors_and_is_rolled_back(
    served: Any, versions: Versions
) -> None:
    client, server, _ = served
    versions.activate("v1.0.1")
    # Its files rot after activation: serving verifies the checksum and refuses them.
    (Path(versions.get("v1.0.1").adapter_path) / "adapters.safetensors").write_bytes(b"rot")
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json={"messages": HELLO})
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert error["type"] == "server_error" and "checksum mismatch" in error["message"]
    window = server.metrics()["v1.0.1"]
    assert (window.requests, window.errors) == (3, 3)
    monitor = RollbackMonitor(versions, server.metrics, HealthLimits(min_requests=3))
    [action] = monitor.check()
    assert (action.kind, action.to_version) == ("rollback", "v1.0.0")
    assert action.reason == "auto: error rate 100.0% > 15.0% (3/3 requests)"
    status, _, header = await chat(client, max_tokens=1)
    assert (status, header) == (200, "v1.0.0")
    assert server.metrics()["v1.0.0"].errors == 0


async def test_failed_swap_leaves_a_clean_model_and_serving_recovers(
    served: Any, adapters: list[Path], tmp_path: Path
) -> None:
    client, server, loader = served
    _, before, _ = await chat(client, max_tokens=8)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapters.safetensors").write_bytes((adapters[0] / "adapters.safetensors").read_bytes())
    config = json.loads((adapters[0] / "adapter_config.json").read_text())
    config["lora_parameters"]["keys"] = ["mlp.up_proj"]  # names no tensor of the file
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(BadRequest, match="does not fit"):
        await server.run_exclusive(lambda r: r.use(str(bad)))
    resident = server.resident
    assert resident is not None and resident.applied is None
    assert not [k for k, _ in _flat(resident.model) if "lora" in k]
    _, after, header = await chat(client, max_tokens=8)
    assert header == "v1.0.0" and after["choices"] == before["choices"]
    assert loader.calls == 1


async def test_client_leaving_a_stream_stops_the_generation(served: Any) -> None:
    client, server, _ = served
    body = {"messages": HELLO, "stream": True, "max_tokens": 4096}
    resp = await client.post("/v1/chat/completions", json=body)
    assert (await resp.content.readline()).startswith(b"data: ")
    resp.close()
    started = time.perf_counter()
    await asyncio.wait_for(server.lock.acquire(), timeout=30)  # ~60 s if it ran to the budget
    server.lock.release()
    assert time.perf_counter() - started < 30
    window = server.metrics()["v1.0.0"]
    assert (window.requests, window.errors) == (1, 0)


async def test_the_official_openai_client_works_unchanged(served: Any) -> None:
    """Any OpenAI client works against the endpoint: the official `openai` package is the test."""
    openai = pytest.importorskip("openai")
    client, _, _ = served
    oc = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused")
    raw = await oc.chat.completions.with_raw_response.create(
        model="sam-brain", messages=HELLO, max_tokens=6
    )
    completion = raw.parse()
    assert raw.headers["x-sam-version"] == completion.model == "v1.0.0"
    assert completion.choices[0].message.role == "assistant"
    assert isinstance(completion.choices[0].message.content, str)
    stream = await oc.chat.completions.create(
        model="sam-brain", messages=HELLO, max_tokens=6, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.model == "v1.0.0" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion.choices[0].message.content
    models = await oc.models.list()
    assert "v1.0.0" in [m.id for m in models.data]
    await oc.close()
