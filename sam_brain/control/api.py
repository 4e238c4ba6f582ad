"""The control API (aiohttp): status, training, versions, distillation intake.

`make_app(ctx)` builds the application; state lives under typed `web.AppKey`s; one middleware
turns every error into `{"error": ...}` with a status code: a malformed request is a 400 naming
the problem, never a 500. Blocking work (SQLite, LanceDB) runs in threads off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from deployment.serving import add_routes
from sam_brain.control.api_dash import add_dash_routes
from sam_brain.control.api_data import add_data_routes
from sam_brain.control.api_deploy import add_deploy_routes
from sam_brain.control.api_teach import add_teach_routes
from sam_brain.control.app import (
    CTX,
    SELF_CACHE,
    AppContext,
    error_middleware,
    read_bool,
    read_json,
)
from sam_brain.control.security import make_policy, security_middleware
from sam_brain.control.status import self_status
from sam_brain.errors import BadRequest

log = logging.getLogger(__name__)


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
    force = read_bool(body, "force")
    if not force:
        reason = await asyncio.to_thread(ctx.coordinator.why_not)
        if reason is not None:
            return web.json_response({"started": False, "reason": reason}, status=409)
    run_id, joined = await ctx.coordinator.start_run("forced" if force else "api", force=force)
    # A forced request while a run starts or trains joins that run (202 all the same).
    return web.json_response(
        {"started": not joined, "joined": joined, "run_id": run_id}, status=202
    )


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
    body = await read_json(request, {"records", "record"}, max_bytes=DISTILL_MAX_BODY)
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


DISTILL_MAX_BODY = 16 * 1024 * 1024


def make_app(ctx: AppContext, port: int | None = None) -> web.Application:
    """Build the aiohttp application for one daemon (security checks first, then errors).

    Raises:
        ConfigError: The API token cannot be created or its file is unusable.
    """
    api = ctx.home.config.api
    policy = make_policy(api, ctx.home.data, ctx.bind_host or api.host, port or api.port)
    app = web.Application(
        middlewares=[security_middleware(policy), error_middleware],
        client_max_size=DISTILL_MAX_BODY,
    )
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
    add_data_routes(app)
    add_deploy_routes(app)
    add_dash_routes(app)
    add_teach_routes(app)
    if ctx.chat is not None:
        add_routes(app, ctx.chat)
    else:
        app.router.add_post("/v1/chat/completions", chat_unavailable)
        app.router.add_get("/v1/models", chat_unavailable)
    return app


async def chat_unavailable(request: web.Request) -> web.Response:
    reason = request.app[CTX].chat_unavailable
    return web.json_response({"error": {"message": reason, "type": "unavailable"}}, status=503)
