"""Local servers that speak the Anthropic (Messages, streaming, Batches) and OpenAI chat wire
formats, run in a thread so the synchronous SDKs can call them over real loopback HTTP (the
teach tests and `bench/teach_campaign.py`; no network, no key needed unless `key` is set).

`answer(body) -> str` writes each reply; `script` is a list of failures served before answers
("429", "529", "overloaded" = an `overloaded_error` inside a 200 stream, "drop" = the
connection closed mid-stream), consumed in order.
Usage is derived from the request: input = characters / 4 of the user turns, cache reads for
the cached system block after the first call, output = characters / 4 of the answer. `billed`
sums the usage of every answer delivered, so a client's ledger can be checked against it.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sam_brain.dev.demo import free_port

Answer = Callable[[dict[str, Any]], str]


@dataclass
class Wire:
    answer: Answer
    script: list[str] = field(default_factory=list)
    key: str = ""  # the API key the server expects (x-api-key or bearer)
    delay: float = 0.0  # seconds each answer takes (the benchmark's stand-in for a model)
    url: str = ""
    calls: int = 0  # every HTTP request to /v1/messages or /v1/chat/completions
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    bad_keys: int = 0
    batches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    batch_polls: int = 0
    polls: dict[str, int] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)
    billed: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def usage(self, body: dict[str, Any], text: str, commit: bool = True) -> dict[str, int]:
        system = body.get("system") or []
        sys_text = "".join(b["text"] for b in system) if isinstance(system, list) else system
        user = sum(len(str(m["content"])) for m in body["messages"])
        cached = isinstance(system, list) and any("cache_control" in b for b in system)
        with self.lock:
            hit = cached and sys_text in self.cached
            if cached and commit:
                self.cached.add(sys_text)
        sys_tokens = len(sys_text) // 4
        return {
            "input_tokens": user // 4 + (0 if cached else sys_tokens),
            "output_tokens": max(1, len(text) // 4),
            "cache_read_input_tokens": sys_tokens if hit else 0,
            "cache_creation_input_tokens": sys_tokens if cached and not hit else 0,
        }

    def _next_failure(self) -> str:
        with self.lock:
            self.calls += 1
            return self.script.pop(0) if self.script else ""

    def _key_ok(self, request: web.Request) -> bool:
        got = request.headers.get("x-api-key") or request.headers.get("Authorization", "")
        ok = not self.key or got in (self.key, f"Bearer {self.key}")
        if not ok:
            self.bad_keys += 1
        return ok

    def message(
        self, body: dict[str, Any], text: str, n: int, commit: bool = True
    ) -> dict[str, Any]:
        usage = self.usage(body, text, commit)
        if commit:
            with self.lock:
                self.billed.update(usage)
        return {
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }

    # -- Anthropic -------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        if not self._key_ok(request):
            return _error(401, "authentication_error", "invalid x-api-key")
        body = await request.json()
        failure = self._next_failure()
        if failure in ("429", "529"):
            self.failures.append(failure)
            kind = "rate_limit_error" if failure == "429" else "overloaded_error"
            return _error(int(failure), kind, "try later", {"retry-after": "0.2"})
        self.bodies.append(body)
        text = self.answer(body)
        await asyncio.sleep(self.delay)
        with self.lock:
            n = self.calls
            if failure not in ("overloaded", "drop"):
                self.answered += 1
        msg = self.message(body, text, n, commit=failure not in ("overloaded", "drop"))
        if not body.get("stream"):
            return web.json_response(msg)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        usage = msg["usage"]
        start = {**msg, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        await _sse(resp, "message_start", {"type": "message_start", "message": start})
        if failure == "drop":  # the connection dies mid-answer
            self.failures.append(failure)
            if request.transport is not None:
                request.transport.abort()
            return resp
        if failure == "overloaded":
            self.failures.append(failure)
            err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            await _sse(resp, "error", err)
            return resp
        block = {"type": "text", "text": ""}
        await _sse(
            resp,
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        for i in range(0, len(text), 40):
            delta = {"type": "text_delta", "text": text[i : i + 40]}
            await _sse(
                resp,
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": delta},
            )
        await _sse(resp, "content_block_stop", {"type": "content_block_stop", "index": 0})
        await _sse(
            resp,
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await _sse(resp, "message_stop", {"type": "message_stop"})
        return resp

    def _batch_doc(self, batch_id: str, status: str) -> dict[str, Any]:
        n = len(self.batches[batch_id])
        done = status == "ended"
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0 if done else n,
                "succeeded": n if done else 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z",
            "ended_at": "2026-01-01T00:01:00Z" if done else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if done else None,
        }

    async def create_batch(self, request: web.Request) -> web.Response:
        if not self._key_ok(request):
            return _error(401, "authentication_error", "invalid x-api-key")
        body = await request.json()
        batch_id = f"msgbatch_{len(self.batches) + 1}"
        self.batches[batch_id] = body["requests"]
        return web.json_response(self._batch_doc(batch_id, "in_progress"))

    async def get_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["id"]
        self.batch_polls += 1
        # The first look finds it running, later ones find it ended.
        self.polls[batch_id] = self.polls.get(batch_id, 0) + 1
        status = "ended" if self.polls[batch_id] >= 2 else "in_progress"
        return web.json_response(self._batch_doc(batch_id, status))

    async def batch_results(self, request: web.Request) -> web.Response:
        lines = []
        for i, item in enumerate(self.batches[request.match_info["id"]]):
            body = item["params"]
            self.bodies.append(body)
            msg = self.message(body, self.answer(body), 10_000 + i)
            result = {"type": "succeeded", "message": msg}
            lines.append(json.dumps({"custom_id": item["custom_id"], "result": result}))
        return web.Response(text="\n".join(lines) + "\n", content_type="application/x-jsonl")

    # -- OpenAI ----------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.Response:
        if not self._key_ok(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        if self._next_failure() == "429":
            self.failures.append("429")
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"retry-after": "0.2"}
            )
        self.bodies.append(body)
        msgs = body["messages"]
        system = next((m["content"] for m in msgs if m["role"] == "system"), "")
        text = self.answer({"system": system, "messages": msgs, "model": body["model"]})
        await asyncio.sleep(self.delay)
        with self.lock:
            self.answered += 1
        prompt = sum(len(str(m["content"])) for m in msgs) // 4
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": max(1, len(text) // 4),
            "total_tokens": prompt + max(1, len(text) // 4),
        }
        with self.lock:
            self.billed.update(input_tokens=prompt, output_tokens=usage["completion_tokens"])
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )


def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=headers)


async def _sse(resp: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


@contextmanager
def serve(wire: Wire) -> Iterator[Wire]:
    """Run `wire` on 127.0.0.1 in a thread of its own until the block ends."""
    app = web.Application()
    app.router.add_post("/v1/messages", wire.messages)
    app.router.add_post("/v1/messages/batches", wire.create_batch)
    app.router.add_get("/v1/messages/batches/{id}", wire.get_batch)
    app.router.add_get("/v1/messages/batches/{id}/results", wire.batch_results)
    app.router.add_post("/v1/chat/completions", wire.chat)
    with serve_app(app) as url:
        wire.url = url
        yield wire


@contextmanager
def serve_app(app: web.Application, port: int = 0) -> Iterator[str]:
    """Serve an aiohttp app on loopback (`port`, or a free one) from a thread; yields its URL."""
    loop = asyncio.new_event_loop()
    port = port or free_port()
    runner = web.AppRunner(app, access_log=None)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


VOCABULARY = [
    "amber",
    "basalt",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kelp",
    "lagoon",
    "mesa",
    "nectar",
    "onyx",
    "prairie",
    "quartz",
    "reef",
    "sierra",
    "tundra",
    "umber",
    "valley",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
    "acorn",
    "birch",
    "cedar",
    "delta",
    "estuary",
    "fern",
    "glacier",
    "heath",
    "iris",
    "jade",
    "knoll",
    "lichen",
    "marsh",
    "nimbus",
    "orchid",
    "pebble",
    "quill",
    "ridge",
    "sable",
    "thistle",
    "upland",
    "vortex",
    "wren",
    "yew",
]


def samctl_examples(body: dict[str, Any]) -> str:
    """A teacher that answers `generate` prompts for the packaged samctl schema with valid,
    distinct examples (random words seeded by the prompt: the same prompt, the same answer)."""
    prompt = str(body["messages"][-1]["content"])
    found = re.search(r"Write (\d+) different", prompt)
    n = int(found.group(1)) if found else 5
    rng = random.Random(zlib.crc32(prompt.encode()))
    out = []
    for j in range(n):
        text = " ".join(rng.sample(VOCABULARY, 8))
        if j % 3 == 0:
            cmd: dict[str, Any] = {"command": "history", "args": {"limit": rng.randint(1, 500)}}
        elif j % 3 == 1:
            cmd = {
                "command": "export",
                "args": {"version": f"v1.{rng.randint(0, 99)}.{j}", "format": "gguf",
                         "out": "/tmp/" + "-".join(rng.sample(VOCABULARY, 2))},
            }  # fmt: skip
        else:
            cmd = {"command": "canary", "args": {"target": f"v2.{rng.randint(0, 999)}",
                                                 "traffic": rng.randint(1, 100)}}  # fmt: skip
        out.append({"input": text, "output": {**cmd, "flags": []}})
    return json.dumps(out)
