"""Tiny synthetic datasets and networks for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

CLASS_NAMES = ["background", "head", "tail"]


class TinyNet(nn.Module):
    """Two-level network with an optional half-resolution deep-supervision head."""

    size_divisor = 2

    def __init__(self, in_channels: int = 1, out_channels: int = 3, deep_supervision: bool = False) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encode = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.head = nn.Conv3d(4, out_channels, 1)
        self.coarse_head = nn.Conv3d(4, out_channels, 1)

    def forward(self, x):
        features = torch.relu(self.encode(x))
        logits = self.head(features)
        if self.training and self.deep_supervision:
            return [logits, self.coarse_head(nn.functional.avg_pool3d(features, 2))]
        return logits


def write_tiny_dataset(root: Path, num_cases: int = 4, shape=(18, 20, 16), spacing=(1.0, 1.0, 1.0),
                       labels: dict[str, int] | None = None) -> Path:
    """Write an nnU-Net v2 dataset folder of small bright boxes in noise; return ``root``.

    Each case has a two-part box (values 1 and 2) whose position shifts with
    the case index, and image intensity 1 + label + noise.
    """
    labels = labels or {"background": 0, "head": 1, "tail": 2}
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    rng = np.random.default_rng(0)
    for index in range(num_cases):
        label = np.zeros(shape, dtype=np.uint8)
        offset = index % 3
        label[4 + offset:9 + offset, 5:12, 4:10] = 1
        label[9 + offset:13 + offset, 5:12, 4:10] = 2
        image = (1.0 + label + 0.3 * rng.standard_normal(shape)).astype(np.float32)
        case = f"case_{index:03d}"
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{case}.nii.gz")
    dataset = {
        "name": "Tiny",
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return root


def build_tiny_datasets(root: Path, cache_dir: Path, patch_size=(16, 16, 16), *, rotation: bool = False,
                        probability: float = 0.2):
    """Return ``(train_dataset, val_dataset)`` for a dataset folder written by ``write_tiny_dataset``.

    Trains on every case but the last and validates on the last.
    """
    from gmrseg.data.dataset import load_dataset
    from gmrseg.data.preprocessing import PreprocessingPlan
    from gmrseg.data.transforms import build_datasets

    spec = load_dataset(root)
    plan = PreprocessingPlan()
    return build_datasets(spec.training[:-1], spec.training[-1:], plan, cache_dir, patch_size=list(patch_size),
                          num_classes=3, label_values=spec.labels,
                          augmentation={"rotation": rotation, "probability": probability}, seed=0)
