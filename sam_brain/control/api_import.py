"""`POST /api/data/import`: `samctl ingest dataset` over HTTP, for files the daemon may read.

Body: `path` (absolute, an existing `.jsonl` or `.json` file inside the home or
`deployment.import_dirs`, as for adapters in api_deploy.py), and optionally `training`,
`format` (auto, openai, sharegpt, alpaca), `skip_bad` and `dry_run`. The answer is the import
report; a file with malformed rows is a 400 naming them, and nothing is imported.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from sam_brain.control.api_deploy import import_roots
from sam_brain.control.app import CTX, AppContext, read_bool, read_json
from sam_brain.errors import BadRequest

FIELDS = {"path", "training", "format", "skip_bad", "dry_run"}
SUFFIXES = (".jsonl", ".json")
# One answer for every path that cannot be used, so replies tell nothing about the file system.
NOT_ALLOWED = (
    "field 'path' must name an existing .jsonl or .json file inside the home or"
    " deployment.import_dirs"
)


def dataset_path(ctx: AppContext, body: dict[str, Any]) -> Path:
    """The resolved dataset file of `body["path"]` when the daemon may read it, else a 400."""
    raw = body.get("path")
    if not isinstance(raw, str) or not raw or len(raw) > 4096:
        raise BadRequest("field 'path' must be a non-empty string")
    path = Path(raw)
    if not path.is_absolute():  # no `~`, no relative paths: a page must not guess the home
        raise BadRequest(NOT_ALLOWED)
    try:
        real = path.resolve(strict=True)  # a symlink out of the roots is refused too
        fits = real.is_file() and real.suffix in SUFFIXES
    except (OSError, RuntimeError):
        raise BadRequest(NOT_ALLOWED) from None
    if not fits or not any(real.is_relative_to(root) for root in import_roots(ctx)):
        raise BadRequest(NOT_ALLOWED)
    return real


def _name(body: dict[str, Any], key: str, default: str | None) -> str | None:
    value = body.get(key, default)
    if value is not None and (not isinstance(value, str) or not value or len(value) > 64):
        raise BadRequest(f"field {key!r} must be a short non-empty string")
    return value


async def post_import(request: web.Request) -> web.Response:
    from sam_brain.control.dataset_import import import_dataset

    ctx = request.app[CTX]
    body = await read_json(request, FIELDS)
    path = dataset_path(ctx, body)
    report = await asyncio.to_thread(
        import_dataset,
        ctx.home,
        path,
        training=_name(body, "training", None),
        fmt=_name(body, "format", "auto") or "auto",
        skip_bad=read_bool(body, "skip_bad"),
        dry_run=read_bool(body, "dry_run"),
    )
    return web.json_response(report)
