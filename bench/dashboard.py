"""The dashboard's weight and speed: bytes shipped, first paint, time until every chart is drawn.

Builds a home with example transcripts ingested (a pool of a few hundred samples), a run with
`--points` loss points and a gate decision, serves it with `make_app` on loopback, and loads `/`
in headless Chromium (`sam_brain.dev.browser`) `--loads` times at 1280 px and at 390 px.
Reports the page weight (HTML + JS + CSS, as served), first paint and first contentful paint
(the browser's Paint Timing entries), the time until the page marks itself ready (every section
fetched and drawn) and each JSON endpoint's latency. The budget is the issue's: under 500 KB and
first paint under 300 ms locally.

Usage: python bench/dashboard.py [--quick] [--loads N] [--points N] [--sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sam_brain.config_load import parse_config  # noqa: E402
from sam_brain.control.api import make_app  # noqa: E402
from sam_brain.control.app import AppContext  # noqa: E402
from sam_brain.dev.browser import Browser, find_chromium  # noqa: E402
from sam_brain.dev.examples import write_example_sessions  # noqa: E402
from sam_brain.home import Home  # noqa: E402
from sam_brain.pipeline.ingest import ingest, make_collectors  # noqa: E402
from sam_brain.protocols import Progress  # noqa: E402
from sam_brain.train.losspoints import record_progress  # noqa: E402
from sam_brain.train.scheduler import Coordinator  # noqa: E402

ENDPOINTS = (
    "/",
    "/static/app.js",
    "/static/app.css",
    "/api/self",
    "/api/training",
    "/api/training/curves?runs=10",
    "/api/gate?limit=20",
    "/api/versions/timeline",
    "/api/serving/series",
    "/api/data/growth",
    "/api/data/ingests?limit=10",
    "/api/data/stats",
    "/api/data/samples?limit=50",
)
TIMING = """(() => {
  const paint = Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
  const ready = performance.getEntriesByName('sam-ready')[0];
  const nav = performance.getEntriesByType('navigation')[0];
  return {fp: paint['first-paint'], fcp: paint['first-contentful-paint'],
          ready: ready ? ready.startTime : null, dcl: nav.domContentLoadedEventEnd};
})()"""


def build_home(root: Path, sessions: int, points: int) -> Home:
    src = root / "projects"
    write_example_sessions(src, n_sessions=sessions, seed=7)
    cfg = parse_config(
        {
            "data_dir": str(root / "home"),
            "sources": {"sessions_dirs": [str(src)], "quiet_minutes": 0.0},
        }
    )
    home = Home.open(cfg)
    ingest(home, make_collectors(home)["sessions"])
    run = home.store.create_run("bench", "mlx", "tiny", home.pool.count(), home.pool.version)
    for step in range(1, points + 1):
        val = 2.0 + 1.0 / step if step % 50 == 0 else None
        msg = "validation loss" if val is not None else ""
        record_progress(
            home.store, run.run_id, Progress(step, points, 3.0 / step**0.3, val, 900.0, message=msg)
        )
    home.store.update_run(run.run_id, status="completed")
    home.store.add_event(
        "evaluated",
        {
            "version": "v1.0.0",
            "against": "base",
            "promote": True,
            "reasons": ["better"],
            "candidate_loss": 2.1,
            "reference_loss": 2.6,
        },
    )
    return home


async def measure(home: Home, loads: int) -> dict[str, Any]:
    ctx = AppContext(
        home=home, coordinator=Coordinator(home, "mlx"), backend="mlx", backend_why="bench"
    )
    runner = web.AppRunner(make_app(ctx, port=0))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"weight": {}, "api_ms": {}, "loads": {}}
    try:
        async with ClientSession() as http:
            for path in ("/", "/static/app.js", "/static/app.css"):
                async with http.get(url + path, headers={"Host": f"127.0.0.1:{port}"}) as r:
                    out["weight"][path] = len(await r.read())
            for path in ENDPOINTS:
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    async with http.get(url + path) as r:
                        await r.read()
                        assert r.status == 200, (path, r.status)
                    times.append((time.perf_counter() - t0) * 1000)
                out["api_ms"][path] = statistics.median(times)
        async with Browser(width=1280, height=900) as b:
            for width, height in ((1280, 900), (390, 844)):
                await b.viewport(width, height)
                rows = []
                for _ in range(loads + 1):
                    await b.goto(url + "/")
                    await b.wait_for("document.body.dataset.ready === '1'", timeout=60)
                    rows.append(await b.eval(TIMING))
                out["loads"][width] = rows[1:]  # the first load warms the browser's caches
            out["errors"] = b.console_errors()
    finally:
        await runner.cleanup()
    return out


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows if r[key] is not None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke sizes")
    ap.add_argument("--loads", type=int, default=10)
    ap.add_argument("--points", type=int, default=2000, help="loss points of the bench run")
    ap.add_argument("--sessions", type=int, default=60)
    args = ap.parse_args(argv)
    if args.quick:
        args.loads, args.points, args.sessions = 2, 200, 8
    if find_chromium() is None:
        print("no Chromium: install it (make chromium) to run this benchmark")
        return 0
    with tempfile.TemporaryDirectory(prefix="sam-bench-dash-") as tmp:
        t0 = time.monotonic()
        home = build_home(Path(tmp), args.sessions, args.points)
        print(
            f"home: {home.pool.count()} samples, {args.points} loss points "
            f"(built in {time.monotonic() - t0:.1f} s)"
        )
        try:
            res = asyncio.run(measure(home, args.loads))
        finally:
            home.close()
    total = sum(res["weight"].values())
    print("\nasset              bytes")
    for path, size in res["weight"].items():
        print(f"{path:<18} {size:>6}")
    print(f"{'total':<18} {total:>6}  (budget 500000)")
    print("\nwidth  loads  first paint  first contentful  DOM ready  all charts drawn  (median ms)")
    for width, rows in res["loads"].items():
        print(
            f"{width:>5}  {len(rows):>5}  {med(rows, 'fp'):>11.0f}  {med(rows, 'fcp'):>16.0f}"
            f"  {med(rows, 'dcl'):>9.0f}  {med(rows, 'ready'):>16.0f}"
        )
    print(
        "\nserver time per request (aiohttp client, 5 each)\nendpoint                          median ms"
    )
    for path, ms in res["api_ms"].items():
        print(f"{path:<33} {ms:>9.1f}")
    fp = med(res["loads"][1280], "fp")
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"\nconsole errors: {len(res['errors'])}")
    print(f"ratio first paint / 300 ms budget: {fp / 300:.2f}")
    print(f"ratio page weight / 500 KB budget: {total / 500_000:.3f}")
    return 0 if total < 500_000 and not res["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
