"""Training speed on a real model (`bench/train.py --real`): SmolLM2-135M-Instruct, fp32 LoRA.

Four sides train the same rows (uniform length, text of the tiny corpus through SmolLM2's own
tokenizer) with the same LoRA (r 8, alpha 16, q/k/v/o of all 30 layers), batch and steps, each in
its own process: ours on MLX (`python -m sam_brain.train.worker mlx`, OpenBLAS preloaded), ours on
torch (`... worker cuda`, fp32 on the CPU), `python -m mlx_lm lora`, and a plain transformers + peft
loop (`bench/peft_loop.py`). Tokens/s over the training loop, peak RSS, and the achieved training
FLOP/s (4 x params per token plus causal attention) as a share of the fp32 GEMM peak measured
right before each run. The goal: ours >= 1.0x the best peer.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.train import measure_gemm, run_mlx_lm, run_ours, run_process, torch_env
from bench.train_data import encoded_lengths, train_flops, write_dataset
from bench.train_report import Side, Sizes

REPO = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN = 30, 576
PARAMS = 134_515_008


def real_sizes(steps: int, seq: int) -> Sizes:
    return Sizes(
        hidden=HIDDEN,
        layers=LAYERS,
        vocab=49152,
        rows=2 * steps,
        batch=2,
        epochs=1,
        uniform_len=seq,
        max_seq=seq + 64,
        lr=1e-4,
    )


def run_peft(base: Path, data: Path, work: Path, sz: Sizes, run: int) -> Side:
    out = work / f"peft-loop-{run}"
    cmd = [sys.executable, str(REPO / "bench" / "peft_loop.py"), str(base), str(data)]
    cmd += ["--steps", str(sz.steps), "--batch", str(sz.batch), "--max-seq", str(sz.max_seq)]
    cmd += ["--rank", str(sz.rank), "--alpha", str(sz.alpha), "--lr", str(sz.lr)]
    code, lines, wall, rss = run_process(cmd, torch_env(), out.with_suffix(".log"), 3600)
    doc = next((json.loads(t[2:]) for _, t in lines if t.startswith("@@")), None)
    if code != 0 or doc is None:
        raise SystemExit(f"peft loop failed (exit {code}); see {out.with_suffix('.log')}")
    side = Side("peft-loop", data.name, float(doc["seconds"]), wall, int(doc["tokens"]))
    side.steps, side.peak_rss_mb = int(doc["steps"]), rss
    return side


def main_real(work: Path, steps: int, seq: int, gemm_n: int, order: list[str]) -> None:
    from sam_brain.dev.realmodel import build_real_model

    sz = real_sizes(steps, seq)
    base = build_real_model()
    data = work / "uniform"
    write_dataset(base, data, [sz.uniform_len] * sz.rows, seed=1)
    ours_len, theirs_len = encoded_lengths(base, data, sz.max_seq)
    flops = train_flops(ours_len, PARAMS, LAYERS, HIDDEN)
    sides: list[Side] = []
    gemms: list[dict[str, float]] = []
    for i, name in enumerate(order):
        gemms.append(measure_gemm(gemm_n))
        if name == "mlx-lm":
            side = run_mlx_lm(base, data, work, sz, sum(theirs_len), i)
        elif name == "peft-loop":
            side = run_peft(base, data, work, sz, i)
        else:
            backend = "mlx" if name == "sam-mlx" else "cuda"
            side = run_ours(backend, base, data, work, sz, name, i)
        side.flops = flops if name != "mlx-lm" else train_flops(theirs_len, PARAMS, LAYERS, HIDDEN)
        side.gemm_seconds = side.loop_seconds * max(gemms[-1].values(), default=0)
        sides.append(side)
        print(f"  {name}: {side.tokens_per_s:.1f} tokens/s", flush=True)
    report_real(sz, sides, gemms, ours_len)


def report_real(
    sz: Sizes, sides: list[Side], gemms: list[dict[str, float]], lengths: list[int]
) -> None:
    load = os.getloadavg()
    print(
        f"\nmodel: SmolLM2-135M-Instruct (LlamaForCausalLM, {PARAMS / 1e6:.1f}M params, fp32); "
        f"batch {sz.batch} x {lengths[0]} tokens, {sz.steps} optimizer steps, "
        f"LoRA r{sz.rank} alpha {sz.alpha:g} on q/k/v/o of all {LAYERS} layers"
    )
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)")
    peaks: dict[str, Any] = {k: [round(g[k]) for g in gemms if k in g] for k in gemms[0]}
    print(f"fp32 GEMM GFLOP/s before each run: {peaks}")
    print(
        "\n| side | steps | loop s | wall s | tokens | tokens/s | GFLOP/s | % of peak | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sides:
        print(
            f"| {s.name} | {s.steps} | {s.loop_seconds:.1f} | {s.wall_seconds:.1f} | {s.tokens} "
            f"| {s.tokens_per_s:.1f} | {s.flop_per_s / 1e9:.1f} | {s.share_of_peak:.1%} "
            f"| {s.peak_rss_mb:.0f} |"
        )
    best: dict[str, Side] = {}
    for s in sides:
        if s.name not in best or s.tokens_per_s > best[s.name].tokens_per_s:
            best[s.name] = s
    peers = [best[n] for n in ("mlx-lm", "peft-loop") if n in best]
    if not peers:
        return
    peer = max(peers, key=lambda s: s.tokens_per_s)
    for ours in ("sam-mlx", "sam-torch"):
        if ours in best:
            ratio = best[ours].tokens_per_s / peer.tokens_per_s
            verdict = "PASS" if ratio >= 1.0 else "MISS"
            print(
                f"ratio tokens/s {ours}/best peer ({peer.name}): {ratio:.2f}x (goal >= 1.0x) {verdict}"
            )
