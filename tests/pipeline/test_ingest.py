"""The ingest pipeline end to end on real transcripts, and crash safety of the pool."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.pipeline.ingest import ingest

pytestmark = pytest.mark.slow


def open_home(root: Path) -> Home:
    return Home.open(parse_config({"data_dir": str(root), "pipeline": {"max_tokens": 32768}}))


def test_real_fixtures_go_through_every_stage(tmp_path: Path, shared_dir: Path) -> None:
    from collectors.sessions import SessionCollector

    src = tmp_path / "projects"
    shutil.copytree(shared_dir / "fixtures" / "claude-sessions", src)
    home = open_home(tmp_path / "home")
    collector = SessionCollector(dirs=[src], quiet_minutes=0.0, archive_dir=home.archive_dir)
    report = ingest(home, collector)
    assert report.collected > 0
    assert report.stored + sum(report.dropped.values()) == report.collected
    assert report.skipped  # the synthetic file's bad lines are counted by reason
    texts = [s.text() for s, _ in home.pool.samples()]
    assert len(texts) == report.stored == home.pool.count()
    # The developer's home path never reaches the pool.
    assert not any("/home/marco" in t for t in texts)
    reports = list((tmp_path / "home" / "reports").glob("ingest-*.json"))
    assert len(reports) == 1
    # Re-running finds nothing new, stores nothing twice and writes no report (a daemon polls).
    again = ingest(home, collector)
    assert again.inserted == 0 and home.pool.count() == report.stored
    assert again.skipped["unchanged"] > 0
    assert list((tmp_path / "home" / "reports").glob("ingest-*.json")) == reports
    home.close()


def test_kill_during_ingest_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    from sam_brain.dev.examples import write_example_sessions

    src = tmp_path / "projects"
    write_example_sessions(src, n_sessions=40, seed=7)
    ref_root = tmp_path / "ref"
    env = dict(os.environ, SAM_BRAIN_HOME=str(ref_root))
    cmd = [
        sys.executable,
        "-m",
        "sam_brain.control.cli",
        "ingest",
        "sessions",
        str(src),
        "--now",
        "--json",
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    ref = open_home(ref_root)
    expected = sorted(s.id for s, _ in ref.pool.samples())
    ref.close()
    assert len(expected) > 40

    for i, delay in enumerate((0.8, 1.6, 2.4)):
        root = tmp_path / f"crash{i}"
        env = dict(os.environ, SAM_BRAIN_HOME=str(root))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        json.loads(done.stdout)
        home = open_home(root)
        ids = [s.id for s, _ in home.pool.samples()]
        assert sorted(ids) == expected, f"kill after {delay}s"
        assert len(ids) == len(set(ids)) == home.pool.count()
        home.close()
