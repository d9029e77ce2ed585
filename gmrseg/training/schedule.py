"""Learning-rate schedules: linear warm-up, then polynomial or cosine decay.

Schedules are ``torch.optim.lr_scheduler.LambdaLR`` objects stepped once per
iteration, so their state (one step counter) is saved in every checkpoint and a
resumed run continues on the same curve.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_scheduler", "lr_factor"]


def lr_factor(
    step: int,
    total_steps: int,
    *,
    name: str = "poly",
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.01,
    power: float = 0.9,
    min_factor: float = 0.0,
) -> float:
    """Return the learning-rate multiplier at iteration ``step`` (0-based).

    Args:
        step: iterations done so far.
        total_steps: iterations of the whole run; the factor reaches its
            final value at ``total_steps``.
        name: ``"poly"``: ``(1 - t) ** power``; ``"cosine"``:
            ``min_factor + (1 - min_factor) * (1 + cos(pi t)) / 2``, where ``t``
            runs from 0 after the warm-up to 1 at the end.
        warmup_steps: iterations of linear increase from ``warmup_start_factor`` to 1.
        warmup_start_factor: multiplier at step 0 when there is a warm-up.
        power: exponent of the poly schedule.
        min_factor: final multiplier of the cosine schedule.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if name not in ("poly", "cosine"):
        raise ValueError(f"schedule name must be 'poly' or 'cosine', got {name!r}")

    if step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps

    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    if name == "poly":
        return (1.0 - progress) ** power
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.01,
    power: float = 0.9,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Wrap ``lr_factor`` in a ``LambdaLR`` for ``optimizer``.

    ``min_lr`` is absolute (same unit as the optimizer's lr) and only used by
    the cosine schedule.
    """
    base_lr = optimizer.param_groups[0]["lr"]
    min_factor = min_lr / base_lr if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, name=name, warmup_steps=warmup_steps,
                         warmup_start_factor=warmup_start_factor, power=power, min_factor=min_factor)

    return LambdaLR(optimizer, factor)
