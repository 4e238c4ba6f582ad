"""The dashboard: `GET /` (a static page shipped in the package) and the read-only JSON it reads.

The page is one HTML file, one script and one stylesheet under `sam_brain/control/static/`,
served with a Content-Security-Policy that allows nothing but this origin's own files (no inline
script, no other host), so it works offline and a page holds no secret: every endpoint here is a
GET that changes nothing. The canary's request rate, errors and latency over time are sampled from
the serving metrics while the daemon runs (kept in memory, since daemon start).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from sam_brain.control import dash_data
from sam_brain.control.app import CTX, AppContext
from sam_brain.errors import BadRequest
from sam_brain.train.losspoints import loss_curve

STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
SAMPLE_S = 5.0  # how often the serving metrics are sampled for the rollout charts
SERIES_POINTS = 720  # per version: an hour at one point every 5 s


@dataclass
class ServingSeries:
    """Per-version points (time, requests/s, error rate, p50, p99) of the serving metrics."""

    points: dict[str, deque[dict[str, float]]] = field(default_factory=dict)
    last: dict[str, tuple[float, int, float]] = field(default_factory=dict)  # since, requests, t

    def sample(self, windows: dict[str, Any], now: float) -> int:
        """Add a point for every version whose request count moved; returns how many were added."""
        added = 0
        for name, m in windows.items():
            prev = self.last.get(name)
            if prev is not None and prev[0] == m.since and prev[1] == m.requests:
                continue
            if prev is None or prev[0] != m.since:  # a new window: its count started from zero
                delta, dt = m.requests, max(now - m.since, 1e-3)
            else:
                delta, dt = m.requests - prev[1], max(now - prev[2], 1e-3)
            self.last[name] = (m.since, m.requests, now)
            if not m.requests:
                continue
            self.points.setdefault(name, deque(maxlen=SERIES_POINTS)).append(
                {
                    "t": round(now, 3),
                    "requests": m.requests,
                    "rate": round(delta / dt, 4),
                    "error_rate": round(m.error_rate, 4),
                    "p50_ms": round(m.latency_quantile(0.5), 2),
                    "p99_ms": round(m.latency_quantile(0.99), 2),
                }
            )
            added += 1
        return added


SERIES = web.AppKey("serving_series", ServingSeries)
RENDERER = web.AppKey("sample_renderer", dict)
ASSETS = web.AppKey("dashboard_assets", dict)  # the three files, read once (25 KB)


def _sample_now(app: web.Application) -> None:
    ctx = app[CTX]
    if ctx.chat is not None:
        app[SERIES].sample(ctx.chat.metrics(), time.time())


async def _sampler(app: web.Application) -> Any:
    async def loop() -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            await asyncio.to_thread(_sample_now, app)

    task = asyncio.ensure_future(loop())
    yield
    task.cancel()


def _static(name: str) -> bytes:
    return resources.files("sam_brain.control").joinpath("static", name).read_bytes()


async def get_index(request: web.Request) -> web.Response:
    body = request.app[ASSETS]["index.html"]
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=HEADERS)


async def get_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    body = request.app[ASSETS][name]
    return web.Response(
        body=body, content_type=STATIC_FILES[name], charset="utf-8", headers=HEADERS
    )


def _int(request: web.Request, key: str, default: int, top: int) -> int:
    raw = request.query.get(key, str(default))
    try:
        value = int(raw)
    except ValueError as err:
        raise BadRequest(f"parameter {key!r} must be a whole number") from err
    if not 1 <= value <= top:
        raise BadRequest(f"parameter {key!r} must be between 1 and {top}")
    return value


async def get_run_loss(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    run_id = request.match_info["run_id"]
    await asyncio.to_thread(ctx.home.store.get_run, run_id)  # 404 for an unknown run
    return web.json_response(await asyncio.to_thread(loss_curve, ctx.home.store, run_id))


async def get_curves(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    runs = _int(request, "runs", 5, 50)
    return web.json_response(await asyncio.to_thread(dash_data.training_curves, ctx.home, runs))


async def get_gate(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    limit = _int(request, "limit", 20, 500)
    return web.json_response(await asyncio.to_thread(dash_data.gate_decisions, ctx.home, limit))


async def get_timelines(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(await asyncio.to_thread(dash_data.version_timelines, ctx.home))


async def get_serving_series(request: web.Request) -> web.Response:
    await asyncio.to_thread(_sample_now, request.app)
    series = request.app[SERIES]
    return web.json_response(
        {
            "sample_seconds": SAMPLE_S,
            "versions": {k: list(v) for k, v in series.points.items()},
        }
    )


async def get_pool_growth(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(await asyncio.to_thread(dash_data.pool_growth, ctx.home))


async def get_ingests(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    limit = _int(request, "limit", 10, 200)
    return web.json_response(await asyncio.to_thread(dash_data.ingest_reports, ctx.home, limit))


async def get_samples(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    query = dict(request.query)
    return web.json_response(await asyncio.to_thread(dash_data.search_samples, ctx.home, query))


def _renderer(ctx: AppContext, cache: dict[str, Any]) -> tuple[Any, str]:
    """The base model's tokenizer when it is on disk, else Qwen2.5's template (loaded once)."""
    if "tok" not in cache:
        from sam_brain.control.cli_data import named_template

        tok: Any = None
        label = "template qwen2.5"
        name = ctx.base_model_dir or ctx.base_ref
        if name:
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
                label = f"tokenizer of {name}"
            except Exception:  # not downloaded or not a model folder: the stand-in template
                tok = None
        cache["tok"] = (tok or named_template("qwen2.5"), label)
    return cache["tok"]  # type: ignore[no-any-return]


def _sample(ctx: AppContext, cache: dict[str, Any], sample_id: str) -> dict[str, Any]:
    tok, label = _renderer(ctx, cache)
    return dash_data.sample_doc(ctx.home, sample_id, tok, label)


async def get_sample(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    sample_id = request.match_info["sample_id"]
    if len(sample_id) > 200:
        raise BadRequest("sample id is longer than 200 characters")
    doc = await asyncio.to_thread(_sample, ctx, request.app[RENDERER], sample_id)
    return web.json_response(doc)


def add_dash_routes(app: web.Application) -> None:
    """`/`, its two assets and the read-only endpoints it reads (see the README's API table)."""
    app[SERIES] = ServingSeries()
    app[RENDERER] = {}
    app[ASSETS] = {name: _static(name) for name in ("index.html", *STATIC_FILES)}
    app.cleanup_ctx.append(_sampler)
    app.router.add_get("/", get_index)
    app.router.add_get("/static/{name}", get_static)
    app.router.add_get("/api/runs/{run_id}/loss", get_run_loss)
    app.router.add_get("/api/training/curves", get_curves)
    app.router.add_get("/api/gate", get_gate)
    app.router.add_get("/api/versions/timeline", get_timelines)
    app.router.add_get("/api/serving/series", get_serving_series)
    app.router.add_get("/api/data/growth", get_pool_growth)
    app.router.add_get("/api/data/ingests", get_ingests)
    app.router.add_get("/api/data/samples", get_samples)
    app.router.add_get("/api/data/samples/{sample_id}", get_sample)
