"""torch.distributed under torchrun: gloo on CPU, nccl on GPU; rank 0 writes."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1). Returns whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "cpu:gloo,cuda:nccl"  # gradients over nccl; small CPU reductions (metrics, RNG) over gloo
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def default_device() -> torch.device:
    """This process's GPU under torchrun (LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard(items: list, which: int | None = None) -> list:
    """This rank's share of ``items`` (every ``world``-th item from position ``rank``)."""
    return items[(rank() if which is None else which) :: world_size()]


def gather_shards(mine: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble rows computed by :func:`shard` on every rank into ``total`` rows in the original order.

    ``mine`` is a CPU tensor [len(shard(items)), ...]; every rank must call this.
    """
    if not is_distributed():
        return mine
    world = world_size()
    longest = -(-total // world)
    padded = mine.new_zeros((longest, *mine.shape[1:]))
    padded[: len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = mine.new_empty((total, *mine.shape[1:]))
    for r, part in enumerate(parts):
        count = len(range(r, total, world))
        out[r::world] = part[:count]
    return out
