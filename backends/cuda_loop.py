"""The torch training loop of the CUDA backend: bucketed batches, masked loss, optimizer steps.

It mirrors `backends/mlx_loop.py` step for step (same names, same order, trl's rule for
self-contained trainers): rows sorted by length and cut into batches reshuffled each epoch from
`(seed, epoch)`, so the data position is one integer (`RunState.micro`); labels are -100 on
unsupervised and padding tokens and the attention mask hides padding; gradients of a step are
weighted by supervised tokens. A plain loop rather than `transformers.Trainer`, because exact
resume (data position, per-step seeds), best-adapter saving and cancellation are simpler to
control here. `train_step` is DDP-ready: under `torch.distributed` each rank takes every
world-size-th micro-batch and the loss is scaled by the global supervised-token count, so the
averaged gradients equal the single-process ones.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from sam_brain.errors import TrainingFailed
from sam_brain.protocols import Progress

Row = tuple[list[int], list[int]]
PAD_MULTIPLE = 8  # fewer distinct shapes, little padding
RECENT = 10  # steps averaged into the reported final train loss
IGNORE = -100  # torch's cross-entropy ignore_index
CKPT_WEIGHTS = "adapter_model.safetensors"
CKPT_TRAINER = "trainer_state.pt"


@dataclass
class RunState:
    """Everything needed to continue a run exactly where it stopped (saved in `state.json`)."""

    batch_size: int
    grad_accum: int
    max_seq_length: int
    step: int = 0
    micro: int = 0  # micro-batches consumed so far (by all ranks): the data position
    tokens: int = 0
    seconds: float = 0.0
    initial_val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int = 0
    last_val_loss: float | None = None
    bad_evals: int = 0
    recent_losses: list[float] = field(default_factory=list)
    fingerprint: str = ""


@dataclass
class LoopConfig:
    """The fixed settings of one call to `run_steps`."""

    total_steps: int
    eval_every: int
    save_every: int
    patience: int
    seed: int


@dataclass
class Batch:
    """One padded micro-batch on its device."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    real_tokens: int

    @property
    def supervised(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


class Buckets:
    """Rows sorted by length and cut into batches; each epoch visits them in a seeded order."""

    def __init__(
        self,
        rows: list[Row],
        batch_size: int,
        seed: int,
        pad_id: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.rows = rows
        self.seed = seed
        self.pad_id = pad_id
        self.device = torch.device(device)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        self.batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def micro_batch(self, micro: int) -> Batch:
        """The `micro`-th micro-batch of the endless epoch sequence."""
        epoch, pos = divmod(micro, len(self.batches))
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            self._orders = {epoch: [int(i) for i in rng.permutation(len(self.batches))]}
        return self.pad(self.batches[self._orders[epoch][pos]])

    def in_order(self) -> Iterator[Batch]:
        """Every batch once, shortest first (for evaluation)."""
        for batch in self.batches:
            yield self.pad(batch)

    def pad(self, indices: list[int]) -> Batch:
        lengths = [len(self.rows[i][0]) for i in indices]
        width = PAD_MULTIPLE * math.ceil(max(lengths) / PAD_MULTIPLE)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(indices), width), dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        for r, i in enumerate(indices):
            row_ids, row_mask = self.rows[i]
            n = len(row_ids)
            ids[r, :n] = torch.tensor(row_ids)
            attention[r, :n] = 1
            labels[r, :n] = torch.where(torch.tensor(row_mask) > 0, ids[r, :n], IGNORE)
        to = self.device
        return Batch(ids.to(to), attention.to(to), labels.to(to), sum(lengths))


# Model families whose forward accepts a boolean `logits_to_keep` (transformers >= 5).
KEEP_LOGITS_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral", "phi3"})


def _keeps_logits(model: Any) -> bool:
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    config = getattr(inner, "config", None)
    return (
        getattr(config, "model_type", None) in KEEP_LOGITS_TYPES
        and getattr(config, "final_logit_softcapping", None) is None
    )


def masked_loss_sum(model: Any, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over supervised target tokens (labels shifted by one).

    Where the model allows it, logits are computed only at the positions whose next token is
    supervised (as the MLX backend does): same loss, a fraction of the head's work and memory.
    """
    targets = batch.labels[:, 1:]
    if _keeps_logits(model):
        keep = torch.zeros_like(batch.labels, dtype=torch.bool)
        keep[:, :-1] = targets != IGNORE
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep
        )
        return F.cross_entropy(out.logits.float(), targets[keep[:, :-1]], reduction="sum")
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits[:, :-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def train_step(model: Any, optimizer: Any, scheduler: Any, batches: list[Batch]) -> float:
    """One optimizer step over this rank's micro-batches; returns the global mean loss.

    Works unchanged inside `torch.nn.parallel.DistributedDataParallel`: gradients are synced
    only on the last micro-batch, and scaling by world size over the global token count makes
    DDP's gradient average a token-weighted mean over all ranks.

    Raises:
        TrainingFailed: The loss is NaN or infinite (checked before the weights change).
    """
    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if distributed else 1
    counts = torch.tensor([float(sum(b.supervised for b in batches)), 0.0])
    if distributed:
        dist.all_reduce(counts)
    total = max(float(counts[0]), 1.0)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros(())
    for k, batch in enumerate(batches):
        sync = k == len(batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            ce = masked_loss_sum(model, batch)
            cast(Any, ce * (world / total)).backward()
        loss_sum += ce.detach().float().cpu()
    if distributed:
        dist.all_reduce(loss_sum)
    loss = float(loss_sum) / total
    if not math.isfinite(loss):
        raise TrainingFailed(
            f"training loss became {loss}; lower learning_rate (or check the data)"
        )
    optimizer.step()
    scheduler.step()
    return loss


def rank_batches(train: Buckets, micro: int, grad_accum: int) -> tuple[list[Batch], int]:
    """This rank's micro-batches for the step starting at data position `micro`.

    Rank `r` of `w` takes positions `micro + r + w*k`; returns them and how many positions the
    whole step consumes (`grad_accum * w`), so every rank advances the same shared position.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    batches = [train.micro_batch(micro + rank + world * k) for k in range(grad_accum)]
    return batches, grad_accum * world


@torch.no_grad()
def evaluate(model: Any, buckets: Buckets) -> float:
    """Token-weighted validation loss over the whole split."""
    model.eval()
    total, count = 0.0, 0
    for batch in buckets.in_order():
        total += float(masked_loss_sum(model, batch))
        count += batch.supervised
    model.train()
    return total / max(count, 1)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3  # bytes on macOS, KiB on Linux


def run_steps(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    train: Buckets,
    valid: Buckets | None,
    state: RunState,
    cfg: LoopConfig,
    progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
    on_best: Callable[[], None],
    on_save: Callable[[], None],
) -> str:
    """Train until `cfg.total_steps`, cancellation or early stop; returns why it stopped.

    `on_best` is called after a validation pass improved the best loss; `on_save` every
    `cfg.save_every` steps. The caller saves the final checkpoint.

    Raises:
        TrainingFailed: The training loss became NaN or infinite.
    """
    model.train()
    session_start, session_steps = time.perf_counter(), 0
    while state.step < cfg.total_steps:
        if cancelled():
            return "cancelled"
        torch.manual_seed(cfg.seed * 1_000_003 + state.step)  # dropout noise follows the step
        tic = time.perf_counter()
        batches, consumed = rank_batches(train, state.micro, state.grad_accum)
        try:
            step_loss = train_step(model, optimizer, scheduler, batches)
        except TrainingFailed as err:
            raise TrainingFailed(f"step {state.step + 1}: {err}") from err
        state.micro += consumed
        real_tokens = sum(b.real_tokens for b in batches)
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
            peak_memory_mb=peak_memory_mb(train.device),
            eta_seconds=per_step * (cfg.total_steps - state.step),
        )
        stop = ""
        if valid is not None and (
            state.step % cfg.eval_every == 0 or state.step == cfg.total_steps
        ):
            stop = _validate(model, valid, state, cfg, on_best)
            report.val_loss = state.last_val_loss
            report.message = f"validation loss {state.last_val_loss:.4f}"
        progress(report)
        if state.step % cfg.save_every == 0:
            on_save()
        if stop:
            return stop
    return "done"


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


def resume_reason(state: RunState, cfg: LoopConfig) -> str:
    """A resumed run that had already finished or stopped early is not trained further."""
    if state.step >= cfg.total_steps:
        return "done"
    if state.bad_evals >= cfg.patience:
        return "early_stopped"
    return ""


def run_metrics(state: RunState, wall_seconds: float) -> dict[str, float]:
    """The numbers a finished run reports in `TrainResult.metrics`."""
    metrics = {
        "steps": float(state.step),
        "tokens": float(state.tokens),
        "seconds": round(state.seconds, 3),
        "wall_seconds": round(wall_seconds, 3),
    }
    if state.recent_losses:
        metrics["final_train_loss"] = sum(state.recent_losses) / len(state.recent_losses)
    if state.initial_val_loss is not None:
        metrics["initial_val_loss"] = state.initial_val_loss
    if state.best_val_loss is not None:
        metrics["best_val_loss"] = state.best_val_loss
        metrics["best_step"] = float(state.best_step)
    if state.seconds > 0:
        metrics["tokens_per_sec"] = state.tokens / state.seconds
    return metrics


def save_state(directory: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Write the adapter, optimizer, scheduler and RNG states of a checkpoint into `directory`."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    weights = get_peft_model_state_dict(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(tensors, str(directory / CKPT_WEIGHTS))
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}
    torch.save(blob, directory / CKPT_TRAINER)


def restore_state(directory: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
    """Load what `save_state` wrote back into the live objects."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(directory / CKPT_WEIGHTS)))
    blob = torch.load(directory / CKPT_TRAINER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"]["cpu"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
