"""The dashboard in a real headless Chromium, against a real daemon after a real training run.

The daemon (a subprocess on a temp home) ingests example transcripts, trains the tiny model with
MLX and activates v1.0.0; the same adapter then starts as a canary and serves a few chat
requests. The browser loads `/` and the test reads what it drew: loss curve points, the best step
mark, gate rows, timelines, serving and pool charts, and a sample found by text with its
supervised spans marked. Screenshots at 1280 and 390 px wide go to the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sam_brain.dev.browser import Browser, find_chromium
from sam_brain.dev.demo import free_port
from tests.daemon_proc import TINY_TRAINING, get, post, spawn, wait

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium (make installs it)"),
]


def chat(url: str, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200


@pytest.fixture
def daemon(tmp_path: Path, tiny_model: Path) -> Any:
    from sam_brain.dev.examples import write_example_sessions

    home, sessions, port = tmp_path / "home", tmp_path / "projects", free_port()
    sessions.mkdir()
    home.mkdir()
    cfg = TINY_TRAINING.format(
        port=port, sessions=sessions, model=tiny_model, eval_every=4, save_every=12
    )
    (home / "config.toml").write_text(cfg)
    env = dict(os.environ, SAM_BRAIN_HOME=str(home), HF_HUB_OFFLINE="1")
    log = tmp_path / "daemon.log"
    url = f"http://127.0.0.1:{port}"
    proc = spawn(env, log)
    try:
        wait(lambda: get(url + "/api/health")["ok"], 60, proc, log)
        write_example_sessions(sessions, n_sessions=6, seed=3)

        def trained() -> Any:
            doc = get(url + "/api/training")
            return not doc["training"] and doc["runs"] and doc["runs"][0]["status"] == "completed"

        wait(trained, 900, proc, log)  # a shared CI core can make 12 steps slow
        version = get(url + "/api/versions/current")["version"]
        assert version is not None, log.read_text()[-3000:]
        # The same adapter again, as a canary: a second version, a timeline with canary steps.
        code, body = post(
            url + "/api/canary", {"path": version["adapter_path"], "traffic": 10}, home
        )
        assert code == 200, body
        canary = body["canary"]["version"]
        for model in (canary, canary, version["version"]):
            chat(url, model)
        yield url, home, version["version"], canary
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


# The innermost elements reaching past a phone's width, to name the culprit when one does.
WIDEST = """[...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .filter(e => ![...e.children].some(c => c.getBoundingClientRect().right
                                    > document.documentElement.clientWidth + 1))
  .slice(0, 5)
  .map(e => `${e.tagName}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().width)}px: `
            + (e.textContent || '').slice(0, 80))"""

LOSS_POINTS = (
    "Number(document.querySelector('#loss-chart path[data-series=\"{}\"]')"
    "?.getAttribute('data-points') || 0)"
)


async def _drive(url: str, out: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with Browser(width=1280, height=900) as b:
        await b.goto(url + "/")
        await b.wait_for("document.body.dataset.ready === '1'")
        seen["train_points"] = await b.eval(LOSS_POINTS.format("train loss"))
        seen["val_points"] = await b.eval(LOSS_POINTS.format("validation loss"))
        # The path really has that many vertices, not only the attribute.
        seen["train_vertices"] = await b.eval(
            "(document.querySelector('#loss-chart path[data-series=\"train loss\"]')"
            ".getAttribute('d').match(/[ML]/g) || []).length"
        )
        seen["best_marks"] = await b.eval("document.querySelectorAll('#loss-chart .mark').length")
        seen["gate_rows"] = await b.eval("document.querySelectorAll('#gate tbody tr').length")
        seen["gate_text"] = await b.eval("document.querySelector('#gate tbody').textContent")
        seen["timelines"] = await b.eval(
            "Object.fromEntries([...document.querySelectorAll('.timeline')]"
            ".map(t => [t.dataset.version, t.textContent]))"
        )
        seen["rate_paths"] = await b.eval("document.querySelectorAll('#rate-chart path').length")
        seen["source_points"] = await b.eval(
            "[...document.querySelectorAll('#growth-source path')]"
            ".map(p => Number(p.dataset.points))"
        )
        seen["story"] = await b.eval("document.getElementById('story').textContent")
        seen["canary_card"] = await b.eval("document.getElementById('canary').textContent")
        await b.screenshot(out / "dashboard-1280.png")
        # The sample browser: a search by a word of the example transcripts finds samples and
        # renders the first with its supervised spans highlighted.
        seen["first_preview"] = await b.eval("document.querySelector('#results li').textContent")
        word = await b.eval(
            "document.querySelector('#results li').firstChild.textContent.split(/\\W+/)"
            ".filter(w => w.length > 5)[0]"
        )
        seen["word"] = word
        await b.eval(
            f"document.getElementById('q').value = {json.dumps(word)};"
            "document.getElementById('results').replaceChildren();"
            "document.querySelector('#search button').click(); true"
        )
        await b.wait_for("document.querySelectorAll('#results li').length > 0")
        await b.wait_for("document.querySelectorAll('#sample mark').length > 0")
        seen["results"] = await b.eval(
            "[...document.querySelectorAll('#results li')].map(li => li.textContent)"
        )
        seen["count_text"] = await b.eval("document.getElementById('results-count').textContent")
        seen["marks"] = await b.eval("document.querySelectorAll('#sample mark').length")
        await b.viewport(390, 844)
        await b.goto(url + "/")
        await b.wait_for("document.body.dataset.ready === '1'")
        seen["phone_overflow"] = await b.eval(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        seen["phone_wide"] = await b.eval(WIDEST)
        seen["phone_train_points"] = await b.eval(LOSS_POINTS.format("train loss"))
        await b.screenshot(out / "dashboard-390.png")
        light = await b.eval("getComputedStyle(document.body).backgroundColor")
        await b.send(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        seen["backgrounds"] = (
            light,
            await b.eval("getComputedStyle(document.body).backgroundColor"),
        )
        await b.screenshot(out / "dashboard-390-dark.png")
        seen["errors"] = b.console_errors()
    return seen


def test_dashboard_shows_a_real_run_and_canary(daemon: Any, tmp_path: Path) -> None:
    url, _home, active, canary = daemon
    curves = get(url + "/api/training/curves?runs=1")["runs"][0]
    seen = asyncio.run(_drive(url, tmp_path))
    assert seen["errors"] == []
    # Loss: 12 steps, each with a training loss; validation on steps 4, 8 and 12.
    assert seen["train_points"] == seen["train_vertices"] == 12 == curves["count"]
    assert seen["val_points"] == 3
    assert seen["best_marks"] == 1 and curves["best"]["step"] in (4, 8, 12)
    assert seen["phone_train_points"] == 12
    assert seen["gate_rows"] >= 1
    # Timelines: v1.0.0 went active; the canary was registered and started.
    text = seen["timelines"]
    assert "registered" in text[canary] and "canary 10%" in text[canary]
    assert "active" in text[active]
    assert seen["rate_paths"] >= 2  # one line per version that served a request
    assert seen["source_points"] and all(n > 0 for n in seen["source_points"])
    assert active in seen["story"] and canary in seen["canary_card"]
    # The search found samples containing the word, and marked the assistant turns.
    found = get(url + "/api/data/samples?" + urllib.parse.urlencode({"q": seen["word"]}))
    assert found["matched"] >= 1 and len(seen["results"]) == min(found["matched"], 50)
    assert seen["count_text"].startswith(f"{found['matched']} samples match")
    assert seen["marks"] >= 1
    assert seen["phone_overflow"] <= 0, seen["phone_wide"]
    assert seen["backgrounds"] == ("rgb(251, 251, 253)", "rgb(17, 19, 24)")
    # `samctl train --follow` draws its sparkline from the same stored points.
    from sam_brain.control.cli import _loss_values, sparkline
    from sam_brain.control.cli_client import Client

    values = _loss_values(Client(url), curves["run_id"])
    assert len(values) == 12 and len(sparkline(values)) == 12
    for name in ("dashboard-1280.png", "dashboard-390.png", "dashboard-390-dark.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
