"""The control API (aiohttp): status, training, versions, distillation intake.

`make_app(ctx)` builds the application; state lives under typed `web.AppKey`s; one middleware
turns every error into `{"error": ...}` with a status code: a malformed request is a 400 naming
the problem, never a 500. Blocking work (SQLite, LanceDB) runs in threads off the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from deployment.serving import ChatServer, add_routes
from sam_brain.errors import BadRequest, SamBrainError
from sam_brain.home import Home
from sam_brain.release import Exclusive
from sam_brain.scheduler import Coordinator
from sam_brain.status import self_status

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


async def read_json(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    """The request body as a JSON object with only `allowed` keys (an empty body is {})."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from err
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return body


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be true or false")
    return value


def daemon_info(ctx: AppContext) -> dict[str, Any]:
    return {
        "uptime_seconds": round(time.time() - ctx.started, 1),
        "backend": ctx.backend,
        "backend_reason": ctx.backend_why,
        "training": ctx.coordinator.training,
    }


SELF_TTL_S = 1.0  # /api/self is polled by scripts and dashboards: compute it at most once a second


async def get_self(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    cache = request.app[SELF_CACHE]
    now = time.monotonic()
    task = cache.get("task")
    if task is None or (task.done() and now - cache.get("at", 0.0) > SELF_TTL_S):
        # One computation serves every request that arrives while it runs or within the TTL.
        task = asyncio.ensure_future(
            asyncio.to_thread(self_status, ctx.home, daemon=daemon_info(ctx))
        )
        cache["task"], cache["at"] = task, now
    doc = dict(await asyncio.shield(task))
    doc["status"] = {**doc["status"], **daemon_info(ctx)}
    return web.json_response(doc)


async def get_health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response({"ok": True, "uptime_seconds": round(time.time() - ctx.started, 1)})


def _training_doc(ctx: AppContext) -> dict[str, Any]:
    coord = ctx.coordinator
    current = None
    if coord.training and coord.job is not None and coord.job.run is not None:
        current = ctx.home.store.get_run(coord.job.run.run_id).to_dict()
    return {
        "training": coord.training,
        "current": current,
        "blocked_by": None if coord.training else coord.why_not(),
        "runs": [r.to_dict() for r in ctx.home.store.runs(10)],
    }


async def get_training(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(await asyncio.to_thread(_training_doc, ctx))


async def post_train(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await read_json(request, {"force"})
    force = _bool(body, "force")
    if not force:
        reason = await asyncio.to_thread(ctx.coordinator.why_not)
        if reason is not None:
            return web.json_response({"started": False, "reason": reason}, status=409)
    ctx.coordinator.start_run("forced" if force else "api", force=force)
    run_id = await ctx.coordinator.wait_started()
    return web.json_response({"started": True, "run_id": run_id}, status=202)


async def post_cancel(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    await read_json(request, set())
    cancelled = await ctx.coordinator.cancel()
    return web.json_response({"cancelled": cancelled})


async def get_versions(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    versions = await asyncio.to_thread(ctx.home.store.versions)
    return web.json_response({"versions": [v.to_dict() for v in versions]})


async def get_current(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    v = await asyncio.to_thread(ctx.home.versions.current)
    return web.json_response({"version": v.to_dict() if v else None})


async def post_distill(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await read_json(request, {"records", "record"})
    if "record" in body:
        records: Any = [body["record"]]
    else:
        records = body.get("records")
    if not isinstance(records, list) or not records:
        raise BadRequest("send {'records': [...]} (a non-empty list) or {'record': {...}}")
    if ctx.distill is None:
        raise BadRequest("the distillation store is not enabled")
    result = await asyncio.to_thread(ctx.distill, records)
    status = 200 if not result.get("rejected") else 207 if result.get("accepted") else 400
    return web.json_response(result, status=status)


async def get_data_stats(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(await asyncio.to_thread(ctx.home.pool.stats))


def make_app(ctx: AppContext) -> web.Application:
    """Build the aiohttp application for one daemon."""
    app = web.Application(middlewares=[error_middleware], client_max_size=16 * 1024 * 1024)
    app[CTX] = ctx
    app[SELF_CACHE] = {}
    app.router.add_get("/api/self", get_self)
    app.router.add_get("/api/health", get_health)
    app.router.add_get("/api/training", get_training)
    app.router.add_post("/api/train", post_train)
    app.router.add_post("/api/train/cancel", post_cancel)
    app.router.add_get("/api/versions", get_versions)
    app.router.add_get("/api/versions/current", get_current)
    app.router.add_post("/api/distill", post_distill)
    app.router.add_get("/api/data/stats", get_data_stats)
    from sam_brain.api_deploy import add_deploy_routes

    add_deploy_routes(app)
    if ctx.chat is not None:
        add_routes(app, ctx.chat)
    else:
        app.router.add_post("/v1/chat/completions", chat_unavailable)
        app.router.add_get("/v1/models", chat_unavailable)
    return app


async def chat_unavailable(request: web.Request) -> web.Response:
    reason = request.app[CTX].chat_unavailable
    return web.json_response({"error": {"message": reason, "type": "unavailable"}}, status=503)
