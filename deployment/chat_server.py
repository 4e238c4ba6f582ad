"""The chat server: one resident base model serving the active and canary adapters.

`deployment.resident.ResidentModel` loads the base once and swaps LoRA adapters in place, so a
swap costs milliseconds, not a model load. `ChatServer` reads the active version and the canary
from the store on every request (one small query), routes each conversation sticky-per-key
(`canary.routes_to_canary`), runs generation on its one worker thread (MLX state is per thread,
and the loop must never block), serialises requests with an asyncio lock (a swap mutates the
shared model) and keeps a `VersionMetrics` window per version for the canary and rollback
monitors; the window restarts whenever the routing changes. With `shadow` on, routed requests the
active version answered are replayed on the canary afterwards (`deployment.shadow`); a replay
yields the model to any client request that waits. Requests are admitted through a bounded
queue (`deployment.chat_guard`) and validated and counted on a thread of their own (`check`) before
they wait for the model; `shutdown` stops the queued and running ones. The HTTP routes are in
`deployment.serving`.

Every named training that shares the base is served too (`lineages`): `model: "sam"` (or the
older `sam-brain`) routes to the default training's active/canary versions, `"sam-NAME"` to
NAME's, each with its own routing, canary stickiness and metrics windows; switching between them
is an adapter swap on the one resident base.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from deployment.canary import canary_state, routes_to_canary
from deployment.chat_guard import Admission, Overloaded, Ticket
from deployment.chat_log import ChatLog
from deployment.chat_request import ChatRequest, decode_body, parse_request
from deployment.prompt_limit import PromptLimit
from deployment.resident import Completion, ResidentModel
from deployment.serving_metrics import VersionMetrics, rss_mb
from deployment.shadow import Outcome, ShadowMirror
from sam_brain.config import DEFAULT_TRAINING
from sam_brain.errors import BadRequest
from sam_brain.store import Version
from sam_brain.trainings import MODEL_PREFIX, model_id
from sam_brain.versions import Versions

log = logging.getLogger(__name__)

ROUTED_MODEL = "sam-brain"  # the default training's routed model id (also "sam")
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
        max_prompt_tokens: int = 0,
        max_request_mb: float = 8.0,
        request_timeout_s: float = 300.0,
        max_queued: int = 8,
        chat_log: ChatLog | None = None,
        lineages: Mapping[str, Versions] | None = None,
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
        max_prompt_tokens: Longest prompt accepted (0: the model's context).
        max_request_mb: Largest request body accepted.
        request_timeout_s: Each request's deadline, queueing included (0: none).
        max_queued: Requests that may wait behind the one generating; more get 503.
        chat_log: Where served completions are logged (None: not logged).
        lineages: Named trainings' registries served on the same base, by training name.
        """
        self.versions = versions
        self.lineages = {DEFAULT_TRAINING: versions, **(lineages or {})}
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
        self._routings: dict[str, Routing] = {}
        self._verified: set[tuple[str, str]] = set()
        self._state_lock = threading.Lock()
        self.max_request_bytes = int(max_request_mb * 2**20)
        self.admission = Admission(max_queued, request_timeout_s)
        self.prompts = PromptLimit(self.base_model, max_prompt_tokens)
        # Validation has its own thread: a bad request is answered while the model generates.
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-chat-check")
        self.refused: Counter[str] = Counter()  # requests not answered in full, by why
        self.chat_log = chat_log

    def refresh(self, training: str = DEFAULT_TRAINING) -> Routing:
        """Re-read a training's active and canary from the store; a change starts new metrics
        windows (of that training only)."""
        versions = self.lineages[training]
        active = versions.current()
        state = canary_state(versions)
        routing = Routing(
            active,
            versions.get(state.version) if state and state.percent > 0 else None,
            state.percent if state else 0,
        )
        with self._state_lock:
            current = self._routings.setdefault(training, Routing())
            if routing.key() != current.key():
                log.info(
                    "serving %s changed: active=%s canary=%s at %s%%",
                    model_id(training),
                    *routing.key(),
                )
                self._routings[training] = routing
            return self._routings[training]

    def metrics(self) -> dict[str, VersionMetrics]:
        """The current metrics window per version name, of every training (copies; refreshed
        from the store first). Version names never repeat across trainings."""
        out: dict[str, VersionMetrics] = {}
        for training in self.lineages:
            routing = self.refresh(training)
            with self._state_lock:
                out.update({k: v.copy() for k, v in routing.windows.items()})
        return out

    def routed_training(self, model: str | None) -> str | None:
        """The training a routed model id names ("sam", "sam-brain", "sam-NAME"), else None."""
        if model in (None, "", ROUTED_MODEL, DEFAULT_TRAINING):
            return DEFAULT_TRAINING
        name = (model or "").removeprefix(MODEL_PREFIX)
        if (model or "").startswith(MODEL_PREFIX) and name in self.lineages:
            return name
        return None

    def choose(self, request: ChatRequest) -> Version | None:
        """The version that serves `request` (None: the base). Raises BadRequest for unknown ids."""
        training = self.routed_training(request.model)
        if training is not None:
            routing = self.refresh(training)
            canary = routing.canary
            if canary and routes_to_canary(
                request.conversation_key, canary.version, routing.percent
            ):
                return canary
            return routing.active
        if request.model == BASE_MODEL:
            return None
        for name in self.lineages:
            routing = self.refresh(name)
            for v in (routing.active, routing.canary):
                if v is not None and v.version == request.model:
                    return v
        raise BadRequest(
            f"unknown model {request.model!r}; available: {', '.join(self.model_ids())}"
        )

    def mirror_target(self, request: ChatRequest, served: Version | None) -> str | None:
        """The canary to replay `request` on in shadow mode, when the active version routed it."""
        training = self.routed_training(request.model)
        routing = self._routings.get(training or "", Routing())
        if self.shadow is None or routing.canary is None or routing.active is None:
            return None
        routed = training is not None
        stable = served is not None and served.version == routing.active.version
        return routing.canary.version if routed and stable else None

    @contextlib.asynccontextmanager
    async def turn(self, ticket: Ticket | None = None) -> AsyncIterator[None]:
        """Hold the model for a client request (a running shadow replay stops for it).

        Raises:
            Overloaded: `ticket` was stopped (shutdown, deadline, client gone) while waiting.
        """
        self.waiting += 1
        try:
            await (self.lock.acquire() if ticket is None else self._acquire(ticket))
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.lock.release()

    async def _acquire(self, ticket: Ticket) -> None:
        acquire = asyncio.ensure_future(self.lock.acquire())
        stopped = asyncio.ensure_future(ticket.stopped.wait())
        waited = False
        try:
            await asyncio.wait(
                {acquire, stopped}, timeout=ticket.remaining(), return_when=asyncio.FIRST_COMPLETED
            )
            waited = True
        finally:
            stopped.cancel()
            if not acquire.done():
                acquire.cancel()  # a cancelled Lock.acquire never holds the lock
            held = acquire.done() and not acquire.cancelled()
            if held and (not waited or ticket.cancelled()):
                self.lock.release()  # got it just as this request was stopped or cancelled
                held = False
        if held:
            return
        ticket.cancelled()  # records "deadline" when the wait timed out
        reason = ticket.reason or "deadline"
        seconds = time.monotonic() - ticket.started
        raise Overloaded(
            f"gave up waiting for the model after {seconds:.1f} s ({reason.replace('_', ' ')})",
            self.admission.retry_after(),
        )

    async def check(self, raw: bytes) -> ChatRequest:
        """Decode and validate a body and count its prompt, on the validation thread.

        Raises:
            BadRequest: Anything wrong with it, named.
        """

        def work() -> ChatRequest:
            body = decode_body(raw)
            chat = parse_request(body, self.max_tokens_limit, self.default_max_tokens)
            chat.prompt = self.prompts.prompt_ids(chat.messages, chat.max_tokens)
            return chat

        return await asyncio.get_running_loop().run_in_executor(self._checker, work)

    async def _replay(self, name: str, request: ChatRequest) -> Outcome:
        async with self.lock:
            training = self.routed_training(request.model) or DEFAULT_TRAINING
            routing = await asyncio.to_thread(self.refresh, training)
            if routing.canary is None or routing.canary.version != name:
                return "skipped"
            completion = await self.generate(
                routing.canary,
                request,
                cancelled=lambda: self.waiting > 0 or self.admission.closing,
                shadow=True,
            )
            return "preempted" if completion.finish_reason == "cancelled" else "mirrored"

    def model_ids(self) -> list[str]:
        return [str(m["id"]) for m in self.models()]

    def models(self) -> list[dict[str, Any]]:
        """Every model id served: each training's routed id with the version it serves (and
        its canary), the pinned versions, then the bare base."""
        routed: list[dict[str, Any]] = []
        pinned: list[dict[str, Any]] = []
        for training in self.lineages:
            routing = self.refresh(training)
            ids = [ROUTED_MODEL, DEFAULT_TRAINING] if training == DEFAULT_TRAINING else []
            for mid in ids or [model_id(training)]:
                routed.append(
                    {
                        "id": mid,
                        "training": training,
                        "version": routing.active.version if routing.active else BASE_MODEL,
                        "canary": routing.canary.version if routing.canary else None,
                        "canary_percent": routing.percent if routing.canary else 0,
                    }
                )
            for v in (routing.active, routing.canary):
                if v is not None:
                    pinned.append({"id": v.version, "training": training, "version": v.version})
        return [*routed, *pinned, {"id": BASE_MODEL, "training": None, "version": BASE_MODEL}]

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
        replay is recorded as such, and not at all when it was cancelled; a request stopped
        early (its handler cancelled, or its ticket) is recorded as cancelled, never as an error.
        """
        name = version.version if version else BASE_MODEL
        loop = asyncio.get_running_loop()
        start = time.perf_counter()

        def work() -> tuple[Completion, float]:
            resident = self._resident()
            if version is not None and (version.version, version.checksum) not in self._verified:
                self.lineages[version.training].verify(version.version)
                self._verified.add((version.version, version.checksum))
            swap_ms = resident.use(version.adapter_path if version else None)
            completion = resident.generate(
                request.messages,
                request.max_tokens,
                request.temperature,
                request.top_p,
                on_text,
                cancelled,
                prompt=request.prompt,
            )
            return completion, swap_ms

        done: Completion | None = None
        swap_ms = 0.0
        interrupted = False
        try:
            out = await loop.run_in_executor(self._executor, work)
            done, swap_ms = out
            return out[0]
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            stopped = interrupted or (done is not None and done.finish_reason == "cancelled")
            if not (shadow and stopped):
                tokens = done.completion_tokens if done is not None else 0
                # A version's window is its training's; the bare base's is the default's.
                training = version.training if version is not None else DEFAULT_TRAINING
                with self._state_lock:
                    routing = self._routings.setdefault(training, Routing())
                    window = routing.windows.setdefault(name, VersionMetrics(name))
                    window.record(
                        (time.perf_counter() - start) * 1000,
                        done is None and not interrupted,
                        rss_mb(),
                        tokens=tokens,
                        seconds=done.seconds if done is not None and tokens else 0.0,
                        swap_ms=swap_ms,
                        shadow=shadow,
                        cancelled=stopped,
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
            if self.admission.closing:  # loaded by work queued before the shutdown
                self.resident.halt()
        return self.resident

    def shutdown(self) -> None:
        """Refuse new requests and stop the queued and running ones (the daemon's SIGTERM).

        The resident model is halted too, so work queued on it by `run_exclusive` (the gate)
        raises at its next step instead of holding the worker thread past the shutdown.
        """
        self.admission.close()
        if self.resident is not None:
            self.resident.halt()

    def close(self) -> None:
        self.shutdown()
        if self.shadow is not None:
            self.shadow.close()
        self._checker.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
