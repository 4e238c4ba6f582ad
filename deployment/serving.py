"""OpenAI-compatible chat routes over a `ChatServer`: `POST /v1/chat/completions`, `GET /v1/models`.

`add_routes` mounts `POST /v1/chat/completions` (JSON or SSE, `deployment.serving_stream`) and
`GET /v1/models`; every response names the version that served it in `x-sam-version`. A request
is read within `max_request_mb` (413), admitted to the bounded queue (`deployment.chat_guard`:
503 with `Retry-After` when full or shutting down), then validated and its prompt rendered and
counted off the loop (`deployment.chat_request`, `deployment.prompt_limit`): every client mistake
answers 4xx with an OpenAI-shaped error and is never recorded in a version's window, so it cannot
roll a version back; only failures of generation itself (a damaged adapter, a crash) count as
errors (500). A request stops when its client leaves (499, nobody reads it), its deadline passes
(504, or 503 while still queued) or the server shuts down (503); the app's shutdown signal stops
them all before aiohttp waits for handlers, so SIGTERM is never held by a queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiohttp import web

from deployment.chat_guard import Overloaded, StopReason, Ticket, read_body, watch_client
from deployment.chat_log import Served, log_served
from deployment.chat_request import ChatRequest
from deployment.chat_server import BASE_MODEL, ROUTED_MODEL, ChatServer, Routing
from deployment.resident import Completion
from deployment.serving_stream import STOPPED_BY, stream_completion
from deployment.shadow import answer_then_mirror
from sam_brain.errors import BadRequest, SamBrainError

__all__ = ["BASE_MODEL", "ROUTED_MODEL", "SERVER", "ChatServer", "Routing", "add_routes"]

log = logging.getLogger(__name__)

SERVER = web.AppKey("chat_server", ChatServer)


def add_routes(app: web.Application, server: ChatServer) -> None:
    """Mount the OpenAI-compatible chat routes of `server` on `app`.

    The app's shutdown stops queued and running chat requests before aiohttp waits for
    handlers, so a stopping daemon is not held by them.
    """
    app[SERVER] = server
    app.router.add_post("/v1/chat/completions", post_chat_completions)
    app.router.add_get("/v1/models", get_models)

    async def stop_chat(app: web.Application) -> None:
        server.shutdown()

    app.on_shutdown.append(stop_chat)


def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, headers=headers)


def _overloaded(err: Overloaded) -> web.Response:
    return _error(503, str(err), "server_overloaded", {"Retry-After": str(err.retry_after)})


async def get_models(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    models = await asyncio.to_thread(server.models)
    created = int(time.time())
    # Beside OpenAI's fields: the training and the version each id serves now.
    data = [{**m, "object": "model", "created": created, "owned_by": "sam-brain"} for m in models]
    return web.json_response({"object": "list", "data": data})


async def post_chat_completions(request: web.Request) -> web.StreamResponse:
    """Read, admit, validate, then generate; see the module docstring for the order and codes."""
    server = request.app[SERVER]
    try:
        raw = await read_body(request, server.max_request_bytes)
        ticket = server.admission.admit()
    except Overloaded as err:
        server.refused["overloaded"] += 1
        return _overloaded(err)
    except BadRequest as err:
        server.refused["bad_request"] += 1
        return _error(err.http_status, str(err), "invalid_request_error")
    watcher = asyncio.ensure_future(watch_client(request, ticket))
    try:
        return await _answer(request, server, raw, ticket)
    except asyncio.CancelledError:  # aiohttp may cancel a handler whose client left, or at shutdown
        reason: StopReason = "shutdown" if server.admission.closing else "client_gone"
        server.refused[reason] += 1
        ticket.stop(reason)  # the worker stops at its next poll
        raise
    finally:
        watcher.cancel()
        server.admission.release(ticket)


async def _answer(
    request: web.Request, server: ChatServer, raw: bytes, ticket: Ticket
) -> web.StreamResponse:
    try:
        chat = await server.check(raw)
    except BadRequest as err:
        server.refused["bad_request"] += 1
        return _error(err.http_status, str(err), "invalid_request_error")
    except SamBrainError as err:  # the base model's tokenizer is unreadable: the server's fault
        return _error(max(err.http_status, 500), str(err), "server_error")
    try:
        async with server.turn(ticket):
            try:
                version = await asyncio.to_thread(server.choose, chat)
            except BadRequest as err:
                server.refused["bad_request"] += 1
                return _error(err.http_status, str(err), "invalid_request_error")
            name = version.version if version else BASE_MODEL
            mirror = server.mirror_target(chat, version)
            cid = f"chatcmpl-{uuid.uuid4().hex}"
            if chat.stream:
                response = await stream_completion(
                    request,
                    name,
                    lambda push: server.generate(version, chat, push, ticket.cancelled),
                    ticket,
                    cid,
                    lambda done: log_served(server.chat_log, _served(cid, chat, name, done)),
                )
                if ticket.reason is not None:  # ended early by its deadline or a shutdown
                    server.refused[ticket.reason] += 1
                return await answer_then_mirror(request, response, server.shadow, mirror, chat)
            try:
                completion = await server.generate(version, chat, cancelled=ticket.cancelled)
            except Exception as err:  # counted as an error in the version's metrics already
                log.exception("chat completion by %s failed", name)
                status = err.http_status if isinstance(err, SamBrainError) else 500
                return _error(max(status, 500), f"generation failed: {err}", "server_error")
    except Overloaded as err:
        server.refused[ticket.reason or "overloaded"] += 1
        return _overloaded(err)
    if completion.finish_reason == "cancelled":
        return _stopped(server, ticket, completion)
    await log_served(server.chat_log, _served(cid, chat, name, completion))
    payload = {
        "id": cid,
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


def _served(cid: str, chat: ChatRequest, name: str, completion: Completion) -> Served:
    """What the conversation log keeps of one answered request."""
    return Served(
        id=cid,
        model=chat.model or ROUTED_MODEL,
        version=name,
        messages=chat.messages,
        answer=completion.text,
        finish_reason=completion.finish_reason,
        stream=chat.stream,
        time=time.time(),
    )


def _stopped(server: ChatServer, ticket: Ticket, completion: Completion) -> web.Response:
    """The answer to a generation stopped before its end (the client may be gone)."""
    reason = ticket.reason or "client_gone"
    server.refused[reason] += 1
    done = f" after {completion.completion_tokens} tokens"
    if reason == "deadline":
        return _error(504, STOPPED_BY["deadline"][1] + done, "timeout")
    if reason == "shutdown":
        retry = {"Retry-After": str(server.admission.retry_after())}
        return _error(503, STOPPED_BY["shutdown"][1] + done, "server_overloaded", retry)
    return _error(499, "the client closed the connection" + done, "cancelled")
