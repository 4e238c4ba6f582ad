"""Each data-pipeline benchmark runs end to end at smoke size, exits 0 and prints its ratio.

The four runs start together (the freshness one mostly waits for the daemon to start), so the
file takes about as long as the slowest of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "fixtures" / "claude-sessions"
RATIO = re.compile(r"^ratio [^:]+: (\d+\.\d+|n/a)", re.M)
BENCHES = {
    "extract": ["bench/ingest.py", "extract", "--quick"],
    "pipeline": ["bench/ingest.py", "pipeline", "--quick", "--no-teich"],
    "freshness": ["bench/ingest.py", "freshness", "--quick", "--quiet-minutes", "0.01"],
    "dedup": ["bench/dedup.py", "--quick"],
    "secrets": ["bench/scrub_secrets.py", "--quick"],
}

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared fixtures are absent")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.Popen[str], Path]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    logs = tmp_path_factory.mktemp("bench-smoke")
    started = {}
    for name, args in BENCHES.items():
        log = logs / f"{name}.log"
        with log.open("w") as fh:  # files, not pipes: a full pipe would stall a run
            proc = subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=env, text=True, stdout=fh, stderr=fh
            )
        started[name] = (proc, log)
    return started


@pytest.mark.parametrize("name", list(BENCHES))
def test_bench_runs_and_prints_a_ratio(
    runs: dict[str, tuple[subprocess.Popen[str], Path]], name: str
) -> None:
    proc, log = runs[name]
    try:
        proc.wait(timeout=170)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    ratios = RATIO.findall(out)
    assert ratios, out[-2000:]
    assert all(r == "n/a" or float(r) > 0 for r in ratios)
