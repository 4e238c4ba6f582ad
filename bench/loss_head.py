"""Benchmark the training step's loss: ours (LM head on supervised tokens) against mlx-lm's.

One LoRA training step (forward, loss, gradients) of a Qwen2-shaped model with random weights,
timed with our `backends.mlx_loss.masked_loss` and with mlx-lm's own `tuner.trainer.default_loss`
on the same batch and the same supervised span, interleaved and best of `--reps`, at two
vocabulary sizes: the 16,384 of the training benchmark's 33.6M model and the 151,936 of the
Qwen2.5 family (the head then outweighs the blocks). The supervised share of each row is the
share of assistant tokens in the samples the sessions collector makes from
../shared/fixtures/claude-sessions (0.55 when they are absent). Both losses must agree.

Run from the repository root (preload OpenBLAS on Linux, as `make bench` does):
    .venv/bin/python bench/loss_head.py [--quick] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # after the path fix: `python bench/loss_head.py` works

KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
FALLBACK_SHARE = 0.55


def supervised_share() -> tuple[float, str]:
    """Assistant-token share of the fixture samples (tiny tokenizer), and where it came from."""
    if not common.SESSIONS.is_dir():
        return FALLBACK_SHARE, "fallback (no ../shared fixtures)"
    from transformers import AutoTokenizer

    from collectors.sessions import SessionCollector
    from sam_brain.dev.tinymodel import build_tiny_model
    from sam_brain.masking import encode_rows

    class NoCursors:
        def get_cursor(self, key: str) -> str | None:
            return None

    samples = SessionCollector([common.SESSIONS], quiet_minutes=0).collect(NoCursors()).samples
    with common.temp_dir("loss-head") as tmp:
        base = build_tiny_model(Path(tmp) / "m", hidden_size=32, num_layers=1, vocab_size=16384)
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        _, stats = encode_rows(tokenizer, [s.messages for s in samples], 512)
    return stats.supervised_tokens / stats.tokens, f"{stats.kept} fixture samples, 512-token rows"


def step_times(vocab: int, share: float, args: argparse.Namespace) -> dict[str, Any]:
    """Best step time and peak memory of each loss on one model and one batch."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.models import qwen2
    from mlx_lm.tuner.trainer import default_loss
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from backends.mlx_loss import masked_loss

    model_args = qwen2.ModelArgs(
        model_type="qwen2", hidden_size=args.hidden, num_hidden_layers=args.layers,
        intermediate_size=3 * args.hidden, num_attention_heads=4, rms_norm_eps=1e-6,
        vocab_size=vocab, num_key_value_heads=2,
    )  # fmt: skip
    model = qwen2.Model(model_args)
    mx.eval(model.parameters())
    model.freeze()
    lora = {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": KEYS}
    linear_to_lora_layers(model, args.layers, lora)
    rng = np.random.default_rng(0)
    batch, length = args.batch, args.length
    ids = mx.array(rng.integers(0, vocab, (batch, length)).astype(np.int32))
    start = int(length * (1 - share))  # context first, then the supervised reply
    mask = np.zeros((batch, length), np.float32)
    mask[:, start:] = 1
    # mlx-lm's (offset, length) span over the shifted targets: steps start..length-1.
    spans = mx.array(np.tile([start, length - 1], (batch, 1)).astype(np.int32))
    losses = {
        "ours": (nn.value_and_grad(model, masked_loss), (ids, mx.array(mask))),
        "mlx-lm": (nn.value_and_grad(model, default_loss), (ids, spans)),
    }
    best: dict[str, float] = {}
    peak: dict[str, float] = {}
    values: dict[str, float] = {}
    for _ in range(args.reps):
        for name, (fn, inputs) in losses.items():
            mx.clear_cache()
            mx.reset_peak_memory()
            tic = time.perf_counter()
            (loss, ntoks), grads = fn(model, *inputs)
            mx.eval(loss, ntoks, grads)
            elapsed = time.perf_counter() - tic
            best[name] = min(best.get(name, elapsed), elapsed)
            peak[name] = max(peak.get(name, 0.0), mx.get_peak_memory() / 1e6)
            values[name] = float(loss.item())
    params = sum(v.size for _, v in _leaves(model.parameters()))
    return {"best": best, "peak": peak, "loss": values, "params": params,
            "tokens": batch * length}  # fmt: skip


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    return list(tree_flatten(tree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions, best kept")
    args = parser.parse_args()
    args.hidden, args.layers, args.batch, args.length = (
        (64, 2, 2, 64) if args.quick else (512, 8, 4, 512)
    )
    vocabs = [4096, 32768] if args.quick else [16384, 151936]
    share, source = supervised_share()
    print(f"supervised share {share:.3f} ({source}); {common.machine_load()}")
    rows = []
    results = {}
    for vocab in vocabs:
        res = step_times(vocab, share, args)
        results[vocab] = res
        gap = abs(res["loss"]["ours"] - res["loss"]["mlx-lm"])
        if gap > 1e-3 * abs(res["loss"]["mlx-lm"]):
            raise SystemExit(f"losses differ at vocab {vocab}: {res['loss']}")
        for name in ("ours", "mlx-lm"):
            rows.append([f"{res['params'] / 1e6:.1f}M", vocab, name, res["best"][name],
                         res["tokens"] / res["best"][name], res["peak"][name],
                         res["loss"][name]])  # fmt: skip
    common.print_table(
        f"One LoRA step, batch {args.batch} x {args.length} tokens, hidden {args.hidden}, "
        f"{args.layers} layers (best of {args.reps})",
        ["params", "vocab", "loss", "step s", "tokens/s", "peak MB", "loss value"],
        rows,
    )
    for vocab, res in results.items():
        speed = res["best"]["mlx-lm"] / res["best"]["ours"]
        memory = res["peak"]["ours"] / res["peak"]["mlx-lm"]
        print(f"ratio step tokens/s ours/mlx-lm, vocab {vocab}: {speed:.2f}x")
        print(f"ratio step peak memory ours/mlx-lm, vocab {vocab}: {memory:.2f}x")


if __name__ == "__main__":
    main()
