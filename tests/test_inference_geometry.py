"""Outputs of gmrseg predict keep the input's grid and voxel alignment in every orientation.

The marker network (see inference_helpers) segments a voxel by its own
intensity. With the input's spacing as target spacing, the output must then
equal the input's integer pattern exactly. A left-right flip, an axis swap or
a one-voxel shift anywhere in read, reorient, crop, window, restore or write
would change it.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from inference_helpers import MarkerNetwork, oriented_spacing, patch_marker_factory, save_nifti, write_run_folder
from scipy import ndimage

from gmrseg.inference import predict


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    z, x = math.radians(degrees_z), math.radians(degrees_x)
    about_z = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    return about_z @ about_x


def _affine(columns: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(columns, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


GEOMETRIES = {
    "ras_odd": (_affine(np.eye(3), (1.0, 1.0, 1.0), (-10.0, 20.0, 5.0)), (23, 17, 11)),
    "lps_smaller_than_patch": (_affine(np.diag([-1, -1, 1]), (0.8, 0.8, 2.5), (40.0, 30.0, -7.0)), (20, 20, 6)),
    "pil_permuted": (_affine(np.array([[0, 0, -1], [-1, 0, 0], [0, -1, 0]]), (1.2, 1.0, 0.9), (3.0, 4.0, 5.0)), (19, 22, 13)),
    "oblique_anisotropic": (_affine(_rotation(25.0, 10.0), (0.7, 0.7, 5.0), (-60.0, 12.0, 30.0)), (33, 29, 7)),
    "coarse_in_plane_thin_slices": (_affine(np.diag([1, -1, 1]), (4.0, 4.0, 0.6), (0.0, 0.0, 0.0)), (9, 11, 40)),
}


def _pattern(shape, seed: int) -> np.ndarray:
    """Random classes 0..2 with one solid corner block, so no symmetry of the grid maps it onto itself."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, 3, size=shape).astype(np.float32)
    pattern[: shape[0] // 3, : shape[1] // 4, : max(1, shape[2] // 2)] = 2.0
    return pattern


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_marker_output_matches_input_voxels(tmp_path, monkeypatch, name):
    patch_marker_factory(monkeypatch)
    affine, shape = GEOMETRIES[name]
    labels = {"background": 0, "one": 1, "two": 2}
    run = write_run_folder(
        tmp_path / "run",
        MarkerNetwork(1, 3),
        network_name="marker",
        labels=labels,
        patch_size=(24, 24, 8),
        target_spacing=oriented_spacing(affine),
    )
    pattern = _pattern(shape, seed=len(name))
    source = save_nifti(tmp_path / "in" / f"{name}.nii.gz", pattern, affine)

    failures = predict(run, source, tmp_path / "out" / f"{name}.nii", device="cpu")

    assert failures == 0
    written = nib.load(str(tmp_path / "out" / f"{name}.nii"))
    assert written.shape == shape
    np.testing.assert_allclose(written.affine, nib.load(str(source)).affine, atol=1e-5)
    assert int(written.header["sform_code"]) == 1
    assert int(written.header["qform_code"]) == 1
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), pattern.astype(np.uint8))


def test_resampled_blob_stays_in_place(tmp_path, monkeypatch):
    """With resampling (1 x 1 x 3 mm LPS to 1.5 mm isotropic and back) a blob keeps its world position."""
    patch_marker_factory(monkeypatch)
    affine = _affine(np.diag([-1, -1, 1]), (1.0, 1.0, 3.0), (25.0, -5.0, 10.0))
    shape = (40, 36, 14)
    grid = np.stack(np.meshgrid(*[np.arange(size) for size in shape], indexing="ij"), axis=-1).astype(np.float64)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    centre = np.array([25.0 - 12.3, -5.0 - 20.7, 10.0 + 17.2])
    distance = np.linalg.norm(world - centre, axis=-1)
    blob = np.exp(-0.5 * (distance / 7.0) ** 2).astype(np.float32)

    run = write_run_folder(
        tmp_path / "run", MarkerNetwork(1, 2), network_name="marker", patch_size=(16, 16, 16),
        target_spacing=(1.5, 1.5, 1.5),
    )
    source = save_nifti(tmp_path / "blob.nii.gz", blob, affine)
    assert predict(run, source, tmp_path / "seg.nii.gz", device="cpu") == 0

    segmentation = np.asarray(nib.load(str(tmp_path / "seg.nii.gz")).dataobj) > 0
    expected = blob > 0.5
    dice = 2 * np.count_nonzero(segmentation & expected) / (segmentation.sum() + expected.sum())
    assert dice > 0.9
    predicted_centre = affine[:3, :3] @ np.array(ndimage.center_of_mass(segmentation)) + affine[:3, 3]
    expected_centre = affine[:3, :3] @ np.array(ndimage.center_of_mass(expected)) + affine[:3, 3]
    assert np.abs(predicted_centre - expected_centre).max() < 0.3


def test_probabilities_written_on_input_grid(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    affine, shape = GEOMETRIES["oblique_anisotropic"]
    run = write_run_folder(
        tmp_path / "run", MarkerNetwork(1, 3), network_name="marker", labels={"background": 0, "a": 1, "b": 2},
        target_spacing=oriented_spacing(affine),
    )
    pattern = _pattern(shape, seed=3)
    source = save_nifti(tmp_path / "case.nii.gz", pattern, affine)

    assert predict(run, source, tmp_path / "out" / "case.nii.gz", device="cpu", save_probabilities=True) == 0

    probabilities = nib.load(str(tmp_path / "out" / "case_probabilities.nii.gz"))
    data = np.asarray(probabilities.dataobj)
    assert data.dtype == np.float32
    np.testing.assert_allclose(probabilities.affine, affine, atol=1e-5)
    # The writer stores classes as the fourth dimension, or as channels first; accept either layout.
    classes_last = data if data.shape[:3] == shape else np.moveaxis(data, 0, -1)
    assert classes_last.shape == (*shape, 3)
    np.testing.assert_allclose(classes_last.sum(axis=-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(classes_last, axis=-1), pattern.astype(np.int64))
