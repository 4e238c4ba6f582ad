"""OpenAI-compatible chat serving of the active and canary adapters over one resident base model.

`deployment.resident.ResidentModel` loads the base once and swaps LoRA adapters in place, so a
swap costs milliseconds, not a model load; `deployment.chat_request` validates request bodies.
`ChatServer` reads the active version and the canary from the store on every request (one small
query), routes each conversation sticky-per-key (`canary.routes_to_canary`), runs generation on
its one worker thread (MLX state is per thread, and the loop must never block), serialises
requests with an asyncio lock (a swap mutates the shared model) and keeps a `VersionMetrics`
window per version for the canary and rollback monitors; the window restarts whenever the routing
changes. With `shadow` on, routed requests the active version answered are replayed on the canary
afterwards (`deployment.shadow`); a replay yields the model to any client request that waits.
`add_routes` mounts `POST /v1/chat/completions` (JSON or SSE) and `GET /v1/models`; every
response names the version that served it in `x-sam-version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from deployment.canary import canary_state, routes_to_canary
from deployment.chat_request import ChatRequest, parse_request
from deployment.resident import Completion, ResidentModel
from deployment.serving_metrics import VersionMetrics, rss_mb
from deployment.shadow import Outcome, ShadowMirror, answer_then_mirror
from sam_brain.errors import BadRequest, SamBrainError
from sam_brain.store import Version
from sam_brain.versions import Versions

log = logging.getLogger(__name__)

ROUTED_MODEL = "sam-brain"  # the model id that follows active/canary routing
BASE_MODEL = "base"  # the model id of the base without any adapter
T = TypeVar("T")


@dataclass
class Routing:
    """Who serves: the active version, the canary and its share (read from the store)."""

    active: Version | None = None
    canary: Version | None = None
    percent: int = 0
    windows: dict[str, VersionMetrics] = field(default_factory=dict)

    def key(self) -> tuple[str | None, str | None, int]:
        return (
            self.active.version if self.active else None,
            self.canary.version if self.canary else None,
            self.percent,
        )


class ChatServer:
    """Serves chat completions from the active/canary versions of one registry."""

    def __init__(
        self,
        versions: Versions,
        base_model: str | Path,
        *,
        loader: Callable[[str], tuple[Any, Any]] | None = None,
        max_tokens_limit: int = 4096,
        default_max_tokens: int = 256,
        shadow: bool = False,
        shadow_queue: int = 8,
        prompt_cache_mb: float = 256.0,
    ) -> None:
        """Args:
        versions: The registry whose active and canary versions are served.
        base_model: Local base model directory, loaded on the first request.
        loader: Passed to `ResidentModel` (tests count loads with it).
        max_tokens_limit: Largest `max_tokens` a request may ask for.
        default_max_tokens: Budget when a request names none.
        shadow: Replay routed requests the active version answered on the canary.
        shadow_queue: Replays waiting at most; more are dropped and counted.
        prompt_cache_mb: Bound on the KV caches of recent prompts the resident model keeps.
        """
        self.versions = versions
        self.base_model = str(base_model)
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        self.lock = asyncio.Lock()  # one generation at a time: a swap mutates the shared model
        self.waiting = 0  # client requests and exclusive work waiting for the lock
        self.shadow = ShadowMirror(self._replay, shadow_queue) if shadow else None
        self._prompt_cache_mb = prompt_cache_mb
        self.resident: ResidentModel | None = None
        self._loader = loader
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-chat")
        self._routing = Routing()
        self._verified: set[tuple[str, str]] = set()
        self._state_lock = threading.Lock()

    def refresh(self) -> Routing:
        """Re-read active and canary from the store; a change starts new metrics windows."""
        active = self.versions.current()
        state = canary_state(self.versions)
        routing = Routing(
            active,
            self.versions.get(state.version) if state and state.percent > 0 else None,
            state.percent if state else 0,
        )
        with self._state_lock:
            if routing.key() != self._routing.key():
                log.info("serving changed: active=%s canary=%s at %s%%", *routing.key())
                self._routing = routing
            return self._routing

    def metrics(self) -> dict[str, VersionMetrics]:
        """The current metrics window per version name (copies; refreshed from the store first)."""
        routing = self.refresh()
        with self._state_lock:
            return {k: v.copy() for k, v in routing.windows.items()}

    def choose(self, request: ChatRequest) -> Version | None:
        """The version that serves `request` (None: the base). Raises BadRequest for unknown ids."""
        routing = self.refresh()
        if request.model in (None, "", ROUTED_MODEL):
            canary = routing.canary
            if canary and routes_to_canary(
                request.conversation_key, canary.version, routing.percent
            ):
                return canary
            return routing.active
        if request.model == BASE_MODEL:
            return None
        for v in (routing.active, routing.canary):
            if v is not None and v.version == request.model:
                return v
        raise BadRequest(
            f"unknown model {request.model!r}; available: {', '.join(self.model_ids())}"
        )

    def mirror_target(self, request: ChatRequest, served: Version | None) -> str | None:
        """The canary to replay `request` on in shadow mode, when the active version routed it."""
        routing = self._routing
        if self.shadow is None or routing.canary is None or routing.active is None:
            return None
        routed = request.model in (None, "", ROUTED_MODEL)
        stable = served is not None and served.version == routing.active.version
        return routing.canary.version if routed and stable else None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the model for a client request (a running shadow replay stops for it)."""
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    async def _replay(self, name: str, request: ChatRequest) -> Outcome:
        async with self.lock:
            routing = await asyncio.to_thread(self.refresh)
            if routing.canary is None or routing.canary.version != name:
                return "skipped"
            completion = await self.generate(
                routing.canary, request, cancelled=lambda: self.waiting > 0, shadow=True
            )
            return "preempted" if completion.finish_reason == "cancelled" else "mirrored"

    def model_ids(self) -> list[str]:
        routing = self.refresh()
        pinned = [v.version for v in (routing.active, routing.canary) if v is not None]
        return [ROUTED_MODEL, *pinned, BASE_MODEL]

    async def generate(
        self,
        version: Version | None,
        request: ChatRequest,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        shadow: bool = False,
    ) -> Completion:
        """Run one generation on the worker thread and record it in the version's window.

        The caller holds `self.lock` (so the adapter cannot change mid-stream). A `shadow`
        replay is recorded as such, and not at all when it was cancelled.
        """
        name = version.version if version else BASE_MODEL
        loop = asyncio.get_running_loop()
        start = time.perf_counter()

        def work() -> tuple[Completion, float]:
            resident = self._resident()
            if version is not None and (version.version, version.checksum) not in self._verified:
                self.versions.verify(version.version)
                self._verified.add((version.version, version.checksum))
            swap_ms = resident.use(version.adapter_path if version else None)
            completion = resident.generate(
                request.messages,
                request.max_tokens,
                request.temperature,
                request.top_p,
                on_text,
                cancelled,
            )
            return completion, swap_ms

        done: Completion | None = None
        swap_ms = 0.0
        try:
            out = await loop.run_in_executor(self._executor, work)
            done, swap_ms = out
            return out[0]
        finally:
            if not (shadow and done is not None and done.finish_reason == "cancelled"):
                tokens = done.completion_tokens if done is not None else 0
                with self._state_lock:
                    window = self._routing.windows.setdefault(name, VersionMetrics(name))
                    window.record(
                        (time.perf_counter() - start) * 1000,
                        done is None,
                        rss_mb(),
                        tokens=tokens,
                        seconds=done.seconds if done is not None and tokens else 0.0,
                        swap_ms=swap_ms,
                        shadow=shadow,
                    )

    async def run_exclusive(self, fn: Callable[[ResidentModel], T]) -> T:
        """Run `fn(resident)` on the worker thread between requests.

        For work that needs the model, such as the evaluation gate, so it shares the one copy of
        the base with serving instead of loading a second; the next request re-applies its adapter.
        """
        async with self.turn():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: fn(self._resident()))

    def _resident(self) -> ResidentModel:
        if self.resident is None:
            self.resident = ResidentModel(
                self.base_model, self._loader, prompt_cache_mb=self._prompt_cache_mb
            )
        return self.resident

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
        self._executor.shutdown(wait=True)


SERVER = web.AppKey("chat_server", ChatServer)


def add_routes(app: web.Application, server: ChatServer) -> None:
    """Mount the OpenAI-compatible chat routes of `server` on `app`."""
    app[SERVER] = server
    app.router.add_post("/v1/chat/completions", post_chat_completions)
    app.router.add_get("/v1/models", get_models)


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


async def get_models(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    ids = await asyncio.to_thread(server.model_ids)
    created = int(time.time())
    data = [{"id": i, "object": "model", "created": created, "owned_by": "sam-brain"} for i in ids]
    return web.json_response({"object": "list", "data": data})


async def post_chat_completions(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    try:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"request body is not valid JSON: {err}") from err
        chat = parse_request(body, server.max_tokens_limit, server.default_max_tokens)
    except BadRequest as err:
        return _error(400, str(err), "invalid_request_error")
    async with server.turn():
        try:
            version = await asyncio.to_thread(server.choose, chat)
        except SamBrainError as err:
            return _error(err.http_status, str(err), "invalid_request_error")
        name = version.version if version else BASE_MODEL
        mirror = server.mirror_target(chat, version)
        if chat.stream:
            response = await _stream(request, server, version, chat)
            return await answer_then_mirror(request, response, server.shadow, mirror, chat)
        try:
            completion = await server.generate(version, chat)
        except Exception as err:  # counted as an error in the version's metrics already
            log.exception("chat completion by %s failed", name)
            status = err.http_status if isinstance(err, SamBrainError) else 500
            return _error(max(status, 500), f"generation failed: {err}", "server_error")
    payload = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
        },
        "sam_version": name,
    }
    response = web.json_response(payload, headers={"x-sam-version": name})
    return await answer_then_mirror(request, response, server.shadow, mirror, chat)


async def _stream(
    request: web.Request, server: ChatServer, version: Version | None, chat: ChatRequest
) -> web.StreamResponse:
    """SSE: a role chunk, one chunk per text segment, a finish chunk, then `data: [DONE]`."""
    name = version.version if version else BASE_MODEL
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    stop = threading.Event()
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        doc = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(doc)}\n\n".encode()

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-sam-version": name,
        }
    )
    await response.prepare(request)

    def push(text: str) -> None:  # called on the worker thread
        loop.call_soon_threadsafe(queue.put_nowait, text)

    task = asyncio.ensure_future(server.generate(version, chat, push, stop.is_set))
    try:
        await response.write(chunk({"role": "assistant"}))
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await response.write(chunk({"content": getter.result()}))
                continue
            getter.cancel()
            while not queue.empty():  # segments queued before the worker finished
                await response.write(chunk({"content": queue.get_nowait()}))
            break
        try:
            completion = task.result()
            await response.write(chunk({}, completion.finish_reason))
        except Exception as err:
            log.exception("streamed chat completion failed")
            error = {"error": {"message": f"generation failed: {err}", "type": "server_error"}}
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        stop.set()  # the client left: stop generating, keep the lock until the worker is idle
        await asyncio.gather(task, return_exceptions=True)
        raise
    return response
