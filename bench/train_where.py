"""Where a LoRA training step's time goes on the real model (SmolLM2-135M-Instruct, fp32, CPU).

One process per runtime; each part is timed as the best of `--reps` runs (the machine is shared):
the whole step (forward, backward, no optimizer) as our backends compute the loss, the body alone
(30 blocks), the 49k-token head with its cross-entropy on every position vs only on the supervised
ones, and attention alone (30 layers of 9 query / 3 KV heads). torch also runs with 1 and 2
threads and with `sdpa` vs `eager` attention, MLX with OpenBLAS on 2 threads and on 1.

    python bench/train_where.py [--batch 2 --seq 256 --reps 3] [--only mlx|torch]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
LAYERS, HEADS, KV, HEAD_DIM = 30, 9, 3, 64


def best(fn: Callable[[], Any], reps: int) -> float:
    """Least CPU seconds (all threads) of `reps` runs: on a shared machine wall time measures the
    neighbours, CPU time the work (it also counts threads spinning while they wait)."""
    fn()  # warm-up: compile, allocate
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def mlx_parts(base: Path, b: int, n: int, reps: int) -> dict[str, float]:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from backends.mlx_loss import masked_loss, split_head

    model = load(str(base))[0]
    model.freeze()
    linear_to_lora_layers(model, -1, {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": KEYS})
    mx.random.seed(0)
    ids = mx.random.randint(0, 49152, (b, n))
    mask = mx.concatenate([mx.zeros((b, n // 4)), mx.ones((b, n - n // 4))], axis=1)
    body, head = split_head(model) or (None, None)
    assert body is not None and head is not None
    step = nn.value_and_grad(model, lambda m, i, k: masked_loss(m, i, k)[0])
    body_grad = nn.value_and_grad(model, lambda m, i: body(i).sum())
    hidden = mx.random.normal((b * (n - 1), 576))
    targets = ids[:, 1:].reshape(-1)
    keep = int(mask[:, 1:].sum().item())

    def head_cost(h: mx.array, t: mx.array) -> mx.array:
        return nn.losses.cross_entropy(head(h), t).mean()

    head_grad = mx.grad(head_cost)
    q = mx.random.normal((b, HEADS, n, HEAD_DIM))
    kv = mx.random.normal((b, KV, n, HEAD_DIM))

    def attn(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=HEAD_DIM**-0.5, mask="causal")
        return out.sum()

    attn_grad = mx.grad(attn, argnums=(0, 1, 2))
    return {
        "step (fwd+bwd, head on supervised)": best(lambda: mx.eval(step(model, ids, mask)), reps),
        "body fwd+bwd": best(lambda: mx.eval(body_grad(model, ids)), reps),
        "head+CE fwd+bwd, all positions": best(lambda: mx.eval(head_grad(hidden, targets)), reps),
        "head+CE fwd+bwd, supervised only": best(
            lambda: mx.eval(head_grad(hidden[:keep], targets[:keep])), reps
        ),
        "attention fwd+bwd x30": LAYERS * best(lambda: mx.eval(attn_grad(q, kv, kv)), reps),
    }


def torch_parts(base: Path, b: int, n: int, reps: int, threads: int, attn: str) -> dict[str, float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        str(base), dtype=torch.float32, attn_implementation=attn
    )
    cfg = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[k.split(".")[-1] for k in KEYS]
    )
    model = get_peft_model(model, cfg)
    ids = torch.randint(0, 49152, (b, n))
    labels = ids.clone()
    labels[:, : n // 4] = -100

    def step() -> None:
        model(input_ids=ids, labels=labels).loss.backward()

    def body() -> None:
        model.base_model.model.model(input_ids=ids).last_hidden_state.sum().backward()

    head = model.base_model.model.lm_head
    hidden = torch.randn(b * (n - 1), 576, requires_grad=True)
    targets = ids[:, 1:].reshape(-1)
    keep = int((labels[:, 1:] != -100).sum())

    def head_part(k: int) -> Callable[[], None]:
        def run() -> None:
            torch.nn.functional.cross_entropy(head(hidden[:k]), targets[:k]).backward()

        return run

    q = torch.randn(b, HEADS, n, HEAD_DIM, requires_grad=True)
    kv = torch.randn(b, HEADS, n, HEAD_DIM, requires_grad=True)

    def attention() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True).sum().backward()

    return {
        "step (fwd+bwd, HF loss on all positions)": best(step, reps),
        "body fwd+bwd": best(body, reps),
        "head+CE fwd+bwd, all positions": best(head_part(len(targets)), reps),
        "head+CE fwd+bwd, supervised only": best(head_part(keep), reps),
        "attention fwd+bwd x30 (sdpa)": LAYERS * best(attention, reps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", choices=["mlx", "torch"])
    p.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    from sam_brain.dev.realmodel import build_real_model

    base = build_real_model()
    if args.child:
        kind = args.child[0]
        if kind == "mlx":
            parts = mlx_parts(base, args.batch, args.seq, args.reps)
        else:
            parts = torch_parts(
                base, args.batch, args.seq, args.reps, int(args.child[1]), args.child[2]
            )
        print("@@" + json.dumps(parts), flush=True)
        return
    from bench.train import openblas_env, torch_env

    runs = [("mlx", openblas_env(), ["mlx"])]
    runs.append(
        ("mlx, OpenBLAS 1 thread", {**openblas_env(), "OPENBLAS_NUM_THREADS": "1"}, ["mlx"])
    )
    for threads, attn in ((2, "sdpa"), (1, "sdpa"), (2, "eager")):
        runs.append((f"torch {threads} threads {attn}", torch_env(), ["torch", str(threads), attn]))
    runs = [r for r in runs if args.only is None or r[0].startswith(args.only)]
    tokens = args.batch * args.seq
    print(
        f"batch {args.batch} x {args.seq} tokens; best of {args.reps}; CPU seconds (tokens per CPU-s)"
    )
    for label, env, child in runs:
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--seq", str(args.seq)]
        cmd += ["--reps", str(args.reps), "--child", *child]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        line = next((x for x in out.stdout.splitlines() if x.startswith("@@")), None)
        if line is None:
            print(f"{label}: failed\n{out.stderr[-2000:]}")
            continue
        print(f"\n{label}:")
        for part, secs in json.loads(line[2:]).items():
            print(f"  {part:42s} {secs:7.3f} CPU-s  ({tokens / secs:6.0f} tokens/CPU-s)")


if __name__ == "__main__":
    main()
