"""`bench/teach_campaign.py --quick` runs end to end, accounts exactly and prints its ratio."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_teach_campaign_bench_smoke() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "bench/teach_campaign.py", "--quick"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("| exact |") == 2
    assert re.search(r"^ratio wall c1/c8: \d+\.\d+$", out.stdout, re.M)
    assert "same samples and tokens at both concurrencies: yes" in out.stdout
