"""The torch training loop of the CUDA backend: bucketed batches, masked loss, optimizer steps.

It mirrors `backends/mlx_loop.py` step for step (same names, same order, trl's rule for
self-contained trainers), and both hand their bookkeeping (seeded batch order, so the data
position is one integer `RunState.micro`; progress, validation, early stop) to
`backends/run_state.py`. Labels are -100 on unsupervised and padding tokens and the attention
mask hides padding; gradients of a step are weighted by supervised tokens. A plain loop rather
than `transformers.Trainer`, because exact resume (data position, per-step seeds), best-adapter
saving and cancellation are simpler to control here. Under `torch.distributed` (see
`backends/cuda_dist.py`) each rank takes its share of a step's micro-batches and the loss is
scaled by the global supervised-token count, so the averaged gradients equal the single-process
ones; dropout noise is seeded per micro-batch position, so it does not depend on the split.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F

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

IGNORE = -100  # torch's cross-entropy ignore_index
CKPT_WEIGHTS = "adapter_model.safetensors"
CKPT_TRAINER = "trainer_state.pt"


@dataclass
class Batch:
    """One padded micro-batch on its device; `index` is its position within its step."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    real_tokens: int
    index: int = 0

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
        self.pad_id = pad_id
        self.device = torch.device(device)
        self.order = BatchOrder(rows, batch_size, seed)
        self.batches = self.order.batches

    def __len__(self) -> int:
        return len(self.batches)

    def micro_batch(self, micro: int) -> Batch:
        """The `micro`-th micro-batch of the endless epoch sequence."""
        return self.pad(self.order.indices(micro))

    def in_order(self) -> Iterator[Batch]:
        """Every batch once, shortest first (for evaluation)."""
        for batch in self.batches:
            yield self.pad(batch)

    def pad(self, indices: list[int]) -> Batch:
        lengths = [len(self.rows[i][0]) for i in indices]
        width = padded_width(lengths)
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


def _ranks() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_step(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batches: list[Batch],
    step: int = 0,
    seed: int | None = None,
) -> tuple[float, int]:
    """One optimizer step over this rank's micro-batches.

    Works unchanged inside `torch.nn.parallel.DistributedDataParallel`: gradients are synced
    only on the last micro-batch, and scaling by world size over the global token count makes
    DDP's gradient average a token-weighted mean over all ranks. With `seed`, the random state
    of each micro-batch follows `seed` and the batch's position in the step.

    Returns:
        The global mean loss and the real (unpadded) tokens of the step over all ranks.

    Raises:
        TrainingFailed: The loss is NaN or infinite (checked before the weights change).
    """
    _, world = _ranks()
    device = batches[0].input_ids.device
    counts = torch.tensor(
        [float(sum(b.supervised for b in batches)), float(sum(b.real_tokens for b in batches))],
        device=device,
    )
    if world > 1:
        dist.all_reduce(counts)
    total = max(float(counts[0]), 1.0)
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    for k, batch in enumerate(batches):
        if seed is not None:
            torch.manual_seed((seed << 20) + batch.index)
        sync = k == len(batches) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            ce = masked_loss_sum(model, batch)
            cast(Any, ce * (world / total)).backward()
        loss_sum += ce.detach().float()
    if world > 1:
        dist.all_reduce(loss_sum)
    loss = float(loss_sum) / total
    check_finite(loss, step)
    optimizer.step()
    scheduler.step()
    return loss, int(counts[1])


def rank_batches(train: Buckets, micro: int, grad_accum: int) -> tuple[list[Batch], int]:
    """This rank's share of the `grad_accum` micro-batches of the step starting at `micro`.

    Rank `r` of `w` takes positions `micro + r`, `micro + r + w`, ... below `micro +
    grad_accum` (needs `grad_accum >= w`); returns them and how many positions the whole step
    consumes (`grad_accum`), so every rank advances the same shared position.
    """
    rank, world = _ranks()
    batches = []
    for k in range(rank, grad_accum, world):
        batch = train.micro_batch(micro + k)
        batch.index = k
        batches.append(batch)
    return batches, grad_accum


@torch.no_grad()
def evaluate(model: Any, buckets: Buckets) -> float:
    """Token-weighted validation loss over the whole split (its batches shared among ranks)."""
    inner = getattr(model, "module", model)  # no DDP hooks: ranks run different batch counts
    rank, world = _ranks()
    inner.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=buckets.device)
    for i, indices in enumerate(buckets.batches):
        if i % world == rank:
            batch = buckets.pad(indices)
            sums[0] += masked_loss_sum(inner, batch).double()
            sums[1] += batch.supervised
    if world > 1:
        dist.all_reduce(sums)
    inner.train()
    return float(sums[0]) / max(float(sums[1]), 1.0)


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
    hooks: Hooks,
) -> str:
    """Train until `cfg.total_steps`, cancellation or early stop; returns why it stopped.

    `model` may be wrapped in `DistributedDataParallel`; the caller saves the final checkpoint.

    Raises:
        TrainingFailed: The training loss became NaN or infinite.
    """
    model.train()

    def step(seed: int) -> tuple[float, int]:
        batches, consumed = rank_batches(train, state.micro, state.grad_accum)
        result = train_step(model, optimizer, scheduler, batches, state.step + 1, seed)
        state.micro += consumed
        return result

    validate = (lambda: evaluate(model, valid)) if valid is not None else None
    return run_loop(state, cfg, hooks, step, validate, lambda: peak_memory_mb(train.device))


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
