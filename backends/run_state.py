"""The backend-independent half of a training loop: run state, the step loop, eval, OOM retry.

Both backends (`backends/mlx_loop.py`, `backends/cuda_loop.py`) supply only what touches their
tensor library: one optimizer step, one validation pass and a peak-memory reading. Everything
else is here, once: the `RunState` saved in a checkpoint's `state.json` (field names are the
on-disk format; a renamed field would stop old checkpoints from resuming), the seeded batch
order that makes the data position one integer, progress reports, validation with best-adapter
saving and early stopping, why a resumed run is already finished, and the out-of-memory rule
(halve the micro-batch and double accumulation, or halve the sequence length, then retry once).
Imports neither mlx nor torch, so each backend keeps to its own library.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from sam_brain.errors import TrainingFailed
from sam_brain.protocols import Progress

Row = tuple[list[int], list[int]]  # token ids, loss mask (1 = supervised)
PAD_MULTIPLE = 8  # fewer distinct shapes to allocate for, little padding
RECENT = 10  # steps averaged into the reported final train loss
OOM_MARKERS = ("out of memory", "unable to allocate", "resource limit", "[malloc]")


@dataclass
class RunState:
    """Everything needed to continue a run exactly where it stopped (saved in `state.json`)."""

    batch_size: int
    grad_accum: int  # micro-batches per optimizer step, over all processes
    max_seq_length: int
    step: int = 0
    micro: int = 0  # micro-batches consumed so far (by all processes): the data position
    tokens: int = 0
    seconds: float = 0.0
    initial_val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int = 0
    last_val_loss: float | None = None
    bad_evals: int = 0
    recent_losses: list[float] = field(default_factory=list)
    fingerprint: str = ""

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> RunState:
        """The state a checkpoint's `state.json` holds; keys this version does not know are
        ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})

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

    def effective(self) -> dict[str, int]:
        """The batch shape the run ended with (an out-of-memory retry changes it)."""
        return {
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_seq_length": self.max_seq_length,
        }


@dataclass
class LoopConfig:
    """The fixed settings of one call to `run_loop`."""

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


class BatchOrder:
    """Rows sorted by length and cut into batches; each epoch visits them in a seeded order."""

    def __init__(self, rows: list[Row], batch_size: int, seed: int) -> None:
        self.seed = seed
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def indices(self, micro: int) -> list[int]:
        """The rows of the `micro`-th micro-batch of the endless epoch sequence."""
        epoch, pos = divmod(micro, len(self.batches))
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            self._orders = {epoch: [int(i) for i in rng.permutation(len(self.batches))]}
        return self.batches[self._orders[epoch][pos]]


def padded_width(lengths: list[int]) -> int:
    """The longest length rounded up to `PAD_MULTIPLE`."""
    return PAD_MULTIPLE * math.ceil(max(lengths) / PAD_MULTIPLE)


def run_loop(
    state: RunState,
    cfg: LoopConfig,
    hooks: Hooks,
    step: Callable[[int], tuple[float, int]],
    evaluate: Callable[[], float] | None,
    peak_memory_mb: Callable[[], float],
) -> str:
    """Train until `cfg.total_steps`, cancellation or early stop; returns why it stopped.

    Args:
        state: Updated in place after every step (and saved by `hooks.on_save`).
        cfg: Length, validation and save cadence, patience, seed.
        hooks: Progress, cancellation and the two save callbacks.
        step: One optimizer step, given its seed (dropout noise follows the step number); it
            advances `state.micro` and returns the step's loss and real (unpadded) tokens.
        evaluate: The validation loss, or None without validation rows.
        peak_memory_mb: The peak memory so far, for progress reports.

    `cancelled()` is asked before every step; the caller saves the final checkpoint.
    """
    session_start, session_steps = time.perf_counter(), 0
    while state.step < cfg.total_steps:
        if hooks.cancelled():
            return "cancelled"
        tic = time.perf_counter()
        step_loss, real_tokens = step(cfg.seed * 1_000_003 + state.step)
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
            peak_memory_mb=peak_memory_mb(),
            eta_seconds=per_step * (cfg.total_steps - state.step),
        )
        stop = ""
        if evaluate is not None and (
            state.step % cfg.eval_every == 0 or state.step == cfg.total_steps
        ):
            stop = record_validation(state, cfg, evaluate(), hooks.on_best)
            report.val_loss = state.last_val_loss
            report.message = f"validation loss {state.last_val_loss:.4f}"
        hooks.progress(report)
        if state.step % cfg.save_every == 0:
            hooks.on_save()
        if stop:
            return stop
    return "done"


def check_finite(loss: float, step: int) -> None:
    """Raise before a NaN or infinite loss reaches the weights.

    Raises:
        TrainingFailed: `loss` is NaN or infinite.
    """
    if not math.isfinite(loss):
        raise TrainingFailed(
            f"training loss became {loss} at step {step}; lower learning_rate (or check the data)"
        )


def record_validation(
    state: RunState, cfg: LoopConfig, val: float, on_best: Callable[[], None]
) -> str:
    """Record one validation loss: keep the best adapter, count passes without improvement.

    Returns "early_stopped" once `cfg.patience` passes in a row did not improve, else "".
    """
    state.last_val_loss = val
    if state.best_val_loss is None or val < state.best_val_loss:
        state.best_val_loss, state.best_step, state.bad_evals = val, state.step, 0
        on_best()
        return ""
    state.bad_evals += 1
    return "early_stopped" if state.bad_evals >= cfg.patience else ""


def finished_reason(state: RunState, cfg: LoopConfig) -> str:
    """Why a resumed run needs no more steps ("" when it does)."""
    if state.step >= cfg.total_steps:
        return "done"
    if state.bad_evals >= cfg.patience:
        return "early_stopped"
    return ""


def is_oom(err: BaseException) -> bool:
    """An allocation failure: MemoryError, torch's OutOfMemoryError, or an MLX RuntimeError
    whose message says so."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    return any(m in str(err).lower() for m in OOM_MARKERS)


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


def retry_after_oom(
    attempt: Callable[[list[Row]], str],
    rows: list[Row],
    state: RunState,
    notes: list[str],
    *,
    announce: Callable[[str], None],
    release: Callable[[], None],
    retry: bool = True,
) -> str:
    """Run `attempt(rows)`; after an out-of-memory error shrink the batch and run it once more.

    Args:
        attempt: Builds the batches from `state` and `rows` and trains; returns the stop reason.
        rows: The training rows.
        state: Shrunk in place by `shrink_after_oom`.
        notes: The run's notes; the shrink is recorded there.
        announce: Reports the shrink (a progress message) before the retry.
        release: Frees what the failed step held (gradients, allocator caches).
        retry: False turns the retry off (several processes must shrink together).

    Raises:
        TrainingFailed: Out of memory again, or with `retry` off.
    """
    try:
        return attempt(rows)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        if not retry:
            raise _oom_failure(state, err) from err
        release()
        rows = shrink_after_oom(state, rows, err, notes)
    try:
        announce(notes[-1])
        return attempt(rows)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        raise _oom_failure(state, err) from err


def _oom_failure(state: RunState, err: BaseException) -> TrainingFailed:
    return TrainingFailed(
        f"out of memory at step {state.step + 1} with batch_size {state.batch_size}, "
        f"max_seq_length {state.max_seq_length} ({err}): lower them or set grad_checkpoint"
    )
