"""Helpers for the inference tests: run folders, NIfTI files and a marker network.

The marker network returns logits that depend only on the voxel's own
intensity: class ``k`` wins where the intensity is closest to ``k``. Use it
with normalization ``none`` and the input's own spacing as target spacing.
The predicted segmentation of an image of integer class values must then
equal the image voxel for voxel, and any flip, permutation or shift in the
pipeline shows up as a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from torch import nn

__all__ = [
    "MarkerNetwork",
    "oriented_spacing",
    "patch_marker_factory",
    "save_nifti",
    "write_run_folder",
]


class MarkerNetwork(nn.Module):
    """Per-voxel logits ``-8 * (x - k)^2`` for class ``k``: the class nearest to the intensity wins."""

    size_divisor = 1

    def __init__(self, in_channels: int = 1, out_channels: int = 2) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(self.out_channels, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
        return -8.0 * self.scale * (x[:, :1] - classes) ** 2


def patch_marker_factory(monkeypatch) -> None:
    """Let run folders name the network ``"marker"`` (other names go to the real factory)."""
    from gmrseg.inference import run_folder

    original = run_folder._build_network

    def build(name, in_channels, out_channels, kwargs):
        if name == "marker":
            return MarkerNetwork(in_channels, out_channels)
        return original(name, in_channels, out_channels, kwargs)

    monkeypatch.setattr(run_folder, "_build_network", build)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, *, dtype=np.float32, code: int = 1) -> Path:
    """Write ``array`` with ``affine`` as qform and sform (both with ``code``)."""
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=code)
    image.set_sform(affine, code=code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def oriented_spacing(affine: np.ndarray, orientation: str = "RAS") -> list[float]:
    """Voxel sizes along the axes of the grid after reorientation to ``orientation``."""
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    transform = nib.orientations.ornt_transform(
        nib.io_orientation(np.asarray(affine)), nib.orientations.axcodes2ornt(orientation)
    )
    result = [0.0, 0.0, 0.0]
    for axis, (new_axis, _) in enumerate(transform):
        result[int(new_axis)] = float(spacing[axis])
    return result


def write_run_folder(
    root: Path,
    network: nn.Module,
    *,
    network_name: str,
    network_kwargs: dict | None = None,
    labels: dict[str, int] | None = None,
    network_labels: dict[str, int] | None = None,
    label_pairs: Sequence[Sequence[str]] = (),
    patch_size: Sequence[int] = (16, 16, 16),
    target_spacing: Sequence[float] = (1.0, 1.0, 1.0),
    normalization: str = "none",
    in_channels: int = 1,
    crop_to_nonzero: bool = True,
    equivariant: bool = True,
    folds: Sequence[int] = (0,),
    max_voxels: int | None = None,
) -> Path:
    """Write a run folder as ``gmrseg train`` lays it out, with ``network``'s weights in every fold."""
    labels = labels or {"background": 0, "foreground": 1}
    network_labels = network_labels or dict(labels)
    preprocessing = {
        "orientation": "RAS",
        "target_spacing": [float(value) for value in target_spacing],
        "normalization": [{"scheme": normalization} for _ in range(in_channels)],
        "crop_to_nonzero": crop_to_nonzero,
    }
    if max_voxels is not None:
        preprocessing["max_voxels"] = max_voxels
    plans = {
        "preprocessing": preprocessing,
        "fingerprint": {},
        "labels": labels,
        "network_labels": network_labels,
        "label_pairs": [list(pair) for pair in label_pairs],
        "in_channels": in_channels,
        "channel_names": {str(index): f"channel{index}" for index in range(in_channels)},
        "file_ending": ".nii.gz",
        "patch_size": [int(size) for size in patch_size],
        "network": {"name": network_name, "kwargs": network_kwargs or {}},
        "equivariant": equivariant,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "plans.json").write_text(json.dumps(plans, indent=2))
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "channel_names": plans["channel_names"]}))
    (root / "config.yaml").write_text("# written by the inference tests\n")
    for fold in folds:
        fold_dir = root / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        for name in ("best", "last"):
            torch.save({"model": network.state_dict(), "epoch": 0}, fold_dir / f"checkpoint_{name}.pt")
    return root
