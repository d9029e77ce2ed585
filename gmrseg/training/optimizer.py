"""Optimizer construction: AdamW or SGD with Nesterov momentum."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["build_optimizer"]


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.99,
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Return an optimizer over the model's trainable parameters.

    Args:
        model: network to optimize.
        name: ``"adamw"`` or ``"sgd"`` (always Nesterov, as in nnU-Net).
        lr: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 penalty (SGD).
        momentum: SGD momentum.
        betas: AdamW coefficients of the running averages.
    """
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)
    raise ValueError(f"optimizer name must be 'adamw' or 'sgd', got {name!r}")
