"""`POST/GET /api/teach` and `samctl teach ...` against a real app over loopback, with the
OpenAI-compatible teacher talking to a scripted local server (exact counts)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.control import cli
from sam_brain.control.api import make_app
from sam_brain.control.app import AppContext
from sam_brain.dev.demo import free_port
from sam_brain.dev.teacher_wire import Wire, serve, serve_app
from sam_brain.home import Home
from sam_brain.train.scheduler import Coordinator
from tests.api_auth import auth_headers
from tests.teach.scripted import answer, per_request

GENERATE = {"kind": "generate", "source": "samctl", "count": 40, "options": {"batch_size": 5}}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, Home, Wire, Path]]:
    with serve(Wire(answer, delay=0.05, script=["429"])) as wire:
        doc = {
            "data_dir": str(tmp_path / "data"),
            "teacher": {"provider": "openai", "model": "teacher-test",
                        "base_url": wire.url + "/v1", "concurrency": 2},
        }  # fmt: skip
        config_path = tmp_path / "config.toml"
        config_path.write_text(
            f'data_dir = "{doc["data_dir"]}"\n[teacher]\nprovider = "openai"\n'
            f'model = "teacher-test"\nbase_url = "{wire.url}/v1"\nconcurrency = 2\n'
        )
        home = Home.open(parse_config(doc))
        ctx = AppContext(
            home=home, coordinator=Coordinator(home, "mlx"), backend="mlx", backend_why="test"
        )
        port = free_port()
        with serve_app(make_app(ctx, port), port) as url:
            yield url, home, wire, config_path
        home.close()


def call(url: str, home: Home, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {**auth_headers(home.data), "Content-Type": "application/json"}
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_done(url: str, home: Home) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, doc = call(url, home, "GET", "/api/teach")
        if not doc["teaching"]:
            return doc
        time.sleep(0.1)
    raise AssertionError("teach job did not end")


def test_api_runs_one_job_at_a_time_with_exact_counts(
    daemon: tuple[str, Home, Wire, Path],
) -> None:
    url, home, wire, _ = daemon
    code, doc = call(url, home, "POST", "/api/teach", GENERATE)
    assert code == 202 and doc["job_id"].startswith("generate-samctl-")
    code, busy = call(url, home, "POST", "/api/teach", {**GENERATE, "count": 10})
    assert code == 409 and "is running" in busy["error"]
    status = wait_done(url, home)
    job = status["current"]
    assert job["state"] == "done" and (job["done"], job["total"]) == (8, 8)
    expected = per_request(8)
    assert {k: job["counts"][k] for k in expected} == expected
    assert job["stored"] == 14 and wire.answered == 8
    assert wire.failures == ["429"]  # the openai SDK retried it (retry-after honoured)
    assert status["recent"][0]["job_id"] == doc["job_id"]
    assert home.pool.stats()["by_source"] == {"teacher": 14}
    _, stats = call(url, home, "GET", "/api/teach/stats")
    assert stats["by_job"][doc["job_id"]]["calls"] == 8
    assert stats["by_job"][doc["job_id"]]["usd"] == pytest.approx(job["usd"], rel=1e-12)
    # The same spec again resumes a finished job: nothing is asked or stored twice.
    code, again = call(url, home, "POST", "/api/teach", GENERATE)
    assert code == 202 and again["job_id"] == doc["job_id"]
    job2 = wait_done(url, home)["current"]
    assert job2["state"] == "done" and wire.answered == 8 and job2["stored"] == 14


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"kind": "dream"}, "unknown teach job"),
        ({"kind": "generate"}, "generate needs a schema"),
        ({**GENERATE, "count": -1}, "non-negative"),
        ({**GENERATE, "options": {"a": [1]}}, "'options'"),
        ({**GENERATE, "secret": 1}, "unknown field"),
    ],
)
def test_api_rejects_bad_bodies(
    daemon: tuple[str, Home, Wire, Path], body: dict[str, Any], fragment: str
) -> None:
    url, home, _, _ = daemon
    code, doc = call(url, home, "POST", "/api/teach", body)
    assert code == 400 and fragment in doc["error"]


def test_api_needs_the_token(daemon: tuple[str, Home, Wire, Path]) -> None:
    url, _, _, _ = daemon
    req = urllib.request.Request(url + "/api/teach", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code in (401, 403)


def test_bad_schema_fails_the_job_in_one_line(
    daemon: tuple[str, Home, Wire, Path], tmp_path: Path
) -> None:
    url, home, wire, _ = daemon
    bad = tmp_path / "broken.yaml"
    bad.write_text("commands: [{name: x, args: [{name: n, type: complex}]}]\n")
    code, _ = call(url, home, "POST", "/api/teach", {"kind": "generate", "source": str(bad)})
    assert code == 202
    job = wait_done(url, home)["current"]
    assert job["state"] == "failed" and "unknown type 'complex'" in job["error"]
    assert wire.answered == 0


def test_samctl_teach_follow_status_stats(
    daemon: tuple[str, Home, Wire, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, _, config_path = daemon
    base = ["--config", str(config_path), "--url", url, "teach"]
    argv = [*base, "generate", "--from", "samctl", "--count", "40", "--batch-size", "5"]
    assert cli.main([*argv, "--follow"]) == 0
    out = capsys.readouterr()
    assert "done 8/8 requests, 14 stored" in out.out
    assert "8/8" in out.err  # the tqdm bar
    assert cli.main([*base, "status"]) == 0
    assert "done 8/8 requests, 14 stored" in capsys.readouterr().out
    assert cli.main([*base, "stats"]) == 0
    stats = capsys.readouterr().out
    assert "per day:" in stats and "8 calls" in stats
    assert cli.main([*base, "stats", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sum(s["calls"] for s in doc["by_job"].values()) == 8
    assert cli.main([*base, "cancel"]) == 0
    assert "no teach job running" in capsys.readouterr().out
    assert cli.main([*base, "generate", "--from", "samctl", "--option", "oops"]) == 2
    assert "--option 'oops': write KEY=VALUE" in capsys.readouterr().err


def test_cancel_then_resume_then_shutdown_cancels(tmp_path: Path) -> None:
    with serve(Wire(answer, delay=0.4)) as wire:
        doc = {"data_dir": str(tmp_path / "data"),
               "teacher": {"provider": "openai", "base_url": wire.url + "/v1", "concurrency": 1}}  # fmt: skip
        home = Home.open(parse_config(doc))
        ctx = AppContext(
            home=home, coordinator=Coordinator(home, "mlx"), backend="mlx", backend_why="test"
        )
        port = free_port()
        with serve_app(make_app(ctx, port), port) as url:
            code, started = call(url, home, "POST", "/api/teach", GENERATE)
            assert code == 202
            while wire.answered < 2:
                time.sleep(0.05)
            assert call(url, home, "POST", "/api/teach/cancel", {}) == (200, {"cancelled": True})
            job = wait_done(url, home)["current"]
            assert job["state"] == "cancelled" and 2 <= job["done"] < 8
            asked = wire.answered
            code, _ = call(url, home, "POST", "/api/teach", GENERATE)  # resumes
            while wire.answered < asked + 1:
                time.sleep(0.05)
        # The app shut down while the job ran: the job was cancelled and said so on disk.
        status = json.loads((home.data / "teach" / started["job_id"] / "status.json").read_text())
        assert status["state"] == "cancelled" and status["done"] < 8
        events = [e for e in home.store.events("teach") if e["data"]["job_id"] == started["job_id"]]
        assert [e["data"]["state"] for e in events] == ["cancelled", "cancelled"]
        paid = wire.answered
        home.close()
    # Every answer paid so far is in the ledger once.
    from sam_brain.teacher_ledger import Ledger

    assert len(Ledger(home.data / "state.db").calls(started["job_id"])) == paid


def test_stats_and_status_work_with_the_daemon_stopped(
    daemon: tuple[str, Home, Wire, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, home, _, config_path = daemon
    call(url, home, "POST", "/api/teach", GENERATE)
    wait_done(url, home)
    base = ["--config", str(config_path), "--url", f"http://127.0.0.1:{free_port()}", "teach"]
    assert cli.main([*base, "stats", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sum(s["calls"] for s in doc["by_day"].values()) == 8
    assert cli.main([*base, "status"]) == 0
    assert "done 8/8 requests, 14 stored" in capsys.readouterr().out
