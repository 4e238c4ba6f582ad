"""Deployment endpoints of the control API: versions, deploy, canary, promote, rollback, metrics.

Every state change goes through `deployment/` functions that are single SQLite transactions, and
the handlers serialise them on one asyncio lock, so concurrent deploy/promote/rollback calls
queue instead of interleaving.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from deployment import canary
from deployment.serving_metrics import prom_line, prometheus_lines
from sam_brain.config import DEFAULT_TRAINING
from sam_brain.control.app import CTX, AppContext, read_json
from sam_brain.errors import BadRequest
from sam_brain.home import Home
from sam_brain.train.release import (
    release,
    rollback_or_abort,
    start_canary_from,
    start_canary_version,
)

DEPLOY_LOCK = web.AppKey("deploy_lock", asyncio.Lock)


VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_LEN = {"path": 4096, "test": 4096, "description": 500, "version": 64}
# One answer for every path that cannot be used, so replies tell nothing about the file system.
NOT_ALLOWED = "field {key!r} must name an {what} inside the home or deployment.import_dirs"


def _str(body: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"field {key!r} is required")
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field {key!r} must be a non-empty string")
    if len(value) > MAX_LEN.get(key, 4096):
        raise BadRequest(f"field {key!r} is longer than {MAX_LEN.get(key, 4096)} characters")
    return value


def _version(body: dict[str, Any]) -> str | None:
    name = _str(body, "version")
    if name is not None and not VERSION_NAME.fullmatch(name):
        raise BadRequest("field 'version' must be a version name such as v1.0.3")
    return name


def training_home(ctx: AppContext, body: dict[str, Any]) -> Home:
    """The home of the training a request names (`"training"`, default "sam").

    Raises:
        NotFound: No such training (404, naming the configured ones).
    """
    return ctx.home.for_training(_str(body, "training") or DEFAULT_TRAINING)


def import_roots(ctx: AppContext) -> list[Path]:
    """Where HTTP callers may take adapters from: the home and `deployment.import_dirs`."""
    dirs = [ctx.home.data, *(Path(d).expanduser() for d in ctx.home.config.deployment.import_dirs)]
    return [d.resolve() for d in dirs]


def confined(ctx: AppContext, body: dict[str, Any], key: str, want_dir: bool) -> Path | None:
    """The resolved path in `body[key]` when it is inside the import roots, else a 400.

    No `~` expansion and no relative paths (a page must not learn or guess the user's home);
    symlinks resolve before the check, so a link out of the home is refused too.
    """
    raw = _str(body, key)
    if raw is None:
        return None
    refused = BadRequest(
        NOT_ALLOWED.format(key=key, what="adapter folder" if want_dir else "existing .jsonl file")
    )
    path = Path(raw)
    if not path.is_absolute():
        raise refused
    try:
        real = path.resolve(strict=True)
        fits = real.is_dir() if want_dir else real.is_file()
    except (OSError, RuntimeError):
        raise refused from None
    if not want_dir and real.suffix != ".jsonl":
        fits = False  # held-out rows are JSONL; nothing else in the home is read as test data
    if not fits or not any(real.is_relative_to(root) for root in import_roots(ctx)):
        raise refused
    return real


def canary_doc(ctx: AppContext, home: Home | None = None) -> dict[str, Any]:
    """The canary of a training (`home`; default: the default training's)."""
    home = home or ctx.home
    state = canary.canary_state(home.versions)
    doc: dict[str, Any] = {"active": state is not None}
    if state is not None:
        doc.update(
            version=state.version,
            percent=state.percent,
            since=state.since,
            steps=list(home.config.deployment.canary_steps),
        )
    if ctx.chat is not None:
        windows = ctx.chat.metrics()
        shadow = ctx.chat.shadow
        doc["shadow"] = {"enabled": shadow is not None, **(shadow.stats() if shadow else {})}
        active = home.versions.current()
        stable = windows.get(active.version) if active else None
        doc["stable_metrics"] = stable.to_dict() if stable else None
        if state is not None:
            m = windows.get(state.version)
            doc["metrics"] = m.to_dict() if m else None
    return doc


async def get_canary(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    home = training_home(ctx, {"training": request.query.get("training")})
    return web.json_response(await asyncio.to_thread(canary_doc, ctx, home))


async def post_canary(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await read_json(request, {"version", "path", "traffic", "training"})
    home = training_home(ctx, body)
    if (body.get("version") is None) == (body.get("path") is None):
        raise BadRequest("send {'version': 'v1.0.3'} or {'path': '/adapter/dir'} and 'traffic'")
    traffic = body.get("traffic", ctx.home.config.deployment.canary_steps[0])
    if not isinstance(traffic, int) or isinstance(traffic, bool) or not 1 <= traffic <= 100:
        raise BadRequest("field 'traffic' must be an integer percentage within 1..100")
    # Everything is checked before an adapter is copied into versions/.
    name, path = _version(body), confined(ctx, body, "path", want_dir=True)
    async with request.app[DEPLOY_LOCK]:
        if name is not None:
            v = await asyncio.to_thread(start_canary_version, home, name, traffic)
        else:
            v = await asyncio.to_thread(start_canary_from, home, str(path), traffic)
    return web.json_response({"canary": v.to_dict(), "traffic": traffic})


async def post_promote(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    home = training_home(ctx, await read_json(request, {"training"}))
    async with request.app[DEPLOY_LOCK]:
        v = await asyncio.to_thread(canary.promote, home.versions)
    return web.json_response({"version": v.to_dict()})


async def post_rollback(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await read_json(request, {"version", "training"})
    version = _version(body)
    home = training_home(ctx, body)
    async with request.app[DEPLOY_LOCK]:
        what, v = await asyncio.to_thread(rollback_or_abort, home, version)
    return web.json_response({"action": what, "version": v.to_dict() if v else None})


async def post_deploy(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = await read_json(request, {"path", "dry_run", "description", "test", "training"})
    home = training_home(ctx, body)
    if home.config.training.mlx_base_model != ctx.home.config.training.mlx_base_model:
        raise BadRequest(
            f"training {home.training!r} has its own base: deploy to it with samctl while the"
            " daemon is stopped"
        )
    _str(body, "path", required=True)
    dry = body.get("dry_run", False)
    if not isinstance(dry, bool):
        raise BadRequest("field 'dry_run' must be true or false")
    description = _str(body, "description")
    path = confined(ctx, body, "path", want_dir=True)
    test = confined(ctx, body, "test", want_dir=False)
    if path is None:  # unreachable: 'path' is required above
        raise BadRequest("field 'path' is required")
    if ctx.base_model_dir is None:
        raise BadRequest(f"the base model is not available: {ctx.chat_unavailable}")
    base_dir = ctx.base_model_dir
    async with request.app[DEPLOY_LOCK]:
        outcome = await asyncio.to_thread(
            release,
            home,
            path,
            base_model_dir=base_dir,
            base_ref=ctx.base_ref,
            description=description or f"deployed from {path}",
            test_path=test,
            exclusive=ctx.exclusive,
            dry_run=dry,
        )
    return web.json_response(
        {"version": outcome.version, "action": outcome.action, "reasons": outcome.reasons}
    )


def metrics_text(ctx: AppContext) -> str:
    home = ctx.home
    stats = home.pool.stats()
    lines = [
        "# HELP sam_brain_samples Samples in the pool.",
        "# TYPE sam_brain_samples gauge",
        prom_line("sam_brain_samples", stats["total"]),
        "# TYPE sam_brain_training gauge",
        prom_line("sam_brain_training", 1.0 if ctx.coordinator.training else 0.0),
        "# TYPE sam_brain_uptime_seconds gauge",
        prom_line("sam_brain_uptime_seconds", round(time.time() - ctx.started, 1)),
        "# TYPE sam_brain_runs_total counter",
    ]
    runs = home.store.run_counts()
    lines += [prom_line("sam_brain_runs_total", n, {"status": s}) for s, n in sorted(runs.items())]
    if ctx.chat is not None:
        shadow = ctx.chat.shadow
        lines += prometheus_lines(ctx.chat.metrics(), shadow.stats() if shadow else None)
    return "\n".join(lines) + "\n"


async def get_metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    text = await asyncio.to_thread(metrics_text, ctx)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def get_history(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    events = await asyncio.to_thread(ctx.home.store.events, None, 100)
    return web.json_response({"events": events})


def add_deploy_routes(app: web.Application) -> None:
    app[DEPLOY_LOCK] = asyncio.Lock()
    app.router.add_get("/api/canary", get_canary)
    app.router.add_post("/api/canary", post_canary)
    app.router.add_post("/api/promote", post_promote)
    app.router.add_post("/api/rollback", post_rollback)
    app.router.add_post("/api/deploy", post_deploy)
    app.router.add_get("/api/history", get_history)
    app.router.add_get("/metrics", get_metrics)
