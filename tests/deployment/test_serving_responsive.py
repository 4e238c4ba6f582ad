"""Serving stays responsive: long prompts refused at once, abandoned requests cancelled, a
bounded queue, deadlines and a shutdown that stops queued and running work (real HTTP, tiny model).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deployment.prompt_limit import CHUNK_CHARS, PromptTooLong, capped_ids
from deployment.resident import Halted, ResidentModel
from deployment.serving_metrics import rss_mb

HELLO = [{"role": "user", "content": "How do I list the files in a folder?"}]
LONG = {"messages": HELLO, "max_tokens": 4096}  # about a minute if left to run


async def _idle(server: Any, timeout: float = 30) -> float:
    """Seconds until the model is free again."""
    started = time.perf_counter()
    await asyncio.wait_for(server.lock.acquire(), timeout=timeout)
    server.lock.release()
    return time.perf_counter() - started


async def _until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_a_3mb_prompt_is_refused_at_once_while_the_model_is_busy(make_served: Any) -> None:
    client, server, _ = await make_served()
    assert (await client.post("/v1/chat/completions", json={"messages": HELLO})).status == 200
    busy = await client.post("/v1/chat/completions", json={**LONG, "stream": True})
    assert (await busy.content.readline()).startswith(b"data: ")  # the model is generating
    huge = "hello world this is a prompt " * 105_000  # 3 MB
    body = json.dumps({"messages": [{"role": "user", "content": huge}]})
    before = rss_mb()
    started = time.perf_counter()
    resp = await client.post("/v1/chat/completions", data=body)
    took = time.perf_counter() - started
    error = (await resp.json())["error"]
    grew = rss_mb() - before
    busy.close()
    assert resp.status == 400 and error["type"] == "invalid_request_error", error
    assert "prompt is over 32768 tokens" in error["message"]
    assert "deployment.max_prompt_tokens" in error["message"]
    assert took < 2.0, took  # a full tokenization alone takes ~3.4 s and ~480 MB here
    assert grew < 100, grew
    print(f"3 MB prompt refused in {took:.3f} s, RSS +{grew:.0f} MB")
    await _idle(server)
    assert server.refused["bad_request"] == 1
    assert {v: (m.requests, m.errors) for v, m in server.metrics().items()} == {"v1.0.0": (2, 0)}


async def test_the_prompt_cap_and_the_context_are_enforced(make_served: Any) -> None:
    client, server, _ = await make_served(max_prompt_tokens=64)
    ok = await client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert ok.status == 200 and (await ok.json())["usage"]["prompt_tokens"] <= 64
    long = [{"role": "user", "content": "list the files in the folder please " * 20}]
    resp = await client.post("/v1/chat/completions", json={"messages": long})
    error = (await resp.json())["error"]["message"]
    assert resp.status == 400 and "prompts are limited to 64 tokens" in error, error
    assert server.metrics()["v1.0.0"].requests == 1


def test_capped_counting_is_exact_at_the_limit(tiny_model: Path) -> None:
    from mlx_lm.utils import load_tokenizer

    tokenizer: Any = load_tokenizer(tiny_model)
    text = "def walk(path):\n    return sorted(os.listdir(path))  # files\n" * 1200
    assert len(text) > 3 * CHUNK_CHARS  # counted in slices, then whole
    ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    assert capped_ids(tokenizer, text, len(ids)) == ids
    with pytest.raises(PromptTooLong, match=f"is {len(ids)} tokens, over {len(ids) - 1}"):
        capped_ids(tokenizer, text, len(ids) - 1)
    with pytest.raises(PromptTooLong, match="counted in its first"):  # refused after a slice
        capped_ids(tokenizer, text, 100)


def test_prefill_is_chunked_and_cancellable(tiny_model: Path) -> None:
    resident = ResidentModel(tiny_model, prefill_step_size=64)
    messages = [{"role": "user", "content": "list the files in the folder please " * 150}]
    polls: list[float] = []

    def cancelled() -> bool:
        polls.append(time.perf_counter())
        return len(polls) >= 2

    out = resident.generate(messages, 16, cancelled=cancelled)
    assert out.finish_reason == "cancelled" and out.completion_tokens == 0
    assert out.prompt_tokens > 600 and len(polls) == 2  # stopped after the second chunk
    # The partial KV cache was not kept: the same prompt answers as on a fresh model.
    again = resident.generate(messages, 6)
    fresh = ResidentModel(tiny_model, prompt_cache_mb=0).generate(messages, 6)
    assert again.text == fresh.text and again.cached_tokens == 0


async def test_abandoned_requests_are_cancelled_and_the_next_is_served_promptly(
    make_served: Any,
) -> None:
    client, server, _ = await make_served()

    async def abandon() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await client.post(
                "/v1/chat/completions", json=LONG, timeout=aiohttp.ClientTimeout(total=1.0)
            )

    await asyncio.gather(*(abandon() for _ in range(5)))  # one generates, four wait
    started = time.perf_counter()
    resp = await client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    took = time.perf_counter() - started
    assert resp.status == 200, (await resp.text(), took, server.refused)
    assert took < 10, took  # ~5 minutes if the abandoned ones ran to their budget
    await _until(lambda: not server.admission.tickets)
    window = server.metrics()["v1.0.0"]
    assert window.errors == 0
    assert window.requests - window.cancelled == 1  # only the last one ran to its end
    assert window.completion_tokens < 4096
    assert server.refused["client_gone"] == 5
    print(f"next request after 5 abandoned: {took:.2f} s")


async def test_a_full_queue_answers_503_with_retry_after(make_served: Any) -> None:
    client, server, _ = await make_served(max_queued=1)
    running = await client.post("/v1/chat/completions", json={**LONG, "stream": True})
    assert (await running.content.readline()).startswith(b"data: ")
    queued = asyncio.ensure_future(client.post("/v1/chat/completions", json=LONG))
    await _until(lambda: server.waiting == 1)
    resp = await client.post("/v1/chat/completions", json={"messages": HELLO})
    error = (await resp.json())["error"]
    assert resp.status == 503 and error["type"] == "server_overloaded"
    assert "deployment.max_queued_requests = 1" in error["message"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert server.refused["overloaded"] == 1
    queued.cancel()  # both clients leave: the model is free again soon
    running.close()
    assert await _idle(server) < 10
    await _until(lambda: not server.admission.tickets)
    assert all(w.errors == 0 for w in server.metrics().values())


async def test_a_request_past_its_deadline_is_stopped(make_served: Any) -> None:
    client, server, _ = await make_served(request_timeout_s=1.5)
    started = time.perf_counter()
    resp = await client.post("/v1/chat/completions", json=LONG)
    took = time.perf_counter() - started
    error = (await resp.json())["error"]
    assert resp.status == 504 and error["type"] == "timeout", error
    assert "deployment.request_timeout_seconds" in error["message"]
    assert 1.5 <= took < 6, took
    window = server.metrics()["v1.0.0"]
    assert (window.requests, window.errors, window.cancelled) == (1, 0, 1)
    assert server.refused["deadline"] == 1
    # Streamed, the answer ends with an error event instead of a finish chunk.
    resp = await client.post("/v1/chat/completions", json={**LONG, "stream": True})
    events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["type"] == "timeout"
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events[1:-2])
    window = server.metrics()["v1.0.0"]
    assert (window.requests, window.errors, window.cancelled) == (2, 0, 2)
    assert server.refused["deadline"] == 2


async def test_shutdown_stops_running_and_queued_requests(make_served: Any) -> None:
    client, server, _ = await make_served()
    running = await client.post("/v1/chat/completions", json={**LONG, "stream": True})
    assert (await running.content.readline()).startswith(b"data: ")
    queued = asyncio.ensure_future(client.post("/v1/chat/completions", json=LONG))
    await _until(lambda: server.waiting == 1)
    started = time.perf_counter()
    server.shutdown()
    resp = await queued
    assert resp.status == 503 and "Retry-After" in resp.headers
    events = [line for line in (await running.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["type"] == "server_shutting_down"
    assert time.perf_counter() - started < 5
    late = await client.post("/v1/chat/completions", json={"messages": HELLO})
    assert late.status == 503 and "shutting down" in (await late.json())["error"]["message"]
    assert server.metrics()["v1.0.0"].errors == 0


async def test_shutdown_halts_exclusive_work_on_the_model(make_served: Any) -> None:
    """Work queued on the model without a client (the gate) stops at shutdown too."""
    client, server, _ = await make_served()
    assert (await client.post("/v1/chat/completions", json={"messages": HELLO})).status == 200
    gate = asyncio.ensure_future(server.run_exclusive(lambda r: r.generate(HELLO, 4096)))
    await asyncio.sleep(1.0)
    assert not gate.done()
    started = time.perf_counter()
    server.shutdown()
    with pytest.raises(Halted, match="shutting down"):
        await asyncio.wait_for(gate, timeout=10)
    assert time.perf_counter() - started < 5
