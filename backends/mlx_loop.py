"""The MLX training loop (batches, masked loss, optimizer steps) and the sizing of a run.

mlx-lm's `tuner.trainer.train` supervises one contiguous completion per row, averages
accumulated gradients per micro-batch, and keeps neither optimizer state nor data position, so
this loop replaces it while reusing mlx-lm's model and LoRA layers. Rows are sorted by length and
cut into batches whose order is reshuffled each epoch from `(seed, epoch)`, so the data position
is one integer (`RunState.micro`) and a resumed run sees exactly the batches an uninterrupted run
would. Gradients are accumulated weighted by supervised tokens. The sizing half reads a model's
shape from its files, estimates peak memory, sets MLX's memory limits and shrinks the batch after
an out-of-memory error. Files (adapters, checkpoints, manifest) are written by `backends/mlx.py`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from backends.mlx_loss import evaluate, masked_loss
from sam_brain.config import Profile
from sam_brain.errors import ModelUnavailable, TrainingFailed
from sam_brain.protocols import Progress

Row = tuple[list[int], list[int]]
PAD_MULTIPLE = 8  # fewer distinct shapes to allocate for, little padding
RECENT = 10  # steps averaged into the reported final train loss
OOM_MARKERS = ("out of memory", "unable to allocate", "resource limit", "[malloc]")


@dataclass
class RunState:
    """Everything needed to continue a run exactly where it stopped (saved in `state.json`)."""

    batch_size: int
    grad_accum: int
    max_seq_length: int
    step: int = 0
    micro: int = 0  # micro-batches consumed so far: the data position
    tokens: int = 0
    seconds: float = 0.0
    initial_val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int = 0
    last_val_loss: float | None = None
    bad_evals: int = 0
    recent_losses: list[float] = field(default_factory=list)
    fingerprint: str = ""

    def metrics(self, wall_seconds: float) -> dict[str, float]:
        """The numbers a finished (or stopped) run reports in `TrainResult.metrics`."""
        metrics = {
            "steps": float(self.step),
            "tokens": float(self.tokens),
            "seconds": round(self.seconds, 3),
            "wall_seconds": round(wall_seconds, 3),
        }
        if self.recent_losses:
            metrics["final_train_loss"] = sum(self.recent_losses) / len(self.recent_losses)
        if self.initial_val_loss is not None:
            metrics["initial_val_loss"] = self.initial_val_loss
        if self.best_val_loss is not None:
            metrics["best_val_loss"] = self.best_val_loss
            metrics["best_step"] = float(self.best_step)
        if self.seconds > 0:
            metrics["tokens_per_sec"] = self.tokens / self.seconds
        return metrics


@dataclass
class LoopConfig:
    """The fixed settings of one call to `run_steps`."""

    total_steps: int
    eval_every: int
    save_every: int
    patience: int
    seed: int


@dataclass
class Hooks:
    """How the loop talks to its caller: report, ask whether to stop, save."""

    progress: Callable[[Progress], None]
    cancelled: Callable[[], bool]
    on_best: Callable[[], None]  # after a validation pass improved the best loss
    on_save: Callable[[], None]  # every `save_every` steps


class Buckets:
    """Rows sorted by length and cut into batches; each epoch visits them in a seeded order."""

    def __init__(self, rows: list[Row], batch_size: int, seed: int) -> None:
        self.rows = rows
        self.seed = seed
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def micro_batch(self, micro: int) -> tuple[mx.array, mx.array, int]:
        """The `micro`-th micro-batch of the endless epoch sequence: ids, mask, real tokens."""
        epoch, pos = divmod(micro, len(self.batches))
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            self._orders = {epoch: [int(i) for i in rng.permutation(len(self.batches))]}
        return self.pad(self.batches[self._orders[epoch][pos]])

    def in_order(self) -> Iterator[tuple[mx.array, mx.array, int]]:
        """Every batch once, shortest first (for evaluation)."""
        for batch in self.batches:
            yield self.pad(batch)

    def pad(self, indices: list[int]) -> tuple[mx.array, mx.array, int]:
        lengths = [len(self.rows[i][0]) for i in indices]
        width = PAD_MULTIPLE * math.ceil(max(lengths) / PAD_MULTIPLE)
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

    `cancelled()` is asked before every step; the caller saves the final checkpoint.

    Raises:
        TrainingFailed: The training loss became NaN or infinite.
    """
    loss_and_grad = nn.value_and_grad(model, masked_loss)  # type: ignore[attr-defined]
    model.train()
    session_start, session_steps = time.perf_counter(), 0
    while state.step < cfg.total_steps:
        if hooks.cancelled():
            return "cancelled"
        mx.random.seed(cfg.seed * 1_000_003 + state.step)  # dropout noise follows the step
        tic = time.perf_counter()
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
        if not math.isfinite(step_loss):
            raise TrainingFailed(
                f"training loss became {step_loss} at step {state.step + 1}; "
                "lower learning_rate (or check the data)"
            )
        optimizer.update(model, tree_map(lambda g, n=sup_tokens: g / n, grads))
        mx.eval(model.trainable_parameters(), optimizer.state)

        elapsed = time.perf_counter() - tic
        state.step += 1
        session_steps += 1
        state.tokens += real_tokens
        state.seconds += elapsed
        state.recent_losses = [*state.recent_losses, step_loss][-RECENT:]
        per_step = (time.perf_counter() - session_start) / session_steps
        report = Progress(
            step=state.step,
            total_steps=cfg.total_steps,
            train_loss=step_loss,
            val_loss=state.last_val_loss,
            tokens_per_sec=real_tokens / elapsed if elapsed > 0 else None,
            peak_memory_mb=mx.get_peak_memory() / 1e6,
            eta_seconds=per_step * (cfg.total_steps - state.step),
        )
        stop = ""
        if valid is not None and (
            state.step % cfg.eval_every == 0 or state.step == cfg.total_steps
        ):
            stop = _validate(model, valid, state, cfg, hooks.on_best)
            report.val_loss = state.last_val_loss
            report.message = f"validation loss {state.last_val_loss:.4f}"
        hooks.progress(report)
        if state.step % cfg.save_every == 0:
            hooks.on_save()
        if stop:
            return stop
    return "done"


def finished_reason(state: RunState, cfg: LoopConfig) -> str:
    """Why a resumed run needs no more steps ("" when it does)."""
    if state.step >= cfg.total_steps:
        return "done"
    if state.bad_evals >= cfg.patience:
        return "early_stopped"
    return ""


def _validate(
    model: Any, valid: Buckets, state: RunState, cfg: LoopConfig, on_best: Callable[[], None]
) -> str:
    """One validation pass: keep the best adapter, count evaluations without improvement."""
    val = evaluate(model, valid)
    state.last_val_loss = val
    if state.best_val_loss is None or val < state.best_val_loss:
        state.best_val_loss, state.best_step, state.bad_evals = val, state.step, 0
        on_best()
        return ""
    state.bad_evals += 1
    return "early_stopped" if state.bad_evals >= cfg.patience else ""


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


def is_oom(err: BaseException) -> bool:
    """MLX reports allocation failures as RuntimeError; match its messages."""
    return isinstance(err, MemoryError) or any(m in str(err).lower() for m in OOM_MARKERS)


def shrink_after_oom(
    state: RunState, rows: list[Row], err: BaseException, notes: list[str]
) -> list[Row]:
    """Halve the micro-batch (doubling accumulation keeps the step size) or else the length.

    Returns the rows to train on from now on; the change is appended to `notes`.
    """
    if state.batch_size > 1:
        state.batch_size //= 2
        state.grad_accum *= 2
        # Keep the same share of the epoch consumed; the batch order is redrawn.
        state.micro *= 2
        notes.append(
            f"out of memory ({err}); retried with batch_size {state.batch_size}, "
            f"grad_accum {state.grad_accum}"
        )
        return rows
    state.max_seq_length = max(16, state.max_seq_length // 2)
    notes.append(f"out of memory ({err}); retried with max_seq_length {state.max_seq_length}")
    cut = state.max_seq_length
    return [(ids[:cut], mask[:cut]) for ids, mask in rows if any(mask[:cut])]


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
