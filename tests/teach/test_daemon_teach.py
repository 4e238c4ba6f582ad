"""The real daemon in a subprocess runs a teach job in the background, `samctl teach` follows it,
and SIGTERM during a job stops the daemon within 10 s with the job cancelled and resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam_brain.dev.demo import free_port
from sam_brain.dev.teacher_wire import Wire, samctl_examples, serve
from tests.daemon_proc import wait

pytestmark = pytest.mark.slow
KEY = "sk-test-daemon-Hy7Tr4Ew2Qa9Zx6Cv3Bn8Mk1Lp5Oi0Uj"


def samctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SAM_BRAIN_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "sam_brain.control.cli", "teach", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_daemon_runs_follows_and_stops_a_teach_job(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    home.mkdir()
    with serve(Wire(samctl_examples, key=KEY, delay=0.5)) as wire:
        (home / "config.toml").write_text(f"""
[api]
port = {port}
[sources]
sessions_dirs = ["{tmp_path / "none"}"]
[deployment]
serve_chat = false
[teacher]
provider = "anthropic"
model = "claude-test"
base_url = "{wire.url}"
concurrency = 1
""")
        env = dict(os.environ, SAM_BRAIN_HOME=str(home), HF_HUB_OFFLINE="1", ANTHROPIC_API_KEY=KEY)
        log = tmp_path / "daemon.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sam_brain.control.daemon", "serve"],
                env=env, stdout=fh, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait(lambda: (home / "api.token").exists(), 120, proc, log)
            time.sleep(1)
            done = samctl(home, "generate", "--from", "samctl", "--count", "6",
                          "--batch-size", "2", "--follow")  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "done 3/3 requests, 6 stored" in done.stdout
            # A long one, stopped by SIGTERM after two answers.
            started = samctl(home, "generate", "--from", "samctl", "--count", "40",
                             "--batch-size", "2")  # fmt: skip
            assert started.returncode == 0, started.stderr
            job_id = started.stdout.split()[2]
            wait(lambda: wire.answered >= 5, 60, proc, log)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert time.monotonic() - t0 < 10
        finally:
            if proc.poll() is None:
                proc.kill()
    status = json.loads((home / "teach" / job_id / "status.json").read_text())
    assert status["state"] == "cancelled" and 2 <= status["done"] < 20
    # With the daemon gone, samctl reads the home: the spend is there, the key is nowhere.
    stats = samctl(home, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    by_job = json.loads(stats.stdout)["by_job"]
    assert by_job[job_id]["calls"] >= status["done"]
    for path in home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in log.read_text()
