"""Benchmark LoRA training: SAM Brain's MLX and torch backends against raw `python -m mlx_lm lora`.

Builds a Qwen2-style model offline (`sam_brain.dev.tinymodel`; default hidden 512, 8 layers, vocab
16384: 33.6M parameters), writes two datasets of `{"messages"}` rows (uniform length, and lengths
drawn from a log-normal fitted to the ../shared transcript fixtures) and trains every side in its
own subprocess: `python -m sam_brain.train.worker mlx|cuda` (the daemon's own training process) and
`python -m mlx_lm lora -c config.yaml`. All sides run the same number of optimizer steps (whole
epochs, so they see the same rows), batch size, LoRA rank/scale/keys/layers and learning rate.
Tokens/s counts non-padding tokens over the training loop only (validation, loading and saving
excluded: ours reports its step time, mlx-lm's is read from the timestamps of its report lines);
peak memory is each process's peak RSS (`wait4`). An fp32 GEMM is timed right before each run, so
the achieved training FLOP/s (4 x params per token plus causal attention) is a share of a measured
peak. The machine is shared: sides alternate (ours, mlx-lm, torch, mlx-lm, ours) and each goal is
judged on every side's best run, with all runs pooled printed beside it.

Run from the repository root (OpenBLAS is preloaded for the MLX sides when installed):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--quick] [--skip-torch]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py --real [--steps 4 --seq 256]  # SmolLM2-135M
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: import the checkout's packages

from bench.train_data import encoded_lengths, fixture_fit, train_flops, write_dataset  # noqa: E402
from bench.train_report import QUICK, Side, Sizes, padding, report  # noqa: E402

KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
TRAIN_LINE = re.compile(r"^\s*(\d+)\s+[-\d.naninf]+\s*[▼▲]")
VAL_LINE = re.compile(r"^\s*(\d+)\s+val\s")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # rich colours mlx-lm's output even into a pipe


# ---------------------------------------------------------------------------------------------
# Processes


def openblas_env() -> dict[str, str]:
    from sam_brain.train.supervisor import worker_env

    env = worker_env("mlx")
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def torch_env() -> dict[str, str]:
    """The torch side runs with its own bundled BLAS: no OpenBLAS preloaded under it."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_process(
    cmd: list[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[int, list[tuple[float, str]], float, float]:
    """Run `cmd`; returns (exit code, timestamped output lines, wall seconds, peak RSS MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    try:
        with log.open("w", encoding="utf-8") as fh:
            for line in proc.stdout:
                lines.append((time.perf_counter(), ANSI.sub("", line)))
                fh.write(line)
    except BaseException:  # interrupted: never leave a training process behind
        proc.kill()
        raise
    finally:
        timer.cancel()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, lines, time.perf_counter() - start, usage.ru_maxrss / 1024


def run_ours(
    backend: str, base: Path, data: Path, work: Path, sz: Sizes, name: str, run: int
) -> Side:
    """One run of the daemon's training worker (`python -m sam_brain.train.worker BACKEND spec`)."""
    from sam_brain.config import Profile
    from sam_brain.protocols import TrainSpec

    profile = Profile(
        lora_rank=sz.rank,
        lora_alpha=sz.alpha,
        lora_keys=KEYS,
        num_layers=-1,
        batch_size=sz.batch,
        grad_accum=1,
        max_seq_length=sz.max_seq,
        learning_rate=sz.lr,
        max_steps=sz.steps,
        eval_every=10 * sz.steps,
        save_every=10 * sz.steps,
    )
    out = work / f"{name}-{data.name}-{run}"
    spec = TrainSpec(name, str(base), str(data), str(out), asdict(profile), seed=0, resume=False)
    spec_path = out.with_suffix(".json")
    spec_path.write_text(spec.to_json(), encoding="utf-8")
    env = openblas_env() if backend == "mlx" else torch_env()
    env["SAM_BRAIN_CUDA_QUANTIZE"] = "0"  # CudaBackend(quantize=False): fp32 LoRA on the CPU
    cmd = [sys.executable, "-m", "sam_brain.train.worker", backend, str(spec_path)]
    code, lines, wall, rss = run_process(cmd, env, out.with_suffix(".log"), 3600)
    result = next(
        (json.loads(t[2:]) for _, t in lines if t.startswith("@@") and '"result"' in t), None
    )
    if code != 0 or result is None:
        raise SystemExit(f"{name} failed (exit {code}); see {out.with_suffix('.log')}")
    metrics = result["metrics"]
    side = Side(name, data.name, float(metrics["seconds"]), wall, int(metrics["tokens"]))
    side.steps, side.peak_rss_mb = int(metrics["steps"]), rss
    return side


def run_mlx_lm(base: Path, data: Path, work: Path, sz: Sizes, tokens: int, run: int) -> Side:
    """One run of `python -m mlx_lm lora` with the same LoRA settings and steps."""
    import yaml

    adapters = work / f"mlx-lm-{data.name}-{run}"
    config = {
        "model": str(base),
        "train": True,
        "data": str(data),
        "fine_tune_type": "lora",
        "optimizer": "adam",
        "mask_prompt": True,
        "num_layers": -1,
        "batch_size": sz.batch,
        "iters": sz.steps,
        "grad_accumulation_steps": 1,
        "learning_rate": sz.lr,
        "steps_per_report": 1,
        "steps_per_eval": 10 * sz.steps,
        "val_batches": 1,
        "save_every": 10 * sz.steps,
        "max_seq_length": sz.max_seq,
        "adapter_path": str(adapters),
        "seed": 0,
        "lora_parameters": {
            "rank": sz.rank,
            "scale": sz.alpha / sz.rank,
            "dropout": 0.0,
            "keys": KEYS,
        },
    }
    cfg = adapters.with_suffix(".yaml")
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "-c", str(cfg)]
    log = adapters.with_suffix(".log")
    code, lines, wall, rss = run_process(cmd, openblas_env(), log, 3600)
    if code != 0:
        raise SystemExit(f"mlx_lm lora failed (exit {code}); see {log}")
    trains = {int(m.group(1)): t for t, s in lines if (m := TRAIN_LINE.match(s))}
    vals = {int(m.group(1)): t for t, s in lines if (m := VAL_LINE.match(s))}
    n = sz.steps
    if set(trains) != set(range(1, n + 1)) or 1 not in vals or n not in vals:
        raise SystemExit(f"could not read mlx-lm's step reports; see {log}")
    # Step 1 starts after the first validation; the last step runs after the final validation.
    if n == 1:
        loop = trains[1] - vals[1]
    else:
        loop = (trains[n - 1] - vals[1]) + (trains[n] - vals[n])
    side = Side("mlx-lm", data.name, loop, wall, tokens, steps=len(trains), peak_rss_mb=rss)
    return side


def measure_gemm(n: int, with_torch: bool = True) -> dict[str, float]:
    """Best fp32 GEMM GFLOP/s of numpy, mlx (both with the preload) and torch, in subprocesses."""
    code = f"""
import json, sys, time
n, which, out = {n}, sys.argv[1], {{}}
def best(fn, reps=5):
    fn(); t = min(_timed(fn) for _ in range(reps)); return 2 * n**3 / t / 1e9
def _timed(fn):
    t0 = time.perf_counter(); fn(); return time.perf_counter() - t0
if which == "mlx":
    import numpy as np
    a = np.random.rand(n, n).astype(np.float32); b = np.random.rand(n, n).astype(np.float32)
    out["numpy"] = best(lambda: a @ b)
    import mlx.core as mx
    x = mx.random.normal((n, n)); y = mx.random.normal((n, n)); mx.eval(x, y)
    out["mlx"] = best(lambda: mx.eval(x @ y))
else:
    import torch
    x = torch.randn(n, n); y = torch.randn(n, n)
    out["torch"] = best(lambda: x @ y)
print(json.dumps(out))
"""
    result: dict[str, float] = {}
    for which, env in (("mlx", openblas_env()), ("torch", torch_env()))[: 1 + with_torch]:
        proc = subprocess.run(
            [sys.executable, "-c", code, which],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode == 0:
            result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--skip-torch", action="store_true", help="leave out the torch backend")
    parser.add_argument("--workdir", type=Path, help="keep models, data and logs here")
    parser.add_argument("--gemm", type=int, default=2048, help="GEMM size for the peak")
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct (train_real.py)")
    parser.add_argument("--steps", type=int, default=4, help="--real: optimizer steps per side")
    parser.add_argument("--seq", type=int, default=256, help="--real: tokens per row")
    parser.add_argument(
        "--order", default="sam-mlx,mlx-lm,sam-torch,peft-loop", help="--real: sides, in order"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, killing the current side
    if args.real:
        from bench.train_real import main_real

        with tempfile.TemporaryDirectory(prefix="sam-bench-real-") as tmp:
            work = args.workdir or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            main_real(work, args.steps, args.seq, args.gemm, args.order.split(","))
        return
    sz = QUICK if args.quick else Sizes()

    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from sam_brain.dev.tinymodel import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="sam-bench-train-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = build_tiny_model(
            work / "base", hidden_size=sz.hidden, num_layers=sz.layers, vocab_size=sz.vocab
        )
        params = sum(int(v.size) for v in load_file(str(base / "model.safetensors")).values())
        tok = Tokenizer.from_file(str(base / "tokenizer.json"))
        mu, sigma, n_fit = fixture_fit(tok)
        rng = np.random.default_rng(0)
        floor = 24 + 8  # template overhead plus a few content tokens
        skewed = [int(np.clip(rng.lognormal(mu, sigma), floor, sz.max_seq)) for _ in range(sz.rows)]
        data = {
            "uniform": [sz.uniform_len] * sz.rows,
            "skewed": skewed,
        }
        for name, lengths in data.items():
            write_dataset(base, work / name, lengths, seed=1)

        gemms: list[dict[str, float]] = []
        sides: list[Side] = []
        info: dict[str, dict[str, Any]] = {}
        for name in data:
            ours_len, theirs_len = encoded_lengths(base, work / name, sz.max_seq)
            per_epoch = sum(ours_len)
            flops = sz.epochs * train_flops(ours_len, params, sz.layers, sz.hidden)
            info[name] = {
                "rows": len(ours_len),
                "tokens_per_epoch": per_epoch,
                "mlx_lm_tokens_per_epoch": sum(theirs_len),
                "min": min(ours_len),
                "median": sorted(ours_len)[len(ours_len) // 2],
                "max": max(ours_len),
                "padding_mlx_lm": padding(ours_len, sz.batch, 32, 1, sz.max_seq),
                "padding_ours": padding(ours_len, sz.batch, 8, 0, sz.max_seq),
            }
            # Sides alternate (ours, mlx-lm, torch, mlx-lm, ours) so a change in the machine's
            # load during the run hits both sides of the comparison alike.
            order = ["sam-mlx", "mlx-lm", "sam-torch", "mlx-lm", "sam-mlx"]
            if args.quick:  # the smoke test: one run each, torch once (its import takes seconds)
                order = order[:3] if name == "uniform" else order[:2]
            order = [o for o in order if not (args.skip_torch and o == "sam-torch")]
            runs = []
            for i, side_name in enumerate(order):
                # The machine is shared: time the GEMM peak right before each run.
                if not args.quick:
                    gemms.append(measure_gemm(args.gemm))
                elif not gemms:  # the smoke test measures once, a small one
                    gemms.append(measure_gemm(256, False))
                if side_name == "mlx-lm":
                    tokens = sz.epochs * sum(theirs_len)
                    runs.append(run_mlx_lm(base, work / name, work, sz, tokens, i))
                else:
                    backend = "mlx" if side_name == "sam-mlx" else "cuda"
                    runs.append(run_ours(backend, base, work / name, work, sz, side_name, i))
                runs[-1].gemm_seconds = runs[-1].loop_seconds * max(gemms[-1].values(), default=0)
            for side in runs:
                side.flops = flops
                if side.tokens != sz.epochs * per_epoch:
                    side.notes.append(f"counted {side.tokens} tokens")
            sides += runs
    report(sz, params, sides, info, gemms, (mu, sigma, n_fit))


if __name__ == "__main__":
    main()
