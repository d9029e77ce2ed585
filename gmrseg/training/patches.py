"""Training patches: foreground-oversampled random crops with MONAI augmentation.

Every patch is drawn from a random generator seeded by (seed, rank, epoch,
index), never from global state, so an epoch yields the same patches whatever
the number of loader workers and whether the run was resumed before it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    FgBgToIndicesd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from torch.utils.data import Dataset

__all__ = ["PatchDataset", "build_patch_transform", "pad_case_for_patches"]


def pad_case_for_patches(case: dict[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
    """Return a training case padded to at least ``patch_size`` with foreground indices.

    Args:
        case: ``{"image": (C, X, Y, Z) float tensor, "label": (1, X, Y, Z) int
            tensor, "case_id": str}``.
        patch_size: patch size in voxels.

    Returns:
        A new dict with the padded ``image`` and ``label`` (float32, so MONAI
        resamples it with nearest neighbour without a dtype round trip) and
        flat ``fg_indices`` / ``bg_indices``, computed once here instead of at
        every crop.
    """
    data = {"image": case["image"].float(), "label": case["label"].float()}
    data = SpatialPadd(keys=("image", "label"), spatial_size=list(patch_size), mode="constant")(data)
    data = FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg")(data)
    return {
        "case_id": case["case_id"],
        "image": torch.as_tensor(data["image"]).float().contiguous(),
        "label": torch.as_tensor(data["label"]).float().contiguous(),
        "fg_indices": np.asarray(data["label_fg"]),
        "bg_indices": np.asarray(data["label_bg"]),
    }


def build_patch_transform(
    patch_size: Sequence[int],
    *,
    foreground_fraction: float = 0.33,
    rotation: bool = False,
    rotation_range_deg: float = 180.0,
    flip: bool = True,
    scale: bool = True,
    scale_range: float = 0.15,
    intensity: bool = True,
    probability: float = 0.2,
) -> Compose:
    """Build the random crop and augmentation chain for one training patch.

    Rotation and scaling share one ``RandAffined`` resampling (bilinear for the
    image, nearest for the label, zeros outside the volume).
    """
    keys = ("image", "label")
    transforms: list = [
        RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=list(patch_size), pos=foreground_fraction,
            neg=1.0 - foreground_fraction, num_samples=1, fg_indices_key="fg_indices", bg_indices_key="bg_indices",
        ),
    ]

    if rotation or scale:
        angle = math.radians(rotation_range_deg) if rotation else None
        transforms.append(RandAffined(
            keys=keys, spatial_size=list(patch_size), prob=probability,
            rotate_range=None if angle is None else (angle, angle, angle),
            scale_range=(scale_range,) * 3 if scale else None,
            mode=("bilinear", "nearest"), padding_mode="zeros",
        ))
    if flip:
        transforms.extend(RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3))
    if intensity:
        transforms.extend([
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.15),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.15),
            RandGaussianNoised(keys="image", std=0.1, prob=0.1),
        ])
    return Compose(transforms)


class PatchDataset(Dataset):
    """Random training patches from cases prepared by ``pad_case_for_patches``.

    The dataset has ``samples_per_epoch`` items; item ``index`` of epoch ``e``
    on rank ``r`` is a deterministic function of ``(seed, r, e, index)``.
    Call ``set_epoch`` before iterating over each epoch.

    Args:
        cases: padded training cases.
        transform: crop and augmentation chain from ``build_patch_transform``.
        samples_per_epoch: patches per epoch on this process.
        seed: base seed of the run.
        rank: process rank, so processes draw different patches.
    """

    def __init__(self, cases: list[dict[str, Any]], transform: Compose, samples_per_epoch: int, seed: int,
                 rank: int = 0) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one training case")
        self.cases = cases
        self.transform = transform
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = np.random.default_rng([self.seed, self.rank, self.epoch, index])
        case = self.cases[int(generator.integers(len(self.cases)))]
        self.transform.set_random_state(seed=int(generator.integers(2**31 - 1)))

        sample = self.transform({
            "image": case["image"],
            "label": case["label"],
            "fg_indices": case["fg_indices"],
            "bg_indices": case["bg_indices"],
        })
        if isinstance(sample, list):
            sample = sample[0]
        return {
            "image": torch.as_tensor(sample["image"]).float().contiguous(),
            "label": torch.as_tensor(sample["label"]).round().long().contiguous(),
        }
