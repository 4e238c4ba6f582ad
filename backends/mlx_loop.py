"""The MLX training loop (batches, masked loss, optimizer steps) and the sizing of a run.

mlx-lm's `tuner.trainer.train` supervises one contiguous completion per row, averages
accumulated gradients per micro-batch, and keeps neither optimizer state nor data position, so
this loop replaces it while reusing mlx-lm's model and LoRA layers. The bookkeeping shared with
the CUDA backend (seeded batch order, so the data position is one integer `RunState.micro` and a
resumed run sees exactly the batches an uninterrupted run would; progress, validation, early
stop) is `backends/run_state.py`; here is what touches MLX: padding, one optimizer step with
gradients accumulated weighted by supervised tokens, and gradient checkpointing. The sizing half
reads a model's shape from its files, estimates peak memory and sets MLX's memory limits. Files
(adapters, checkpoints, manifest) are written by `backends/mlx.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from backends.mlx_loss import evaluate, masked_loss
from backends.run_state import (
    BatchOrder,
    Hooks,
    LoopConfig,
    Row,
    RunState,
    check_finite,
    padded_width,
    run_loop,
)
from sam_brain.config import Profile
from sam_brain.errors import ModelUnavailable


class Buckets:
    """Rows sorted by length and cut into batches; each epoch visits them in a seeded order."""

    def __init__(self, rows: list[Row], batch_size: int, seed: int) -> None:
        self.rows = rows
        self.order = BatchOrder(rows, batch_size, seed)
        self.batches = self.order.batches

    def __len__(self) -> int:
        return len(self.batches)

    def micro_batch(self, micro: int) -> tuple[mx.array, mx.array, int]:
        """The `micro`-th micro-batch of the endless epoch sequence: ids, mask, real tokens."""
        return self.pad(self.order.indices(micro))

    def in_order(self) -> Iterator[tuple[mx.array, mx.array, int]]:
        """Every batch once, shortest first (for evaluation)."""
        for batch in self.batches:
            yield self.pad(batch)

    def pad(self, indices: list[int]) -> tuple[mx.array, mx.array, int]:
        lengths = [len(self.rows[i][0]) for i in indices]
        width = padded_width(lengths)
        ids = np.zeros((len(indices), width), dtype=np.int32)
        mask = np.zeros((len(indices), width), dtype=np.float32)
        for r, i in enumerate(indices):
            row_ids, row_mask = self.rows[i]
            ids[r, : len(row_ids)] = row_ids
            mask[r, : len(row_mask)] = row_mask
        return mx.array(ids), mx.array(mask), sum(lengths)


def enable_grad_checkpoint(model: Any) -> Callable[[], None]:
    """Recompute each transformer block in the backward pass; returns a function that undoes it.

    mlx-lm patches `type(layer).__call__`, which changes every model of that class in the process;
    here each block instance gets its own subclass, so generation elsewhere is unaffected.
    """
    layers: list[Any] = list(model.layers)
    originals = [type(layer) for layer in layers]
    subclasses: dict[type, type] = {}
    for layer, cls in zip(layers, originals, strict=True):
        if cls not in subclasses:
            subclasses[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": _ckpt_call})
        layer.__class__ = subclasses[cls]

    def undo() -> None:
        for layer, cls in zip(layers, originals, strict=True):
            layer.__class__ = cls

    return undo


def _ckpt_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    base_call = type(self).__mro__[1].__call__

    def inner(params: Any, *a: Any, **kw: Any) -> Any:
        self.update(params)
        return base_call(self, *a, **kw)

    return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)


def run_steps(
    model: Any,
    optimizer: Any,
    train: Buckets,
    valid: Buckets | None,
    state: RunState,
    cfg: LoopConfig,
    hooks: Hooks,
) -> str:
    """Train until `cfg.total_steps`, cancellation or early stop; returns why it stopped.

    Raises:
        TrainingFailed: The training loss became NaN or infinite.
    """
    loss_and_grad = nn.value_and_grad(model, masked_loss)  # type: ignore[attr-defined]
    model.train()

    def step(seed: int) -> tuple[float, int]:
        mx.random.seed(seed)
        start_micro = state.micro
        grads: Any = None
        loss_sum, sup_tokens, real_tokens = mx.array(0.0), mx.array(0.0), 0
        try:
            for _ in range(state.grad_accum):
                ids, mask, n_real = train.micro_batch(state.micro)
                state.micro += 1
                (loss, ntoks), grad = loss_and_grad(model, ids, mask)
                # Weight by supervised tokens: the sum divided by the total below.
                grad = tree_map(lambda g, n=ntoks: g * n, grad)
                grads = grad if grads is None else tree_map(mx.add, grads, grad)
                loss_sum = loss_sum + loss * ntoks
                sup_tokens = sup_tokens + ntoks
                real_tokens += n_real
                mx.eval(grads, loss_sum, sup_tokens)
        except BaseException:
            state.micro = start_micro  # the step never happened; retry it from the same data
            raise
        step_loss = float((loss_sum / sup_tokens).item())  # type: ignore[arg-type]
        check_finite(step_loss, state.step + 1)
        optimizer.update(model, tree_map(lambda g, n=sup_tokens: g / n, grads))
        mx.eval(model.trainable_parameters(), optimizer.state)
        return step_loss, real_tokens

    validate = (lambda: evaluate(model, valid)) if valid is not None else None
    return run_loop(state, cfg, hooks, step, validate, lambda: mx.get_peak_memory() / 1e6)


def govern_memory(estimate_mb: float) -> Callable[[], None]:
    """Cap MLX's memory at 80% of RAM and its buffer cache at the run's estimate.

    The cache limit is only lowered, never raised (Linux default 32 MB): a cache the size of the
    estimate kept buffers of every batch shape, 1.7x mlx-lm's peak RSS. Returns a function
    restoring the previous limits (tests train several times per process).
    """
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = int(ram * 0.8)
    prev_memory = mx.set_memory_limit(limit)
    prev_cache = mx.set_cache_limit(min(limit // 2, int(estimate_mb * 1e6)))
    mx.set_cache_limit(min(prev_cache, limit // 2, int(estimate_mb * 1e6)))

    def restore() -> None:
        mx.set_memory_limit(prev_memory)
        mx.set_cache_limit(prev_cache)

    return restore


@dataclass(frozen=True)
class ModelShape:
    """What preflight needs from a base model directory, read without loading weights."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    weight_bytes: int
    linears: dict[str, tuple[int, int]]  # block-relative module -> (in, out) features


def read_model_shape(base: Path) -> ModelShape:
    """Layer count, sizes and the linear modules of block 0, from config.json and headers."""
    from safetensors import safe_open

    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config", config)
    bits = int((config.get("quantization") or {}).get("bits", 32))
    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise ModelUnavailable(f"no *.safetensors weights in {base}")
    linears: dict[str, tuple[int, int]] = {}
    prefix = "model.layers.0."
    for file in files:
        with safe_open(str(file), framework="numpy") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.startswith(prefix) and key.endswith(".weight"):
                    dims = fh.get_slice(key).get_shape()
                    if len(dims) == 2:
                        # Quantized weights pack 32 // bits values per uint32 column.
                        linears[key[len(prefix) : -len(".weight")]] = (
                            dims[1] * 32 // bits,
                            dims[0],
                        )
    return ModelShape(
        num_layers=int(text["num_hidden_layers"]),
        hidden_size=int(text["hidden_size"]),
        intermediate_size=int(text.get("intermediate_size", 4 * text["hidden_size"])),
        vocab_size=int(text["vocab_size"]),
        weight_bytes=sum(f.stat().st_size for f in files),
        linears=linears,
    )


def estimate_memory_mb(shape: ModelShape, opts: Profile, seq: int) -> float:
    """Rough peak memory of one training step: weights, LoRA + Adam, activations, logits."""
    hidden, inter = shape.hidden_size, shape.intermediate_size
    layers = shape.num_layers if opts.num_layers == -1 else opts.num_layers
    lora = layers * sum(
        opts.lora_rank * sum(shape.linears.get(k, (hidden, hidden))) for k in opts.lora_keys
    )
    tokens = opts.batch_size * max(seq, 1)
    per_layer = 4 * (10 * hidden + 3 * inter)  # fp32 tensors a block keeps for backward
    if opts.grad_checkpoint:
        acts = tokens * (shape.num_layers * 4 * hidden + per_layer)
    else:
        acts = tokens * shape.num_layers * per_layer
    logits = tokens * shape.vocab_size * 4 * 3  # logits, softmax, their gradient
    return 1.2 * (shape.weight_bytes + 16 * lora + acts + logits) / 1e6
