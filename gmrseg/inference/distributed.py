"""Split a list of prediction jobs across the processes started by torchrun.

Each rank takes every ``world_size``-th job of the sorted list, so every job is
handled by exactly one rank and no communication is needed. The rank and world
size come from an initialised ``torch.distributed`` process group when there is
one, and otherwise from the ``RANK`` / ``WORLD_SIZE`` variables that torchrun
sets (one node or several).
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "distributed_context", "rank_device", "split_for_rank"]

T = TypeVar("T")


class DistributedContext:
    """Rank, world size and local rank of this process (0, 1, 0 when run without torchrun)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world size {world_size}")
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank

    @property
    def is_distributed(self) -> bool:
        """True when more than one process shares the work."""
        return self.world_size > 1

    def __repr__(self) -> str:
        return f"DistributedContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"


def _int_from_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from error


def distributed_context() -> DistributedContext:
    """Return this process's rank and world size (torch.distributed first, then torchrun's variables)."""
    local_rank = _int_from_env("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)
    return DistributedContext(_int_from_env("RANK", 0), _int_from_env("WORLD_SIZE", 1), local_rank)


def split_for_rank(items: Sequence[T], context: DistributedContext) -> list[T]:
    """Return the items that ``context.rank`` handles: ``items[rank::world_size]``."""
    return list(items[context.rank :: context.world_size])


def rank_device(device: torch.device, context: DistributedContext) -> torch.device:
    """Pin each local rank to its own GPU (``cuda:LOCAL_RANK``) when several GPUs are visible.

    The caller applies this only when the user asked for ``auto`` or ``cuda``
    without an index; an explicit ``cuda:N`` is kept.
    """
    if device.type == "cuda" and context.is_distributed and torch.cuda.device_count() > 1:
        return torch.device("cuda", context.local_rank % torch.cuda.device_count())
    return device
