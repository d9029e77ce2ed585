"""Lateral label pairs: detection, merging, and splitting back by world side."""

import numpy as np
import pytest

from gmrseg.data.lateral import build_lateral_label_map, detect_label_pairs, split_lateral
from gmrseg.errors import InputError

KIDNEYS = {"background": 0, "kidney_left": 1, "kidney_right": 2, "liver": 3}


@pytest.mark.parametrize(
    "left, right",
    [
        ("kidney_left", "kidney_right"),
        ("Left-Hippocampus", "Right-Hippocampus"),
        ("left kidney", "right kidney"),
        ("kidney.L", "kidney.R"),
        ("lt_lung", "rt_lung"),
        ("LeftKidney", "RightKidney"),
        ("KIDNEY_L", "KIDNEY_R"),
    ],
)
def test_detect_pair_spellings(left, right):
    pairs = detect_label_pairs({"background": 0, left: 1, right: 2, "liver": 3})
    assert len(pairs) == 1
    assert (pairs[0].left, pairs[0].right) == (left, right)


def test_detect_ignores_inner_words():
    labels = {"background": 0, "left_ventricle_wall": 1, "right_ventricle_wall": 2, "ligament": 3}
    assert [pair.merged for pair in detect_label_pairs(labels)] == ["ventricle_wall"]
    assert detect_label_pairs({"background": 0, "lung": 1, "large bowel": 2}) == []


def test_unpaired_lateral_label_names_it():
    with pytest.raises(InputError, match="'kidney_left'.*no right partner"):
        detect_label_pairs({"background": 0, "kidney_left": 1, "liver": 2})


def test_config_pairs_override_detection():
    labels = {"background": 0, "kidney_left": 1, "kidney_right": 2, "sinister": 3, "dexter": 4}
    label_map = build_lateral_label_map(labels, [["sinister", "dexter"]])
    assert [(pair.left, pair.right) for pair in label_map.pairs] == [("sinister", "dexter")]
    assert len(label_map.network_labels) == 4
    assert build_lateral_label_map(labels, []).pairs == []


def test_config_pairs_unknown_name():
    with pytest.raises(InputError, match="'spleen_left'.*valid labels"):
        build_lateral_label_map(KIDNEYS, [["spleen_left", "kidney_right"]])


def test_merge_maps_pair_to_one_class():
    label_map = build_lateral_label_map(KIDNEYS)
    assert label_map.network_labels == {"background": 0, "kidney": 1, "liver": 2}
    merged = label_map.merge(np.array([0, 1, 2, 3]))
    assert merged.tolist() == [0, 1, 1, 2]


def _mirror_scan(size=24):
    """Two mirror-image blobs in RAS voxel order: index x grows toward the patient's right."""
    x, y, z = np.meshgrid(*([np.arange(size)] * 3), indexing="ij")
    body = ((x - 11.5) ** 2 / 100 + (y - 11.5) ** 2 / 60 + (z - 11.5) ** 2 / 100) <= 1
    image = np.where(body, 100.0, 0.0).astype(np.float32)
    blob_left = (x - 6) ** 2 + (y - 12) ** 2 + (z - 12) ** 2 <= 6
    blob_right = (x - 17) ** 2 + (y - 12) ** 2 + (z - 12) ** 2 <= 6
    truth = np.zeros(image.shape, dtype=np.int16)
    truth[blob_left] = KIDNEYS["kidney_left"]
    truth[blob_right] = KIDNEYS["kidney_right"]
    return image, truth


def _store(array, orientation):
    """Return ``array`` stored with another voxel order, and the affine that keeps its world position."""
    size = array.shape[0]
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = [-40.0, 10.0, 5.0]
    if orientation == "RAS":
        return array, affine
    if orientation == "LPS":
        flipped = array[::-1, ::-1, :]
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = size - 1
        return flipped.copy(), affine @ flip
    if orientation == "x_flipped":
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = size - 1
        return array[::-1].copy(), affine @ flip
    if orientation == "oblique":
        angle = np.deg2rad(25.0)
        rotation = np.eye(4)
        rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        return array, rotation @ affine
    raise ValueError(orientation)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "x_flipped", "oblique"])
@pytest.mark.parametrize("midline", ["body", "labels"])
def test_split_puts_labels_on_correct_side(orientation, midline):
    image, truth = _mirror_scan()
    label_map = build_lateral_label_map(KIDNEYS)
    stored_image, affine = _store(image, orientation)
    stored_truth, _ = _store(truth, orientation)

    network_output = label_map.merge(stored_truth)
    restored = split_lateral(network_output, affine, label_map, image=stored_image, midline=midline)

    assert np.array_equal(restored, stored_truth)


def test_split_keeps_side_in_world_space():
    image, truth = _mirror_scan()
    label_map = build_lateral_label_map(KIDNEYS)
    stored_truth, affine = _store(truth, "LPS")
    restored = split_lateral(label_map.merge(stored_truth), affine, label_map, image=_store(image, "LPS")[0])

    right_voxels = np.argwhere(restored == KIDNEYS["kidney_right"])
    left_voxels = np.argwhere(restored == KIDNEYS["kidney_left"])
    right_x = (right_voxels @ affine[0, :3] + affine[0, 3]).mean()
    left_x = (left_voxels @ affine[0, :3] + affine[0, 3]).mean()
    assert right_x > left_x


def test_split_cuts_component_crossing_midline():
    image, _ = _mirror_scan()
    bar = np.zeros(image.shape, dtype=np.int16)
    bar[4:20, 10:14, 10:14] = 1
    label_map = build_lateral_label_map(KIDNEYS)
    restored = split_lateral(bar, np.eye(4), label_map, image=image)

    assert set(np.unique(restored[4:12, 10:14, 10:14])) == {KIDNEYS["kidney_left"]}
    assert set(np.unique(restored[12:20, 10:14, 10:14])) == {KIDNEYS["kidney_right"]}


def test_split_keeps_small_overlap_on_one_side():
    image, _ = _mirror_scan()
    blob = np.zeros(image.shape, dtype=np.int16)
    blob[11:22, 10:14, 10:14] = 1  # 1 of 11 slices (9%) lies left of the midline at x = 11.5
    label_map = build_lateral_label_map(KIDNEYS)
    restored = split_lateral(blob, np.eye(4), label_map, image=image)
    assert set(np.unique(restored[blob > 0])) == {KIDNEYS["kidney_right"]}


def test_split_without_pairs_restores_values():
    labels = {"background": 0, "anterior": 1, "posterior": 2}
    label_map = build_lateral_label_map(labels)
    segmentation = np.array([[[0, 1, 2]]])
    assert np.array_equal(split_lateral(segmentation, np.eye(4), label_map), segmentation)


def test_split_world_midline():
    label_map = build_lateral_label_map(KIDNEYS)
    segmentation = np.zeros((10, 2, 2), dtype=np.int16)
    segmentation[1:3] = 1
    segmentation[7:9] = 1
    affine = np.eye(4)
    affine[0, 3] = -4.5  # world x = 0 lies between voxels 4 and 5
    restored = split_lateral(segmentation, affine, label_map, midline="world")
    assert set(np.unique(restored[1:3])) == {1}
    assert set(np.unique(restored[7:9])) == {2}
