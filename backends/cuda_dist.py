"""Several training processes for one CUDA-backend run: `torchrun` / `accelerate launch`.

Launched as `torchrun --nproc_per_node N -m sam_brain.train.worker cuda spec.json`, every process runs
the same `CudaBackend.train`. `join_group` sees `WORLD_SIZE` > 1 in the environment and joins the
process group the launcher describes (nccl on CUDA, each process on `cuda:LOCAL_RANK`; gloo on
the CPU), unless one exists already, which is then left to its owner. The model is wrapped in
`DistributedDataParallel`; each process takes its share of every step's micro-batches
(`backends.cuda_loop.rank_batches`) and the loss stays the global token-weighted mean. Rank 0
alone writes files and reports progress; the others wait at a barrier after every save. Stopping
is agreed on (a cancel seen by any process stops all at the same step), so no process is left
waiting in a collective. The output directory must be one every process sees (one machine, or a
shared mount).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sam_brain.errors import BackendUnavailable


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run; the defaults describe a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process created the group and destroys it at the end

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def join_group() -> Ranks:
    """Join the process group the launcher describes, or describe the existing one.

    Raises:
        BackendUnavailable: `WORLD_SIZE` > 1 but torch was built without torch.distributed.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_available():
        raise BackendUnavailable("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local, owned=True)


def leave_group(ranks: Ranks) -> None:
    """Destroy the process group if `join_group` created it."""
    if ranks.owned and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: Any, ranks: Ranks, device: torch.device) -> Any:
    """The model to train: in `DistributedDataParallel` when there are several processes."""
    if not ranks.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Buffers (rotary tables) never change; broadcasting them would add a collective to every
    # forward, and ranks run different numbers of forwards when a step's micro-batches don't
    # divide evenly.
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def barrier(ranks: Ranks) -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if ranks.distributed:
        dist.barrier()


def on_main(ranks: Ranks, save: Callable[[], None]) -> Callable[[], None]:
    """`save` run by rank 0 only, every process waiting until it has finished."""

    def run() -> None:
        if ranks.main:
            save()
        barrier(ranks)

    return run


def any_rank(ranks: Ranks, flag: Callable[[], bool], device: torch.device) -> Callable[[], bool]:
    """`flag` asked on every process; true everywhere as soon as it is true on one."""
    if not ranks.distributed:
        return flag

    def agreed() -> bool:
        value = torch.tensor([1.0 if flag() else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    return agreed


def from_main(ranks: Ranks, value: bool, device: torch.device) -> bool:
    """Rank 0's `value` on every process."""
    if not ranks.distributed:
        return value
    tensor = torch.tensor([1.0 if value else 0.0], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item() > 0)
