"""The teach routes: `POST /api/teach` starts a job, `GET /api/teach` its status (like
`/api/training`), `POST /api/teach/cancel`, `GET /api/teach/stats` the spend per day and job.

The app's middleware applies the token, Host and Origin rules to these as to every route.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from sam_brain.control.app import CTX, read_json
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.slot import TeachSlot

TEACH = web.AppKey("teach", TeachSlot)
FIELDS = {"kind", "source", "count", "training", "options"}


async def post_teach(request: web.Request) -> web.Response:
    body = await read_json(request, FIELDS)
    spec = JobSpec.from_dict(body)
    slot = request.app[TEACH]
    status = await asyncio.to_thread(slot.start, spec)
    return web.json_response({"started": True, "job_id": status.job_id}, status=202)


async def get_teach(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(request.app[TEACH].status))


async def post_cancel(request: web.Request) -> web.Response:
    await read_json(request, set())
    return web.json_response({"cancelled": request.app[TEACH].cancel()})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(request.app[TEACH].stats))


def add_teach_routes(app: web.Application) -> None:
    """The routes and the slot; the slot's job is cancelled when the app shuts down."""
    ctx = app[CTX]
    app[TEACH] = TeachSlot(ctx.home, ctx.exclusive)

    async def slot_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(app[TEACH].close)

    app.cleanup_ctx.append(slot_ctx)
    app.router.add_post("/api/teach", post_teach)
    app.router.add_get("/api/teach", get_teach)
    app.router.add_post("/api/teach/cancel", post_cancel)
    app.router.add_get("/api/teach/stats", get_stats)
