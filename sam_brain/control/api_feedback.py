"""`POST /v1/feedback` (a rating, correction or regeneration choice) and `GET /api/feedback`.

Feedback sits under /v1 beside the completions it names, so a chat client gives it with the same
base URL and key it chats with (the `openai` SDK's `client.post("/feedback", ...)`); off-loopback
a chat key from `api.chat_keys_file` is enough, as for chat. Unlike chat it changes training
data, so it needs a bearer token (the API token or a chat key) on loopback too
(`security.TOKEN_ROUTES`), besides the Host, Origin and JSON rules of every mutation. Errors use
the OpenAI shape the chat clients parse. The statistics are a read under /api, like the others.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from sam_brain.control.app import CTX, read_json
from sam_brain.control.feedback import FIELDS, apply_feedback, feedback_stats, parse_feedback
from sam_brain.errors import SamBrainError

FEEDBACK_MAX_BODY = 1024 * 1024  # a corrected answer can be long; a control body is 256 KB


async def post_feedback(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    try:
        fb = parse_feedback(await read_json(request, FIELDS, max_bytes=FEEDBACK_MAX_BODY))
        if ctx.chat is None:  # nothing is served, so no completion can be named
            return _error(503, ctx.chat_unavailable, "unavailable")
        outcome = await asyncio.to_thread(apply_feedback, ctx.home, ctx.chat.chat_log, fb)
    except SamBrainError as err:
        kind = "not_found" if err.http_status == 404 else "invalid_request_error"
        return _error(err.http_status, str(err), kind)
    return web.json_response({"object": "feedback", **outcome.to_dict()})


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


async def get_feedback(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(await asyncio.to_thread(feedback_stats, ctx.home))


def add_feedback_routes(app: web.Application) -> None:
    app.router.add_post("/v1/feedback", post_feedback)
    app.router.add_get("/api/feedback", get_feedback)
