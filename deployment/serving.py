"""OpenAI-compatible chat serving of the active and canary adapters over one resident base model.

`ResidentModel` loads the base once (mlx-lm) and swaps LoRA adapters in place: the LoRA layers
are rebuilt only when an adapter's structure (layers, keys, rank, scale) differs from the one
applied, otherwise only the `lora_a`/`lora_b` tensors are loaded (`model.load_weights(...,
strict=False)`), so a swap costs milliseconds, not a model load (mlx_lm.server reloads the whole
model instead). `ChatServer` reads the active version and the canary from the store on every
request (one small query), routes each conversation sticky-per-key (`canary.routes_to_canary`),
runs generation on its one worker thread (MLX state is per thread, and the loop must never
block), serialises requests with an asyncio lock (a swap mutates the shared model) and keeps a
`VersionMetrics` window per version for the canary and rollback monitors; the window restarts
whenever the routing changes. `add_routes` mounts `POST /v1/chat/completions` (JSON or SSE) and
`GET /v1/models`; every response names the version that served it in `x-sam-version`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from deployment.canary import VersionMetrics, canary_state, routes_to_canary
from deployment.versions import Versions
from sam_brain.errors import BadRequest, ModelUnavailable, SamBrainError
from sam_brain.protocols import Message
from sam_brain.store import Version

log = logging.getLogger(__name__)

ROUTED_MODEL = "sam-brain"  # the model id that follows active/canary routing
BASE_MODEL = "base"  # the model id of the base without any adapter
ROLES = ("system", "user", "assistant", "tool")
T = TypeVar("T")


@dataclass
class Completion:
    """One generation: text, why it stopped ("stop": end of turn, "length": budget) and sizes."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ResidentModel:
    """A base model kept in memory, with LoRA adapters swapped in and out in place."""

    def __init__(
        self,
        base_model: str | Path,
        loader: Callable[[str], tuple[Any, Any]] | None = None,
        cache_size: int = 4,
    ) -> None:
        """Load the base model (once).

        Args:
            base_model: A local mlx-lm model directory.
            loader: `mlx_lm.load`-like function; injectable so tests can count base loads.
            cache_size: Adapters whose weights are kept in memory (least recently used dropped).

        Raises:
            ModelUnavailable: The base model cannot be loaded.
        """
        from mlx_lm import load

        self.base_model = str(base_model)
        try:
            loaded: Any = (loader or load)(self.base_model)
        except (OSError, ValueError) as err:
            raise ModelUnavailable(f"cannot load base model {self.base_model}: {err}") from err
        self.model: Any = loaded[0]
        self.tokenizer: Any = loaded[1]
        self.model.eval()
        self.applied: str | None = None
        self.last_swap_ms = 0.0
        self._structure: str | None = None
        self._cache: OrderedDict[str, tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()
        self._cache_size = cache_size

    def use(self, adapter_dir: str | None) -> float:
        """Apply the adapter in `adapter_dir` (None: the bare base); returns the swap time in ms."""
        if adapter_dir == self.applied:
            return 0.0
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers

        start = time.perf_counter()
        self.applied = None  # until the swap completes, nothing is known to be applied
        try:
            if adapter_dir is not None:
                config, weights = self._adapter(adapter_dir)
                structure = json.dumps(
                    [config["num_layers"], config["lora_parameters"], config["fine_tune_type"]],
                    sort_keys=True,
                )
                if structure != self._structure or not self._fits(weights):
                    self._strip()
                    linear_to_lora_layers(
                        self.model,
                        int(config["num_layers"]),
                        config["lora_parameters"],
                        use_dora=config["fine_tune_type"] == "dora",
                    )
                    self._structure = structure
                    if not self._fits(weights):
                        raise BadRequest(f"adapter {adapter_dir} does not fit {self.base_model}")
                self.model.load_weights(list(weights.items()), strict=False)
                self.model.eval()  # new LoRA modules start in training mode (dropout on)
            else:
                self._strip()
        except Exception:
            self._strip()  # never leave a half-swapped adapter behind
            raise
        mx.eval(dict(tree_flatten(self.model.parameters())))
        self.applied = adapter_dir
        self.last_swap_ms = (time.perf_counter() - start) * 1000
        return self.last_swap_ms

    def generate(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Completion:
        """Complete `messages` (chat template applied) with the adapter currently in use.

        Args:
            messages: The conversation so far.
            max_tokens: Token budget of the answer.
            temperature: 0 is greedy.
            top_p: Nucleus sampling share (1: off).
            on_text: Called with each decoded text segment, for streaming.
            cancelled: Polled between tokens; True stops early (finish_reason "cancelled").
        """
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)
        parts: list[str] = []
        finish, tokens = "length", 0
        for response in stream_generate(
            self.model, self.tokenizer, prompt, max_tokens=max_tokens, sampler=sampler
        ):
            if response.text:
                parts.append(response.text)
                if on_text is not None:
                    on_text(response.text)
            tokens = int(response.generation_tokens)
            finish = response.finish_reason or finish
            if cancelled is not None and cancelled():
                finish = "cancelled"
                break
        return Completion("".join(parts), finish, len(prompt), tokens)

    def _adapter(self, adapter_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if adapter_dir in self._cache:
            self._cache.move_to_end(adapter_dir)
            return self._cache[adapter_dir]
        import mlx.core as mx

        path = Path(adapter_dir)
        try:
            config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
            tensors: Any = mx.load(str(path / "adapters.safetensors"))
            weights = dict(tensors)
        except (OSError, ValueError) as err:
            raise BadRequest(f"cannot read adapter {adapter_dir}: {err}") from err
        config.setdefault("fine_tune_type", "lora")
        if config["fine_tune_type"] not in ("lora", "dora"):
            raise BadRequest(f"adapter {adapter_dir}: {config['fine_tune_type']} is not an adapter")
        self._cache[adapter_dir] = (config, weights)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return config, weights

    def _fits(self, weights: dict[str, Any]) -> bool:
        """The adapter names exactly the LoRA tensors the model has, with the same shapes."""
        from mlx.utils import tree_flatten

        flat: Any = tree_flatten(self.model.parameters())
        params = {k: v for k, v in flat if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")}
        return set(params) == set(weights) and all(
            params[k].shape == w.shape for k, w in weights.items()
        )

    def _strip(self) -> None:
        """Put the original layers back (also DoRA ones, which mlx-lm's remove_lora_layers skips)."""
        from mlx.utils import tree_unflatten

        originals = [
            (name, getattr(m, "linear", None) or getattr(m, "embedding", None))
            for name, m in self.model.named_modules()
            if hasattr(m, "lora_a")
        ]
        if originals:
            self.model.update_modules(tree_unflatten(originals))
        self._structure = None


@dataclass
class ChatRequest:
    """A validated `/v1/chat/completions` body."""

    messages: list[Message]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stream: bool = False
    model: str | None = None
    conversation_key: str = ""


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


def parse_request(
    body: Any, max_tokens_limit: int = 4096, default_max_tokens: int = 256
) -> ChatRequest:
    """Validate an OpenAI chat body; unknown OpenAI fields are ignored, unsupported ones refused.

    Raises:
        BadRequest: With a message naming the offending field.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list")
    messages = [_message(i, m) for i, m in enumerate(raw)]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("'max_tokens' must be an integer")
    if not 1 <= max_tokens <= max_tokens_limit:
        raise BadRequest(f"'max_tokens' must be within 1..{max_tokens_limit}")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 1e-9, 1.0)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    if body.get("n", 1) != 1:
        raise BadRequest("'n' must be 1: one choice per request")
    if body.get("stop") not in (None, "", []):
        raise BadRequest("'stop' sequences are not supported")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string")
    key = body.get("conversation_id") or body.get("user")
    if key is not None and not isinstance(key, str):
        raise BadRequest("'user' and 'conversation_id' must be strings")
    if not key:  # no id: the first user message identifies the conversation
        first = next((m for m in messages if m["role"] == "user"), messages[0])
        key = json.dumps(first.get("content"))
    return ChatRequest(messages, max_tokens, temperature, top_p, stream, model, key)


def _message(i: int, m: Any) -> Message:
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise BadRequest(f"messages[{i}] must be an object with a role in {', '.join(ROLES)}")
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: only text is understood
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise BadRequest(f"messages[{i}].content: only text parts are supported")
        content = "".join(str(p.get("text", "")) for p in content)
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string")
    out: Message = {"role": m["role"], "content": content or ""}
    for extra in ("tool_calls", "tool_call_id", "name"):
        if extra in m:
            out[extra] = m[extra]
    return out


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"'{key}' must be a number within {low:g}..{high:g}")
    return float(value)


def rss_mb() -> float:
    """Resident memory of this process in MB (psutil; peak RSS where psutil is missing)."""
    try:
        import psutil  # type: ignore[import-untyped]

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


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
    ) -> None:
        """Args:
        versions: The registry whose active and canary versions are served.
        base_model: Local base model directory, loaded on the first request.
        loader: Passed to `ResidentModel` (tests count loads with it).
        max_tokens_limit: Largest `max_tokens` a request may ask for.
        default_max_tokens: Budget when a request names none.
        """
        self.versions = versions
        self.base_model = str(base_model)
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        self.lock = asyncio.Lock()  # one generation at a time: a swap mutates the shared model
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
            return {k: VersionMetrics(**vars(v)) for k, v in routing.windows.items()}

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
    ) -> Completion:
        """Run one generation on the worker thread and record it in the version's window.

        The caller holds `self.lock` (so the adapter cannot change mid-stream).
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

        error = True
        swap_ms = 0.0
        try:
            completion, swap_ms = await loop.run_in_executor(self._executor, work)
            error = False
            return completion
        finally:
            latency = (time.perf_counter() - start) * 1000
            with self._state_lock:
                window = self._routing.windows.setdefault(name, VersionMetrics(name))
                window.record(latency, error, rss_mb())
                if swap_ms:
                    window.swaps += 1
                    window.swap_ms_total += swap_ms

    async def run_exclusive(self, fn: Callable[[ResidentModel], T]) -> T:
        """Run `fn(resident)` on the worker thread between requests.

        For work that needs the model, such as the evaluation gate, so it shares the one copy of
        the base with serving instead of loading a second; the next request re-applies its adapter.
        """
        async with self.lock:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: fn(self._resident()))

    def _resident(self) -> ResidentModel:
        if self.resident is None:
            self.resident = ResidentModel(self.base_model, self._loader)
        return self.resident

    def close(self) -> None:
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
    async with server.lock:
        try:
            version = await asyncio.to_thread(server.choose, chat)
        except SamBrainError as err:
            return _error(err.http_status, str(err), "invalid_request_error")
        name = version.version if version else BASE_MODEL
        if chat.stream:
            return await _stream(request, server, version, chat)
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
        },
        "sam_version": name,
    }
    return web.json_response(payload, headers={"x-sam-version": name})


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
