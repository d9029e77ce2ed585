"""Preprocessing geometry: orientation, crop, resampling and their inverse."""

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gmrseg.data.preprocessing import PreprocessingPlan, preprocess_case, restore_to_original
from gmrseg.errors import InputError


def _affine(linear, origin=(10.0, -20.0, 5.0)):
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


def _case(shape, affine, seed=0):
    """Image nonzero except a one-voxel border, and a two-class ellipsoid label well inside it."""
    rng = np.random.default_rng(seed)
    image = np.zeros((1, *shape), np.float32)
    image[0, 1:-1, 1:-1, 1:-1] = rng.random([size - 2 for size in shape]) + 1.0
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    grid = np.meshgrid(*[np.arange(size) for size in shape], indexing="ij")
    center = (np.asarray(shape) - 1) / 2
    radius = 0.35 * min(np.asarray(shape) * spacing)
    distance = sum(((axis - c) * s) ** 2 for axis, c, s in zip(grid, center, spacing))
    label = np.zeros(shape, np.int16)
    label[distance < radius**2] = 1
    label[(distance < radius**2) & (grid[0] > center[0])] = 2
    return image, label


GEOMETRIES = {
    "RAS": _affine(np.eye(3)),
    "LPS": _affine(np.diag([-1.0, -1.0, 1.0])),
    # Voxel axes point to Posterior, Inferior, Left.
    "PIL": _affine(np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])),
    "oblique30": _affine(Rotation.from_euler("x", 30, degrees=True).as_matrix()),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_axis_codes_match_names(name):
    if name == "oblique30":
        assert "".join(nib.aff2axcodes(GEOMETRIES[name])) == "RAS"
    else:
        assert "".join(nib.aff2axcodes(GEOMETRIES[name])) == name


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_round_trip_exact_at_own_spacing(name):
    affine = GEOMETRIES[name]
    image, label = _case((20, 24, 16), affine)
    plan = PreprocessingPlan(target_spacing=(1.0, 1.0, 1.0))

    result = preprocess_case(image, affine, plan, label)
    restored = restore_to_original(result.label.numpy(), result.inverse, mode="nearest")

    assert result.inverse["resampled"] is False
    assert restored.shape == (1, 20, 24, 16)
    assert np.array_equal(restored[0], label)


def test_round_trip_anisotropic_default_iso():
    affine = _affine(np.diag([0.7, 0.7, 3.0]))
    image, label = _case((40, 44, 12), affine)
    plan = PreprocessingPlan(target_spacing=(0.7, 0.7, 0.7))

    result = preprocess_case(image, affine, plan, label)
    restored = restore_to_original(result.label.numpy(), result.inverse, mode="nearest")[0]

    assert result.inverse["resampled"] is True
    assert np.mean(restored == label) >= 0.99


def test_round_trip_oblique_resampled():
    linear = Rotation.from_euler("xz", [30, 10], degrees=True).as_matrix() @ np.diag([0.8, 0.8, 1.6])
    affine = _affine(linear)
    image, label = _case((24, 24, 16), affine)
    plan = PreprocessingPlan(target_spacing=(0.8, 0.8, 0.8))

    result = preprocess_case(image, affine, plan, label)
    restored = restore_to_original(result.label.numpy(), result.inverse, mode="nearest")[0]

    assert result.inverse["resampled"] is True
    assert np.mean(restored == label) >= 0.99


def test_probabilities_restore_linearly():
    affine = _affine(np.diag([0.7, 0.7, 3.0]))
    image, label = _case((40, 44, 12), affine)
    plan = PreprocessingPlan(target_spacing=(0.7, 0.7, 0.7))
    result = preprocess_case(image, affine, plan, label)
    one_hot = torch.nn.functional.one_hot(result.label[0].long(), 3).permute(3, 0, 1, 2).float()

    restored = restore_to_original(one_hot, result.inverse, mode="linear")

    assert restored.dtype == np.float32
    assert np.allclose(restored.sum(axis=0), 1.0, atol=1e-5)
    assert np.mean(restored.argmax(axis=0) == label) >= 0.99


def test_pad_outside_crop_is_background():
    affine = GEOMETRIES["RAS"]
    image = np.zeros((1, 20, 20, 20), np.float32)
    image[0, 5:15, 6:14, 7:13] = 1.0
    plan = PreprocessingPlan(target_spacing=(1.0, 1.0, 1.0))
    result = preprocess_case(image, affine, plan)
    probabilities = np.zeros((2, *result.inverse["preprocessed_shape"]), np.float32)
    probabilities[1] = 1.0

    restored = restore_to_original(probabilities, result.inverse, mode="linear")

    assert result.inverse["preprocessed_shape"] == [10, 8, 6]
    assert restored[0, 0, 0, 0] == 1.0
    assert restored[1, 0, 0, 0] == 0.0
    assert restored[1, 10, 10, 10] == 1.0


@pytest.mark.parametrize("name", ["LPS", "PIL", "oblique30"])
def test_marker_at_patient_right_ends_high_x(name):
    affine = GEOMETRIES[name]
    image, _ = _case((20, 24, 16), affine)
    # The voxel whose world x is largest lies furthest to the patient's right (RAS+ world).
    grid = np.stack(np.meshgrid(*[np.arange(size) for size in (20, 24, 16)], indexing="ij")).reshape(3, -1)
    world_x = (affine[:3, :3] @ grid + affine[:3, 3:])[0]
    inside = (grid.min(axis=0) >= 1) & (grid[0] < 19) & (grid[1] < 23) & (grid[2] < 15)
    right = grid[:, np.argmax(np.where(inside, world_x, -np.inf))]
    left = grid[:, np.argmin(np.where(inside, world_x, np.inf))]
    image[0, right[0], right[1], right[2]] = 100.0
    image[0, left[0], left[1], left[2]] = -100.0
    plan = PreprocessingPlan(target_spacing=(1.0, 1.0, 1.0), normalization=[{"scheme": "none"}])

    result = preprocess_case(image, affine, plan)

    x_right = np.argwhere(result.image[0].numpy() == 100.0)[0][0]
    x_left = np.argwhere(result.image[0].numpy() == -100.0)[0][0]
    assert x_right == result.image.shape[1] - 1
    assert x_left == 0
    assert "".join(nib.aff2axcodes(np.asarray(result.inverse["preprocessed_affine"]))) == "RAS"


def test_no_resampling_keeps_voxels_exactly():
    affine = GEOMETRIES["LPS"]
    image, _ = _case((12, 10, 8), affine)
    plan = PreprocessingPlan(target_spacing=(1.0, 1.0, 1.0), normalization=[{"scheme": "none"}], crop_to_nonzero=False)

    result = preprocess_case(image, affine, plan)

    expected = image[0, ::-1, ::-1, :]
    assert np.array_equal(result.image[0].numpy(), expected)


def test_label_outside_image_box_warns(caplog):
    affine = GEOMETRIES["RAS"]
    image = np.zeros((1, 16, 16, 16), np.float32)
    image[0, 4:12, 4:12, 4:12] = 1.0
    label = np.zeros((16, 16, 16), np.int16)
    label[1:3, 1:3, 1:3] = 1
    plan = PreprocessingPlan(target_spacing=(1.0, 1.0, 1.0))

    with caplog.at_level("WARNING"):
        preprocess_case(image, affine, plan, label)

    assert "removed 8 labelled voxels" in caplog.text


def test_oversized_resampling_names_size():
    affine = GEOMETRIES["RAS"]
    image, _ = _case((20, 20, 20), affine)
    plan = PreprocessingPlan(target_spacing=(0.25, 0.25, 0.25), max_voxels=100_000)

    with pytest.raises(InputError) as error:
        preprocess_case(image, affine, plan)

    message = str(error.value)
    assert "voxels per channel" in message
    assert "[1.0, 1.0, 1.0] mm" in message
    assert "coarser target spacing" in message


def test_bad_inputs_raise():
    plan = PreprocessingPlan()
    with pytest.raises(InputError, match="shape"):
        preprocess_case(np.zeros((8, 8, 8), np.float32), np.eye(4), plan)
    with pytest.raises(InputError, match="channel"):
        preprocess_case(np.ones((2, 8, 8, 8), np.float32), np.eye(4), plan)
    with pytest.raises(InputError, match="singular"):
        preprocess_case(np.ones((1, 8, 8, 8), np.float32), np.diag([1.0, 0.0, 1.0, 1.0]), plan)
    with pytest.raises(InputError, match="label shape"):
        preprocess_case(np.ones((1, 8, 8, 8), np.float32), np.eye(4), plan, np.zeros((8, 8, 7)))
    with pytest.raises(InputError, match="non-integer"):
        preprocess_case(np.ones((1, 8, 8, 8), np.float32), np.eye(4), plan, np.full((8, 8, 8), 0.5))


def test_restore_rejects_wrong_shape():
    image, label = _case((12, 12, 12), GEOMETRIES["RAS"])
    result = preprocess_case(image, GEOMETRIES["RAS"], PreprocessingPlan(), label)

    with pytest.raises(InputError, match="preprocessed grid"):
        restore_to_original(np.zeros((1, 3, 3, 3)), result.inverse, mode="nearest")
    with pytest.raises(InputError, match="mode"):
        restore_to_original(result.label, result.inverse, mode="cubic")


REAL_SCANS = "/work/shared/data/geometry"


@pytest.mark.parametrize("stem, target", [
    ("spinalcord_t2_psr", None),
    ("spinalcord_t2s_aniso", None),
    ("spinalcord_t2s_aniso", (0.5, 0.5, 0.5)),
    ("spleen_ct_5mm", None),
])
def test_real_scan_round_trip(stem, target):
    from pathlib import Path

    from gmrseg.data.io import read_image, read_label

    image_path = Path(REAL_SCANS) / f"{stem}.nii.gz"
    if not image_path.is_file():
        pytest.skip(f"{image_path} not available")
    image, geometry = read_image(image_path)
    label = read_label(Path(REAL_SCANS) / f"{stem}_label.nii.gz", geometry)
    own_spacing = tuple(float(value) for value in np.sqrt((geometry.affine[:3, :3] ** 2).sum(axis=0)))
    reoriented = nib.orientations.ornt_transform(nib.io_orientation(geometry.affine), nib.orientations.axcodes2ornt("RAS"))
    spacing_ras = [0.0, 0.0, 0.0]
    for axis, (target_axis, _) in enumerate(reoriented):
        spacing_ras[int(target_axis)] = own_spacing[axis]
    plan = PreprocessingPlan(target_spacing=target or spacing_ras, crop_to_nonzero=False)

    result = preprocess_case(image, geometry.affine, plan, label)
    restored = restore_to_original(result.label.numpy(), result.inverse, mode="nearest")[0]

    assert result.inverse["resampled"] is (target is not None)
    assert "".join(nib.aff2axcodes(np.asarray(result.inverse["preprocessed_affine"]))) == "RAS"
    if target is None:
        assert np.array_equal(restored, label)
    else:
        assert np.mean(restored == label) >= 0.99
