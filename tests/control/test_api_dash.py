"""The dashboard's read-only endpoints on a real home (SQLite, LanceDB), over loopback.

The home gets known contents (samples, progress reports, events, ingest reports) and each
endpoint must return exactly them; the page is served with its strict CSP and no secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from deployment.serving_metrics import VersionMetrics
from sam_brain.config_load import parse_config
from sam_brain.control.api_dash import CSP, ServingSeries
from sam_brain.home import Home
from sam_brain.protocols import Progress, Sample
from sam_brain.train.losspoints import loss_curve, record_progress


@pytest.fixture
def home(tmp_path: Path) -> Any:
    cfg = parse_config({"data_dir": str(tmp_path / "data")})
    h = Home.open(cfg)
    yield h
    h.close()


def sample(i: int, source: str, tier: str, text: str) -> Sample:
    return Sample(
        id=f"s{i:02d}",
        source=source,
        source_key=f"k{i}",
        group=f"g{i}",
        tier=tier,
        messages=[
            {"role": "user", "content": f"question {i}: {text}"},
            {"role": "assistant", "content": f"answer {i}"},
        ],
    )


def fill_pool(home: Home) -> None:
    rows = [sample(i, "sessions", "A", "fix the parser") for i in range(5)]
    rows += [sample(i, "git", "B", "commit message") for i in range(5, 8)]
    rows += [sample(8, "docs", "C", "the PARSER docs")]
    splits = ["train", "train", "val", "train", "test", "train", "val", "train", "train"]
    home.pool.upsert([(s, sp) for s, sp in zip(rows, splits, strict=True)])


async def test_page_is_served_with_a_strict_csp_and_no_secret(
    client: TestClient, home: Home
) -> None:
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    page = await resp.text()
    assert '<script src="/static/app.js"' in page and "<script>" not in page
    token = (home.data / "api.token").read_text().strip()
    total = len(page.encode())
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = await client.get(f"/static/{name}")
        assert asset.status == 200 and asset.content_type == kind
        body = await asset.text()
        assert token not in body and "POST" not in body  # the page never mutates
        total += len(body.encode())
    assert token not in page
    assert total < 500_000
    assert (await client.get("/static/../api.token")).status == 404
    assert (await client.get("/static/index.htm")).status == 404


async def test_loss_points_per_step_and_best(client: TestClient, home: Home) -> None:
    run = home.store.create_run("test", "mlx", "m", 10, 1)
    for step in range(1, 11):
        msg = "validation loss" if step % 5 == 0 else ""
        val = {5: 1.5, 10: 1.7}.get(step, 9.9)  # backends repeat the last val in every report
        record_progress(
            home.store, run.run_id, Progress(step, 10, 3.0 - step / 10, val, 100.0, message=msg)
        )
    record_progress(home.store, run.run_id, Progress(11, 10, float("nan")))  # stores nothing
    doc = await (await client.get(f"/api/runs/{run.run_id}/loss")).json()
    assert doc["count"] == 10 and len(doc["points"]) == 10
    assert [p["step"] for p in doc["points"] if p["val_loss"] is not None] == [5, 10]
    assert doc["best"] == {"step": 5, "val_loss": 1.5}
    assert doc["points"][0]["train_loss"] == pytest.approx(2.9)
    thinned = loss_curve(home.store, run.run_id, limit=4)
    assert thinned["count"] == 10 and len(thinned["points"]) == 5  # 1, 4, 7, 10 and val step 5
    curves = await (await client.get("/api/training/curves?runs=3")).json()
    assert [(r["run_id"], r["count"]) for r in curves["runs"]] == [(run.run_id, 10)]
    assert (await client.get("/api/runs/nope/loss")).status == 404
    assert (await client.get("/api/training/curves?runs=0")).status == 400
    assert (await client.get("/api/training/curves?runs=x")).status == 400


async def test_gate_and_timelines_from_events(client: TestClient, home: Home) -> None:
    store = home.store
    store.add_event(
        "evaluated",
        {
            "version": "v1",
            "against": "base",
            "promote": True,
            "reasons": ["better"],
            "candidate_loss": 1.0,
            "reference_loss": 2.0,
        },
    )
    store.add_event(
        "evaluated",
        {
            "version": "v2",
            "against": "v1",
            "promote": False,
            "reasons": ["worse"],
            "candidate_loss": 3.0,
            "reference_loss": 1.0,
        },
    )
    store.add_event("ingest", {"collector": "sessions"})
    gate = await (await client.get("/api/gate?limit=5")).json()
    assert gate["count"] == 2
    assert [(d["version"], d["promote"]) for d in gate["decisions"]] == [
        ("v2", False),
        ("v1", True),
    ]
    assert (await (await client.get("/api/gate?limit=1")).json())["count"] == 1
    tl = await (await client.get("/api/versions/timeline")).json()
    assert tl == {"versions": []}  # events of versions that were never registered are not shown


async def test_pool_growth_search_and_render(client: TestClient, home: Home) -> None:
    fill_pool(home)
    growth = await (await client.get("/api/data/growth")).json()
    assert growth["total"] == 9
    assert {k: v[-1] for k, v in growth["by_source"].items()} == {
        "sessions": 5,
        "git": 3,
        "docs": 1,
    }
    assert {k: v[-1] for k, v in growth["by_tier"].items()} == {"A": 5, "B": 3, "C": 1}
    assert all(v == sorted(v) for v in growth["by_source"].values())  # cumulative
    found = await (await client.get("/api/data/samples?q=parser")).json()
    assert found["matched"] == 6 and {s["id"] for s in found["samples"]} >= {"s00", "s08"}
    assert found["facets"]["source"] == {"sessions": 5, "docs": 1}
    val = await (await client.get("/api/data/samples?q=parser&split=val&source=sessions")).json()
    assert val["matched"] == 1 and val["samples"][0]["id"] == "s02"
    few = await (await client.get("/api/data/samples?tier=B&limit=2")).json()
    assert few["matched"] == 3 and len(few["samples"]) == 2
    assert (await client.get("/api/data/samples?colour=red")).status == 400
    doc = await (await client.get("/api/data/samples/s08")).json()
    assert doc["split"] == "train" and len(doc["spans"]) == 1
    start, end = doc["spans"][0]
    assert "answer 8" in doc["text"][start:end] and "question 8" not in doc["text"][start:end]
    assert (await client.get("/api/data/samples/nope")).status == 404


async def test_ingest_reports_newest_first(client: TestClient, home: Home) -> None:
    assert (await (await client.get("/api/data/ingests")).json()) == {"count": 0, "reports": []}
    home.reports_dir.mkdir(parents=True, exist_ok=True)
    for ts, name in (("20260101T000000", "git"), ("20260102T000000", "sessions")):
        report = {
            "collector": name,
            "collected": 4,
            "stored": 3,
            "dropped": {"duplicate": 1},
            "coverage": {"total": {"tool_calls_seen": 5}, "files": {"/a.jsonl": {}}},
        }
        (home.reports_dir / f"ingest-{ts}-{name}-000001.json").write_text(json.dumps(report))
    (home.reports_dir / "ingest-20260103T000000-bad-000001.json").write_text("{not json")
    doc = await (await client.get("/api/data/ingests?limit=5")).json()
    assert doc["count"] == 2
    assert [(r["collector"], r["when"]) for r in doc["reports"]] == [
        ("sessions", "20260102T000000"),
        ("git", "20260101T000000"),
    ]
    assert doc["reports"][0]["coverage"] == {"total": {"tool_calls_seen": 5}}  # no per-file rows


def test_serving_series_adds_points_only_when_requests_move() -> None:
    series = ServingSeries()
    m = VersionMetrics("v2", since=100.0)
    assert series.sample({"v2": m}, 110.0) == 0  # nothing served yet
    for latency in (10.0, 20.0, 30.0, 40.0):
        m.record(latency, error=latency == 40.0, memory_mb=1.0)
    assert series.sample({"v2": m}, 120.0) == 1
    assert series.sample({"v2": m}, 125.0) == 0  # unchanged: no new point
    m.record(50.0, error=False, memory_mb=1.0)
    assert series.sample({"v2": m}, 130.0) == 1
    first, second = series.points["v2"]
    # 4 requests since the empty observation at t=110; then 1 in the 10 s after t=120.
    assert first["rate"] == pytest.approx(4 / 10) and first["error_rate"] == 0.25
    assert second["rate"] == pytest.approx(1 / 10) and second["p50_ms"] == 30.0


def test_follow_sparkline() -> None:
    from sam_brain.control.cli import sparkline

    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([2.0, 2.0]) == "▁▁" and sparkline([]) == ""
    assert len(sparkline([float(i) for i in range(50)])) == 20


async def test_grafana_dashboard_queries_only_exported_metrics(
    client: TestClient, home: Home
) -> None:
    import re

    from deployment.serving_metrics import prometheus_lines

    doc = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"sam_brain_[a-z_]+", e)}
    home.store.create_run("test", "mlx", "m", 1, 1)  # runs_total has a line once a run exists
    shadow = {"mirrored": 0, "dropped": 0, "preempted": 0, "skipped": 0, "queued": 0}
    text = await (await client.get("/metrics")).text()
    text += "\n".join(prometheus_lines({"v1": VersionMetrics("v1")}, shadow))
    exported = set(re.findall(r"^(sam_brain_[a-z_]+)[{ ]", text, re.M))
    assert used and used <= exported, used - exported
    assert len(doc["panels"]) == 12
