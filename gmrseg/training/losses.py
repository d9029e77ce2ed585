"""Segmentation loss: MONAI ``DiceCELoss``, summed over deep-supervision outputs."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import nn

from gmrseg.errors import InputError

__all__ = ["SegmentationLoss", "build_loss"]


class SegmentationLoss(nn.Module):
    """Dice + cross-entropy on logits against an integer label map.

    The network may return one logits tensor ``(B, C, *spatial)`` or a list of
    them, full resolution first (deep supervision). For a list, each output is
    compared with the label map downsampled by nearest neighbour to its size,
    and the losses are summed with ``weights`` (``None``: 1, 1/2, 1/4, ...,
    floored at 1/16 as in MONAI's ``DeepSupervisionLoss``).

    Args:
        dice_weight: weight of the soft Dice term.
        ce_weight: weight of the cross-entropy term.
        batch_dice: Dice over the whole batch instead of per patch.
        weights: deep-supervision weights, full resolution first.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch_dice: bool = True,
        weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, batch=batch_dice,
                             lambda_dice=dice_weight, lambda_ce=ce_weight)
        self.weights = None if weights is None else list(weights)
        self.loss = DeepSupervisionLoss(dice_ce, weight_mode="exp", weights=self.weights)

    def forward(self, logits: torch.Tensor | list[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss.

        Args:
            logits: ``(B, C, *spatial)`` or a list of such tensors.
            label: ``(B, 1, *spatial)`` integer class indices at full resolution.
        """
        if isinstance(logits, (list, tuple)) and self.weights is not None and len(self.weights) < len(logits):
            raise InputError(
                f"config key loss.deep_supervision_weights: {len(self.weights)} weights given but the network "
                f"returns {len(logits)} outputs; give {len(logits)} weights or null"
            )
        return self.loss(logits, label.float())


def build_loss(dice_weight: float, ce_weight: float, batch_dice: bool,
               deep_supervision_weights: list[float] | None) -> SegmentationLoss:
    """Build the training loss from the ``loss`` section of the config."""
    return SegmentationLoss(dice_weight, ce_weight, batch_dice, deep_supervision_weights)
