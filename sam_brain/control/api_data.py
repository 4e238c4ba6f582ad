"""`POST /api/data/forget`: `samctl data forget` over HTTP (a mutation: JSON body, confirmed).

Body: any of `source`, `session`, `project`, `before` (YYYY-MM-DD or ISO-8601), `match`
(strings), `dry_run` (bool) and `confirm` (must be true unless `dry_run`). The answer is the
forget report (counts and version names; never the text). The forget runs off the event loop and
takes the pool's write lock, so a concurrent ingest waits for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from sam_brain.control.api_import import post_import
from sam_brain.control.app import CTX, read_bool, read_json
from sam_brain.errors import BadRequest
from sam_brain.protocols import SOURCES

FIELDS = ("source", "session", "project", "before", "match")


def _selector(body: dict[str, Any]) -> Any:
    from sam_brain.pipeline.forget_rules import Selector, parse_date

    values: dict[str, str] = {}
    for key in FIELDS:
        value = body.get(key, "")
        if not isinstance(value, str):
            raise BadRequest(f"field {key!r} must be a string")
        values[key] = value.strip() if key != "match" else value
    if values["source"] and values["source"] not in SOURCES:
        raise BadRequest(f"field 'source' must be one of {', '.join(SOURCES)}")
    sel = Selector(
        source=values["source"],
        session=values["session"],
        project=values["project"],
        before=parse_date(values["before"]) if values["before"] else None,
        match=values["match"] if values["match"].strip() else "",
    )
    if not sel.given():
        raise BadRequest("give at least one of: " + ", ".join(FIELDS))
    return sel


async def post_forget(request: web.Request) -> web.Response:
    from sam_brain.pipeline.forget import forget

    ctx = request.app[CTX]
    body = await read_json(request, {*FIELDS, "dry_run", "confirm"})
    sel = _selector(body)
    dry_run = read_bool(body, "dry_run")
    if not dry_run and not read_bool(body, "confirm"):
        raise BadRequest('forgetting is permanent: send "confirm": true (or "dry_run": true)')
    report = await asyncio.to_thread(forget, ctx.home, sel, dry_run=dry_run)
    return web.json_response(report.to_dict())


def add_data_routes(app: web.Application) -> None:
    app.router.add_post("/api/data/forget", post_forget)
    app.router.add_post("/api/data/import", post_import)
