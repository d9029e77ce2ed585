"""Synthetic dataset with a left and a right copy of one structure, for the lateral-label benchmark.

Each case is a small volume with a body (an ellipsoid of soft tissue), a
midline spine (a bright cylinder along z, label ``spine``) and two kidney-like
ellipsoids mirrored across the body's sagittal midline (labels
``kidney_left`` and ``kidney_right``). Positions, sizes, orientations and
intensities are drawn at random per case and per kidney from one distribution
that is symmetric under a left-right reflection, so the only cue telling the
two kidneys apart is which side of the patient they are on.

Coordinates are RAS+ (x grows toward the patient's right). The body is moved
off the volume centre at random, so the midline is not the middle of the voxel
grid. A share of the cases is stored in LPS voxel order (x and y axes
flipped, with the affine saying so) to check that the left/right split uses
world coordinates and not voxel indices.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from gmrseg.errors import InputError
from gmrseg.utils.files import atomic_write_path, save_json_atomic

__all__ = ["LATERAL_LABELS", "make_lateral_dataset", "synthesize_lateral_case"]

logger = logging.getLogger(__name__)

LATERAL_LABELS = {"background": 0, "kidney_left": 1, "kidney_right": 2, "spine": 3}


def _ellipsoid(grid: np.ndarray, center: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Return a boolean mask of the voxels inside a rotated ellipsoid (all arguments in voxel units)."""
    offsets = grid - center[:, None, None, None]
    local = np.einsum("ji,j...->i...", rotation, offsets)
    return (((local / semi_axes[:, None, None, None]) ** 2).sum(axis=0)) <= 1.0


def synthesize_lateral_case(shape: Sequence[int], spacing: float, rng: np.random.Generator
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one case in RAS voxel order.

    Args:
        shape: volume size in voxels (x, y, z); each at least 24.
        spacing: isotropic voxel size in mm.
        rng: random generator.

    Returns:
        ``(image float32 (X, Y, Z), label uint8 (X, Y, Z), affine 4x4)``; the
        affine is diagonal (RAS) with world x = 0 at the centre of the grid.
    """
    shape = np.asarray(shape, dtype=int)
    grid = np.indices(tuple(shape), dtype=np.float32)
    center = (shape - 1) / 2.0

    # Body: soft-tissue ellipsoid, shifted off the grid centre.
    body_center = center + rng.uniform(-0.08, 0.08, size=3) * shape
    body_axes = np.array([0.38, 0.33, 0.46]) * shape * rng.uniform(0.9, 1.05, size=3)
    body = _ellipsoid(grid, body_center, body_axes, np.eye(3))

    # Spine: bright cylinder along z, posterior (smaller y in RAS), on the midline.
    spine_xy = np.array([body_center[0], body_center[1] - 0.55 * body_axes[1]])
    spine_radius = rng.uniform(2.0, 2.8)
    spine = (((grid[0] - spine_xy[0]) ** 2 + (grid[1] - spine_xy[1]) ** 2) <= spine_radius**2) & body

    # Kidneys: one on each side, drawn independently from mirror-image distributions.
    kidneys = {}
    for name, side in (("kidney_left", -1.0), ("kidney_right", 1.0)):
        offset = np.array([
            side * rng.uniform(0.45, 0.62) * body_axes[0],
            -rng.uniform(0.05, 0.3) * body_axes[1],
            rng.uniform(-0.25, 0.25) * body_axes[2],
        ])
        semi_axes = rng.uniform([3.0, 3.0, 4.5], [4.2, 4.2, 6.0])
        rotation = Rotation.from_euler("xyz", rng.uniform(-25, 25, size=3), degrees=True).as_matrix()
        kidneys[name] = (_ellipsoid(grid, body_center + offset, semi_axes, rotation) & body,
                         rng.uniform(140.0, 180.0))

    # Intensities: tissue classes, slight blur, then noise.
    image = np.zeros(tuple(shape), dtype=np.float32)
    image[body] = rng.uniform(80.0, 110.0)
    image[spine] = rng.uniform(210.0, 240.0)
    label = np.zeros(tuple(shape), dtype=np.uint8)
    label[spine] = LATERAL_LABELS["spine"]
    for name, (mask, intensity) in kidneys.items():
        image[mask] = intensity
        label[mask] = LATERAL_LABELS[name]
    image = ndimage.gaussian_filter(image, sigma=0.7)
    image += rng.normal(0.0, 8.0, size=image.shape).astype(np.float32)

    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -center * spacing
    return image.astype(np.float32), label, affine


def _to_lps(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Store a RAS-ordered array in LPS voxel order; every voxel keeps its world position."""
    size_x, size_y = array.shape[0], array.shape[1]
    flip = np.array([[-1.0, 0, 0, size_x - 1], [0, -1.0, 0, size_y - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    return np.ascontiguousarray(array[::-1, ::-1, :]), affine @ flip


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    with atomic_write_path(path) as temporary:
        nib.save(image, temporary)


def make_lateral_dataset(
    out_dir: str | os.PathLike,
    *,
    cases: int = 24,
    test_fraction: float = 0.25,
    shape: Sequence[int] = (40, 32, 32),
    spacing: float = 2.0,
    lps_every: int = 2,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset folder (nnU-Net v2 layout) with left and right kidneys.

    Args:
        out_dir: folder to create; a non-empty folder raises FileExistsError
            unless ``overwrite`` is set and it contains a dataset.json.
        cases: total cases, training plus test (at least 4).
        test_fraction: fraction of cases written to imagesTs/labelsTs.
        shape: volume size in voxels (x, y, z), each at least 24.
        spacing: isotropic voxel size in mm.
        lps_every: every ``lps_every``-th case is stored in LPS voxel order
            (0 stores all cases in RAS).
        seed: random seed.
        overwrite: replace the dataset in an existing ``out_dir``.

    Returns:
        ``out_dir`` as a Path.
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 4:
        raise InputError(f"cases must be an integer >= 4 (training needs at least 3 cases), got {cases!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if len(shape) != 3 or any(int(size) < 24 for size in shape):
        raise InputError(f"shape must be three sizes of at least 24 voxels, got {tuple(shape)}")
    if not 0.1 <= float(spacing) <= 10.0:
        raise InputError(f"spacing must lie between 0.1 and 10 mm, got {spacing!r}")
    if lps_every < 0:
        raise InputError(f"lps_every must be 0 (all RAS) or positive, got {lps_every}")

    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder or pass overwrite=True")
        if not (out_dir / "dataset.json").is_file():
            raise InputError(f"{out_dir} is not empty and contains no dataset.json; gmrseg does not clear it. "
                             "Choose a new folder")
        for name in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            shutil.rmtree(out_dir / name, ignore_errors=True)

    rng = np.random.default_rng(seed)
    num_test = min(max(int(round(cases * float(test_fraction))), 1), cases - 3)
    for index in range(cases):
        case_id = f"lateral_{index:03d}"
        image, label, affine = synthesize_lateral_case(shape, float(spacing), rng)
        if lps_every and index % lps_every == 1:
            image, _ = _to_lps(image, affine)
            label, affine = _to_lps(label, affine)
        images, labels = ("imagesTs", "labelsTs") if index >= cases - num_test else ("imagesTr", "labelsTr")
        _save(image, affine, out_dir / images / f"{case_id}_0000.nii.gz")
        _save(label, affine, out_dir / labels / f"{case_id}.nii.gz")

    save_json_atomic(out_dir / "dataset.json", {
        "name": "SyntheticKidneys",
        "description": "Synthetic body with a midline spine and mirror-image left and right kidneys "
                       "(gmrseg lateral-label benchmark).",
        "channel_names": {"0": "synthetic"},
        "labels": dict(LATERAL_LABELS),
        "numTraining": cases - num_test,
        "file_ending": ".nii.gz",
        "gmrseg_synthetic": {"seed": seed, "shape": [int(size) for size in shape], "spacing": float(spacing),
                             "lps_every": lps_every},
    })
    logger.info("Wrote synthetic lateral dataset to %s: %d training and %d test cases", out_dir,
                cases - num_test, num_test)
    return out_dir
