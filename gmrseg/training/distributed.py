"""DistributedDataParallel setup for runs started by ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. When they are
absent, or the world size is 1, training runs in a single process and every
helper here is a no-op. NCCL is used on CUDA devices and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gmrseg.errors import InputError
from gmrseg.utils.device import resolve_device

__all__ = ["DistributedContext", "all_reduce_mean", "all_reduce_sum", "barrier", "broadcast_object", "init_distributed",
           "shutdown_distributed"]


@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process.

    Attributes:
        rank: global process index (0 writes files and logs).
        world_size: number of processes.
        local_rank: process index on this machine (selects the GPU).
        device: device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from error


def init_distributed(device: str = "auto") -> DistributedContext:
    """Resolve the device and, under torchrun, join the process group.

    Args:
        device: ``--device`` value. Under torchrun, ``auto`` and ``cuda`` mean
            ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is rejected because
            every process would pick the same GPU.

    Raises:
        InputError: an invalid device name or a device that cannot be used.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)

    if world_size <= 1:
        try:
            return DistributedContext(device=resolve_device(device))
        except ValueError as error:
            raise InputError(str(error)) from error

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {device!r} under torchrun: use auto, cpu or cuda; each process takes the GPU "
                         "of its LOCAL_RANK")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise InputError("--device cuda under torchrun, but CUDA is not available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                             "lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        resolved = torch.device("cuda", local_rank)
    else:
        resolved = torch.device("cpu")

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if context.is_distributed:
        dist.barrier()


def all_reduce_mean(value: float, context: DistributedContext) -> float:
    """Return the mean of ``value`` over all processes."""
    if not context.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / context.world_size


def all_reduce_sum(values: list[float], context: DistributedContext) -> list[float]:
    """Return the element-wise sums of ``values`` over all processes."""
    if not context.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_object(value: Any, context: DistributedContext) -> Any:
    """Return rank 0's ``value`` on every process (picklable values only)."""
    if not context.is_distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
