"""Smoke test of bench/train.py and bench/serve.py: both run end to end at tiny sizes.

Each bench runs in its own subprocess with `--quick` (a 0.1M-parameter model, a few steps and
requests), must exit 0 and print every ratio line its goals are judged by. The numbers at these
sizes mean nothing; docs/bench-train-serve.md has the full-size results.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both benches run at once (they are mostly process start-up), each in its own process."""
    work = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if OPENBLAS.exists():
        env.setdefault("LD_PRELOAD", str(OPENBLAS))
    procs = {}
    for script in ("train.py", "serve.py"):
        cmd = [sys.executable, f"bench/{script}", "--quick", "--workdir", str(work / script)]
        with (work / f"{script}.out").open("w") as out, (work / f"{script}.err").open("w") as err:
            procs[script] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
    results = {}
    for script, proc in procs.items():
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.terminate()  # serve.py stops its servers on SIGTERM
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stdout = (work / f"{script}.out").read_text()
        stderr = (work / f"{script}.err").read_text()
        assert proc.returncode == 0, (
            f"{script} exited {proc.returncode}:\n{(stdout + stderr)[-4000:]}"
        )
        results[script] = stdout
    return results


def ratio_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("ratio ")]


def test_train_bench_prints_its_ratios(outputs: dict[str, str]) -> None:
    out = outputs["train.py"]
    lines = ratio_lines(out)
    for pattern in (
        r"ratio uniform tokens/s sam-mlx/mlx-lm: [\d.]+x \(goal >= 0\.95x\) (PASS|MISS)",
        r"ratio skewed effective tokens/s sam-mlx/mlx-lm: [\d.]+x \(goal >= 1\.3x\) (PASS|MISS)",
        r"ratio uniform peak RSS sam-mlx/mlx-lm: [\d.]+x",
        r"ratio skewed peak RSS sam-mlx/mlx-lm: [\d.]+x",
        # The machine's default backend carries the goal (registry.choose_backend), the other not.
        r"ratio uniform training FLOP/s / GEMM peak sam-(torch|mlx) \(default backend here\): "
        r"[\d.]+% \(goal >= 50%\)",
        r"ratio uniform training FLOP/s / GEMM peak sam-(torch|mlx): [\d.]+%",
    ):
        assert sum(bool(re.fullmatch(pattern + ".*", line)) for line in lines) == 1, (pattern, out)
    # Every side trained the same number of steps and counted the same tokens.
    rows = [
        r.split("|") for r in out.splitlines() if r.startswith("| sam-") or r.startswith("| mlx-lm")
    ]
    assert len(rows) == 5
    assert len({(r[2], r[3], r[6]) for r in rows if r[2].strip() == "uniform"}) == 1


def test_serve_bench_prints_its_ratios(outputs: dict[str, str]) -> None:
    out = outputs["serve.py"]
    lines = ratio_lines(out)
    for pattern in (
        r"ratio adapter switch added latency mlx-lm/ours: [-\d.]+x \(goal >= 20x\)",
        r"ratio adapter switch in-process load\(base, adapter\)/resident swap: [\d.]+x",
        r"ratio first request after an adapter change mlx-lm/ours \(1 token\): [\d.]+x",
        r"ratio routed chat overhead vs direct generate: [-+][\d.]+% \(goal <= 5%\)",
        r"ratio /api/self p99 idle at \d+ req/s of 200: [\d.]+ ms",
        r"ratio /api/self p99 busy at \d+ req/s of 200: [\d.]+ ms .*training running "
        r"throughout: True",
    ):
        assert sum(bool(re.fullmatch(pattern + ".*", line)) for line in lines) == 1, (pattern, out)
    assert "0 errors" in out


def test_govern_memory_lowers_the_mlx_cache_limit_but_never_raises_it() -> None:
    """bench/train.py found a raised cache limit kept every batch shape's buffers (1.7x RSS)."""
    mx = pytest.importorskip("mlx.core")
    from backends.mlx_loop import govern_memory

    original = mx.set_cache_limit(32 * 2**20)
    try:
        restore = govern_memory(estimate_mb=4000.0)  # the estimate is above the current limit
        assert mx.set_cache_limit(32 * 2**20) == 32 * 2**20
        restore()
        restore = govern_memory(estimate_mb=8.0)  # below it: the estimate caps the cache
        assert mx.set_cache_limit(32 * 2**20) == 8_000_000
        restore()
        assert mx.set_cache_limit(32 * 2**20) == 32 * 2**20
    finally:
        mx.set_cache_limit(original)


def test_loss_head_bench_runs_and_both_losses_agree() -> None:
    """bench/loss_head.py exits non-zero when our loss and mlx-lm's disagree."""
    pytest.importorskip("mlx_lm")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if OPENBLAS.exists():
        env.setdefault("LD_PRELOAD", str(OPENBLAS))
    proc = subprocess.run(
        [sys.executable, "bench/loss_head.py", "--quick", "--reps", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = ratio_lines(proc.stdout)
    assert len([x for x in lines if x.startswith("ratio step tokens/s ours/mlx-lm")]) == 2
    assert len([x for x in lines if x.startswith("ratio step peak memory ours/mlx-lm")]) == 2
