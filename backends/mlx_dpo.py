"""The optional DPO stage of the MLX backend, run on the best SFT adapter after SFT.

The MLX twin of `backends.cuda_dpo`: when the dataset has `preference.jsonl` (`{"prompt":
[messages], "chosen": str, "rejected": str}` per line), the LoRA weights that SFT left on the
mlx-lm model are trained further on the pairs with the sigmoid DPO loss
`-log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))`, where each log-probability is summed
over exactly the answer tokens `sam_brain.masking` supervises in SFT. As in trl, the reference
policy is the SFT model: its log-probabilities are computed once before the first update, so no
second copy of the model is kept. The effect is measured as in the CUDA stage: the mean over pairs
of the chosen answer's log-probability minus the rejected one's, before and after. The new adapter
replaces the SFT one only when the stage finished with finite numbers and was not cancelled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from backends.dpo_options import SFT_BEST, DpoOptions, DpoOutcome
from backends.mlx_loop import enable_grad_checkpoint
from sam_brain.config import Profile
from sam_brain.errors import TrainingFailed
from sam_brain.fsutil import atomic_file
from sam_brain.masking import encode_chat, load_pairs
from sam_brain.protocols import Message, Progress, TrainSpec

ADAPTER_FILE = "adapters.safetensors"  # the adapter `backends.mlx` writes into out_dir
Pair = dict[str, Any]
# Token ids and loss masks of the prompt + chosen answer, then of the prompt + rejected answer.
Encoded = tuple[list[int], list[int], list[int], list[int]]


def encode_pairs(tokenizer: Any, pairs: list[Pair], max_length: int) -> list[Encoded]:
    """Tokenize each pair with the chat template; pairs with a fully cut-off answer are dropped."""
    encoded = []
    for pair in pairs:
        sides: list[list[int]] = []
        for answer in (pair["chosen"], pair["rejected"]):
            messages: list[Message] = [*pair["prompt"], {"role": "assistant", "content": answer}]
            sides.extend(encode_chat(tokenizer, messages, max_length))
        chosen_ids, chosen_mask, rejected_ids, rejected_mask = sides
        if any(chosen_mask) and any(rejected_mask):
            encoded.append((chosen_ids, chosen_mask, rejected_ids, rejected_mask))
    return encoded


def sequence_logps(model: Any, ids: mx.array, mask: mx.array) -> mx.array:
    """Per row, the log-probability of the masked tokens given everything before them."""
    logits = model(ids[:, :-1]).astype(mx.float32)
    token_logps = -nn.losses.cross_entropy(logits, ids[:, 1:])
    return (token_logps * mask[:, 1:]).sum(axis=-1)


def pair_logps(model: Any, encoded: list[Encoded], batch_size: int = 2) -> np.ndarray:
    """`(n, 2)` log-probabilities of each pair's chosen and rejected answer, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = _pad(encoded, list(range(start, min(start + batch_size, len(encoded)))))
        logps = sequence_logps(model, ids, mask)
        mx.eval(logps)
        out.append(np.array(logps).reshape(2, -1).T)
    model.train()
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def preference_margin(model: Any, encoded: list[Encoded]) -> float:
    """Mean over pairs of log p(chosen) - log p(rejected), summed over supervised tokens."""
    logps = pair_logps(model, encoded)
    return float((logps[:, 0] - logps[:, 1]).mean()) if len(logps) else 0.0


def run_dpo(
    model: Any,
    tokenizer: Any,
    pairs: list[Pair],
    opts: DpoOptions,
    *,
    max_length: int,
    seed: int,
    grad_checkpoint: bool,
    progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> DpoOutcome:
    """Train the model's LoRA weights (its trainable parameters) on the pairs in place.

    Args:
        model: An mlx-lm model whose trainable parameters are the SFT LoRA weights.
        tokenizer: The base model's tokenizer (it holds the chat template).
        pairs: Rows from `load_pairs`.
        opts: beta, learning rate and length of the stage.
        max_length: Longest prompt+answer in tokens.
        seed: Seed for the order of the pairs and for dropout.
        grad_checkpoint: Recompute activations in the backward pass.
        progress: Receives one report per step (`message` starts with "dpo").
        cancelled: Polled after every step; the stage stops early when it turns true.
    """
    encoded = encode_pairs(tokenizer, pairs, max_length)
    if not encoded:
        return DpoOutcome(0.0, 0.0, 0, cancelled=False, finite=True)
    reference = pair_logps(model, encoded, opts.batch_size)  # the frozen SFT policy
    before = float((reference[:, 0] - reference[:, 1]).mean())
    per_epoch = math.ceil(len(encoded) / opts.batch_size)
    total = opts.max_steps if opts.max_steps > 0 else max(1, math.ceil(opts.epochs * per_epoch))
    # trl's defaults: cosine decay to zero without warm-up, Adam without weight decay.
    optimizer = optim.Adam(learning_rate=optim.cosine_decay(opts.learning_rate, total, 0.0))

    def loss_fn(model: Any, ids: mx.array, mask: mx.array, ref: mx.array) -> tuple[mx.array, ...]:
        logps = sequence_logps(model, ids, mask)
        n = logps.shape[0] // 2  # chosen rows first, then rejected
        rewards = opts.beta * ((logps[:n] - ref[:n]) - (logps[n:] - ref[n:]))
        loss = -nn.log_sigmoid(rewards).mean()  # type: ignore[attr-defined]
        return loss, rewards.mean()

    loss_and_grad = nn.value_and_grad(model, loss_fn)  # type: ignore[attr-defined]
    undo_ckpt = enable_grad_checkpoint(model) if grad_checkpoint else None
    losses: list[float] = []
    stopped, tic = False, time.perf_counter()
    model.train()
    try:
        for step, batch in enumerate(islice(_batches(len(encoded), opts, seed), total), 1):
            mx.random.seed(seed * 1_000_003 + step)  # dropout noise follows the step
            ids, mask = _pad(encoded, batch)
            ref = mx.array(np.concatenate([reference[batch, 0], reference[batch, 1]]))
            (loss, margin), grads = loss_and_grad(model, ids, mask, ref)
            optimizer.update(model, grads)
            mx.eval(model.trainable_parameters(), optimizer.state, loss, margin)
            losses.append(float(loss.item()))  # type: ignore[arg-type]
            progress(
                Progress(
                    step=step,
                    total_steps=total,
                    train_loss=losses[-1],
                    eta_seconds=(time.perf_counter() - tic) / step * (total - step),
                    message=f"dpo: reward margin {float(margin.item()):.4f}",  # type: ignore[arg-type]
                )
            )
            if not math.isfinite(losses[-1]):
                break
            if cancelled():
                stopped = True
                break
    finally:
        if undo_ckpt is not None:
            undo_ckpt()
    after = preference_margin(model, encoded)
    finite = math.isfinite(after) and all(math.isfinite(x) for x in losses)
    return DpoOutcome(before, after, len(losses), stopped, finite, len(encoded))


def dpo_stage(
    model: Any,
    tokenizer: Any,
    spec: TrainSpec,
    profile: Profile,
    opts: DpoOptions,
    metrics: dict[str, float],
    notes: list[str],
    progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> None:
    """DPO on the best SFT adapter of `spec.out_dir` when `preference.jsonl` has rows.

    Starts from `checkpoint/sft_best.safetensors` (the SFT result, even when the run is repeated
    after an earlier DPO), adds `dpo_margin_before/after`, `dpo_steps` and `dpo_seconds` to
    `metrics` (and its time to `wall_seconds`) and what happened to `notes`, and rewrites
    `adapters.safetensors` only if the stage stayed finite and was not cancelled.

    Raises:
        BadRequest: `preference.jsonl` is malformed.
        TrainingFailed: The SFT adapter file holds no named tensors.
    """
    pairs = load_pairs(Path(spec.data_dir) / "preference.jsonl")
    if not pairs:
        return
    tic = time.perf_counter()
    out = Path(spec.out_dir)
    start = out / "checkpoint" / SFT_BEST
    start = start if start.exists() else out / ADAPTER_FILE  # a run dir from before this stage
    weights = mx.load(str(start))
    if not isinstance(weights, dict):
        raise TrainingFailed(f"{start} is not a safetensors file of named tensors")
    model.load_weights(list(weights.items()), strict=False)
    dpo = run_dpo(
        model, tokenizer, pairs, opts, max_length=profile.max_seq_length, seed=spec.seed,
        grad_checkpoint=profile.grad_checkpoint, progress=progress, cancelled=cancelled,
    )  # fmt: skip
    metrics["dpo_margin_before"] = dpo.margin_before
    metrics["dpo_margin_after"] = dpo.margin_after
    metrics["dpo_steps"] = float(dpo.steps)
    metrics["dpo_seconds"] = round(time.perf_counter() - tic, 3)
    # wall_seconds covers the whole run: the manifest derives its start time from it.
    metrics["wall_seconds"] = round(metrics.get("wall_seconds", 0.0) + metrics["dpo_seconds"], 3)
    dropped = len(pairs) - dpo.pairs
    if dropped:
        notes.append(f"dpo: {dropped} pairs dropped with no answer tokens within max_seq_length")
    if dpo.steps and dpo.finite and not dpo.cancelled:
        with atomic_file(out / ADAPTER_FILE) as tmp:
            mx.save_safetensors(str(tmp), dict(tree_flatten(model.trainable_parameters())))
        notes.append(f"dpo: {dpo.pairs} pairs, {dpo.steps} steps, beta {opts.beta}")
    elif dpo.steps:
        notes.append("dpo: cancelled or diverged; the SFT adapter is kept")


def _batches(n: int, opts: DpoOptions, seed: int) -> Iterator[list[int]]:
    """Pair indices in batches, reshuffled every epoch, for as long as the caller asks."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n).tolist()
        for start in range(0, n, opts.batch_size):
            yield order[start : start + opts.batch_size]


def _pad(encoded: list[Encoded], indices: list[int]) -> tuple[mx.array, mx.array]:
    """The chosen sequences of `indices`, then their rejected ones, right-padded to one width."""
    rows = [(encoded[i][0], encoded[i][1]) for i in indices]
    rows += [(encoded[i][2], encoded[i][3]) for i in indices]
    width = max(len(row_ids) for row_ids, _ in rows)
    ids = np.zeros((len(rows), width), dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.float32)
    for r, (row_ids, row_mask) in enumerate(rows):
        ids[r, : len(row_ids)] = row_ids
        mask[r, : len(row_mask)] = row_mask
    return mx.array(ids), mx.array(mask)
