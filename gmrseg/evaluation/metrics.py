"""Overlap, surface distance and volume of one class in one case, with MONAI's metrics.

Conventions for empty masks:

- reference and prediction both empty: Dice 1.0, HD95 None (excluded from
  the HD95 summary and counted as ``both_empty``);
- exactly one of them empty: Dice 0.0, HD95 infinite (kept in the summary,
  so the HD95 mean becomes infinite, and counted as ``one_empty``).

HD95 is the 95th percentile of the symmetric surface distances in millimetres,
computed from the voxel spacing of the reference (MONAI's
``compute_hausdorff_distance`` with ``percentile=95`` and ``spacing``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

__all__ = ["ClassMetrics", "class_metrics"]


@dataclass
class ClassMetrics:
    """Metrics of one class in one case.

    Attributes:
        dice: Dice coefficient in [0, 1].
        hd95: 95th percentile Hausdorff distance in mm; ``inf`` when exactly one
            mask is empty, None when both are.
        volume_reference_ml: reference volume in millilitres.
        volume_prediction_ml: predicted volume in millilitres.
        volume_difference_ml: prediction minus reference, in millilitres.
    """

    dice: float
    hd95: float | None
    volume_reference_ml: float
    volume_prediction_ml: float
    volume_difference_ml: float

    @property
    def both_empty(self) -> bool:
        """True when neither the reference nor the prediction contains the class."""
        return self.volume_reference_ml == 0.0 and self.volume_prediction_ml == 0.0

    @property
    def one_empty(self) -> bool:
        """True when exactly one of reference and prediction contains the class."""
        return (self.volume_reference_ml == 0.0) != (self.volume_prediction_ml == 0.0)

    def to_dict(self) -> dict:
        """Return the metrics as a plain dict (``inf`` kept as a float)."""
        return asdict(self)


def class_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> ClassMetrics:
    """Compute Dice, HD95 and volumes of one binary class mask.

    Args:
        prediction: boolean mask ``(X, Y, Z)``.
        reference: boolean mask on the same grid.
        spacing: voxel size along each array axis (mm).

    Raises:
        ValueError: when the masks differ in shape or the spacing is not
            three positive numbers.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    spacing = [float(value) for value in spacing]
    if len(spacing) != prediction.ndim or not all(value > 0 and math.isfinite(value) for value in spacing):
        raise ValueError(f"spacing must be {prediction.ndim} positive numbers in mm, got {spacing}")

    voxel_ml = float(np.prod(spacing)) / 1000.0
    predicted_voxels = int(np.count_nonzero(prediction))
    reference_voxels = int(np.count_nonzero(reference))
    volume_prediction = predicted_voxels * voxel_ml
    volume_reference = reference_voxels * voxel_ml

    # MONAI's metrics take one-hot (B, C, *spatial) tensors.
    prediction_tensor = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None, None]
    reference_tensor = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))[None, None]
    dice = float(compute_dice(prediction_tensor, reference_tensor, include_background=True, ignore_empty=False))

    if predicted_voxels == 0 and reference_voxels == 0:
        hd95: float | None = None
    elif predicted_voxels == 0 or reference_voxels == 0:
        hd95 = math.inf
    else:
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about an argument it passes to itself.
            warnings.simplefilter("ignore", FutureWarning)
            hd95 = float(
                compute_hausdorff_distance(
                    prediction_tensor, reference_tensor, include_background=True, percentile=95, spacing=spacing
                )
            )

    return ClassMetrics(
        dice=dice,
        hd95=hd95,
        volume_reference_ml=volume_reference,
        volume_prediction_ml=volume_prediction,
        volume_difference_ml=volume_prediction - volume_reference,
    )
