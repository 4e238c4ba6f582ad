"""What every handler shares: the app context under typed keys, JSON body parsing, one error middleware.

Split from the routes so that api.py and api_deploy.py both import it and neither imports the other.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from deployment.serving import ChatServer
from sam_brain.control.security import check_json
from sam_brain.errors import BadRequest, SamBrainError
from sam_brain.home import Home
from sam_brain.train.release import Exclusive
from sam_brain.train.scheduler import Coordinator

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    """What the handlers need from the daemon."""

    home: Home
    coordinator: Coordinator
    backend: str
    backend_why: str
    started: float = field(default_factory=time.time)
    distill: Callable[[list[object]], dict[str, Any]] | None = None
    chat: ChatServer | None = None  # the OpenAI-compatible endpoint (MLX hosts)
    chat_unavailable: str = "chat serving is off"
    base_ref: str = ""
    base_model_dir: str | None = None
    exclusive: Exclusive[Any] | None = None
    bind_host: str = ""  # where the daemon listens ("": the configured api.host)


CTX = web.AppKey("ctx", AppContext)
SELF_CACHE = web.AppKey("self_cache", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return web.json_response({"error": exc.reason}, status=exc.status)
        raise
    except SamBrainError as err:
        return web.json_response(
            {"error": str(err), "type": type(err).__name__}, status=err.http_status
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response({"error": "internal error; see the daemon log"}, status=500)


MAX_BODY = 256 * 1024  # a control request is small; /api/distill passes a larger bound


async def read_json(
    request: web.Request, allowed: set[str], max_bytes: int = MAX_BODY
) -> dict[str, Any]:
    """The request body as a JSON object with only `allowed` keys (an empty body is {}).

    Bounded: at most `max_bytes`, nested at most 32 deep, no NUL or lone surrogates (400/413).
    """
    declared = request.content_length or 0
    if declared > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=declared)
    raw = await request.read()
    if len(raw) > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=len(raw))
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from err
    except RecursionError as err:  # the C decoder's own depth guard
        raise BadRequest("the body is nested too deeply") from err
    check_json(body)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return body


def read_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be true or false")
    return value
