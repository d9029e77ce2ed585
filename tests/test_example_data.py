"""Example dataset folders: shipped hippocampus subset, rotations, MNI152 from nilearn."""

import importlib.util
import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gmrseg.data.dataset import load_dataset
from gmrseg.data.example_data import make_example_dataset, rotate_case, shipped_hippocampus_dir
from gmrseg.errors import InputError


def test_shipped_subset_complete():
    folder = shipped_hippocampus_dir()
    images = sorted((folder / "imagesTr").glob("*_0000.nii.gz"))
    labels = sorted((folder / "labelsTr").glob("*.nii.gz"))

    assert len(images) == 80
    assert len(labels) == 80
    assert "CC BY-SA 4.0" in (folder / "LICENSE.md").read_text()
    assert "Simpson" in (folder / "LICENSE.md").read_text()


def test_hippocampus_counts_and_json(tmp_path):
    out = make_example_dataset(tmp_path / "hippo", cases=10, test_fraction=0.2, seed=1)
    description = json.loads((out / "dataset.json").read_text())
    spec = load_dataset(out)

    assert len(list((out / "imagesTr").iterdir())) == 8
    assert len(list((out / "labelsTs").iterdir())) == 2
    assert description["numTraining"] == 8
    assert description["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert description["channel_names"] == {"0": "MRI"}
    assert len(spec.training) == 8
    assert len(spec.test) == 2
    assert "CC BY-SA 4.0" in (out / "LICENSE.md").read_text()


def test_upright_copy_is_unchanged(tmp_path):
    out = make_example_dataset(tmp_path / "hippo", cases=2, test_fraction=0.5)
    case = sorted((out / "labelsTr").glob("*.nii.gz"))[0]
    source = shipped_hippocampus_dir() / "labelsTr" / case.name

    written, original = nib.load(case), nib.load(source)

    assert np.array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    assert np.allclose(written.affine, original.affine)


def test_rotated_test_cases_keep_label_volume(tmp_path):
    out = make_example_dataset(tmp_path / "hippo", cases=4, test_fraction=0.25, rotate_test="0,30", seed=2)
    description = json.loads((out / "dataset.json").read_text())
    rotations = description["test_rotations"]
    source = next(iter(rotations.values()))["source"]
    original = nib.load(shipped_hippocampus_dir() / "labelsTr" / f"{source}.nii.gz")
    original_counts = np.bincount(np.asarray(original.dataobj).astype(int).ravel(), minlength=3)

    assert sorted(rotations) == sorted(f"{source}_{name}" for name in ("rot000", "rotx030", "roty030", "rotz030"))
    for name, record in rotations.items():
        rotated = nib.load(out / "labelsTs" / f"{name}.nii.gz")
        counts = np.bincount(np.asarray(rotated.dataobj).astype(int).ravel(), minlength=3)
        assert np.allclose(rotated.affine[:3, :3], original.affine[:3, :3])
        assert abs(np.linalg.det(rotated.affine[:3, :3])) == pytest.approx(1.0)
        for value in (1, 2):
            assert counts[value] == pytest.approx(original_counts[value], rel=0.05), (name, value)


def test_rotate_case_keeps_centre_and_content():
    image = np.zeros((21, 15, 11), np.float32)
    image[10, 7, 5] = 1.0
    image[16, 7, 5] = 2.0
    label = (image > 0).astype(np.uint8)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (5.0, -4.0, 2.0)
    rotation = Rotation.from_euler("z", 90, degrees=True).as_matrix()

    moved, moved_label, moved_affine = rotate_case(image, label, affine, rotation)

    centre_world = affine @ np.array([10, 7, 5, 1.0])
    marker_world = affine @ np.array([16, 7, 5, 1.0])
    expected_marker = centre_world[:3] + rotation @ (marker_world[:3] - centre_world[:3])
    index_centre = np.linalg.solve(moved_affine, centre_world)[:3]
    index_marker = np.linalg.solve(moved_affine, np.append(expected_marker, 1.0))[:3]
    assert moved[tuple(np.rint(index_centre).astype(int))] == pytest.approx(1.0)
    assert moved[tuple(np.rint(index_marker).astype(int))] == pytest.approx(2.0)
    assert moved_label[tuple(np.rint(index_centre).astype(int))] == 1
    assert moved_label[tuple(np.rint(index_marker).astype(int))] == 1
    assert np.allclose(moved_affine[:3, :3], affine[:3, :3])


def _two_balls() -> np.ndarray:
    grid = np.indices((31, 31, 31)).astype(np.float64)
    label = np.zeros((31, 31, 31), np.uint8)
    label[np.sum((grid - np.array([15.0, 11.0, 15.0])[:, None, None, None]) ** 2, axis=0) <= 4.5**2] = 1
    label[np.sum((grid - np.array([15.0, 20.0, 15.0])[:, None, None, None]) ** 2, axis=0) <= 3.5**2] = 3
    return label


def _dice(first: np.ndarray, second: np.ndarray) -> float:
    return 2.0 * np.logical_and(first, second).sum() / (first.sum() + second.sum())


def test_linear_labels_follow_shape():
    # Rotating a ball about its own centre maps it onto itself. Linear label interpolation
    # keeps it that way; nearest neighbour makes its edge jitter. A second label (3) and the
    # background must keep their values, and outside the input stays background.
    label = np.zeros((31, 31, 31), np.uint8)
    grid = np.indices(label.shape) - 15.0
    label[np.sum(grid**2, axis=0) <= 6.3**2] = 1
    label[np.sum(grid**2, axis=0) <= 2.2**2] = 3
    image = label.astype(np.float32)
    rotation = Rotation.from_euler("xyz", [31, -47, 12], degrees=True).as_matrix()

    _, nearest, _ = rotate_case(image, label, np.eye(4), rotation)
    _, linear, _ = rotate_case(image, label, np.eye(4), rotation, label_interpolation="linear")

    assert linear.dtype == label.dtype
    assert set(np.unique(linear)) == {0, 1, 3}
    # The output grid is centred on the input's centre; the balls are centred there too.
    out_grid = np.indices(linear.shape) - ((np.array(linear.shape) - 1) / 2)[:, None, None, None]
    expected = np.zeros(linear.shape, np.uint8)
    expected[np.sum(out_grid**2, axis=0) <= 6.3**2] = 1
    expected[np.sum(out_grid**2, axis=0) <= 2.2**2] = 3
    for value in (1, 3):
        assert _dice(linear == value, expected == value) >= _dice(nearest == value, expected == value)
    # Measured 0.957 against 0.925; re-voxelising a ball of radius 6.3 cannot reach 1.
    assert _dice(linear > 0, expected > 0) > 0.95
    assert _dice(linear > 0, expected > 0) > _dice(nearest > 0, expected > 0) + 0.02
    assert linear[0, 0, 0] == 0


def test_linear_labels_exact_quarter_turns():
    label = _two_balls()
    rotation = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    _, nearest, _ = rotate_case(label.astype(np.float32), label, np.eye(4), rotation)
    _, linear, _ = rotate_case(label.astype(np.float32), label, np.eye(4), rotation, label_interpolation="linear")
    np.testing.assert_array_equal(linear, nearest)
    with pytest.raises(InputError, match="label_interpolation must be one of nearest, linear, got 'cubic'"):
        rotate_case(label.astype(np.float32), label, np.eye(4), rotation, label_interpolation="cubic")


def test_cli_linear_label_interpolation(tmp_path):
    from gmrseg.cli import main

    common = ["--cases", "2", "--test-fraction", "0.5", "--rotate-test", "30", "--seed", "4"]
    assert main(["example-data", str(tmp_path / "nearest"), *common]) == 0
    assert main(["example-data", str(tmp_path / "linear"), *common, "--label-interpolation", "linear"]) == 0

    description = json.loads((tmp_path / "linear" / "dataset.json").read_text())
    assert description["gmrseg_example"]["label_interpolation"] == "linear"
    names = sorted(path.name for path in (tmp_path / "linear" / "labelsTs").glob("*.nii.gz"))
    assert names == sorted(path.name for path in (tmp_path / "nearest" / "labelsTs").glob("*.nii.gz"))
    for name in names:
        nearest = np.asarray(nib.load(tmp_path / "nearest" / "labelsTs" / name).dataobj)
        linear = np.asarray(nib.load(tmp_path / "linear" / "labelsTs" / name).dataobj)
        assert linear.shape == nearest.shape
        assert set(np.unique(linear)) <= {0, 1, 2}
        # Same structures, different boundary voxels.
        assert _dice(linear > 0, nearest > 0) > 0.9
        assert not np.array_equal(linear, nearest)
    # Images are moved the same way either way.
    for path in (tmp_path / "linear" / "imagesTs").glob("*.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj),
                                      np.asarray(nib.load(tmp_path / "nearest" / "imagesTs" / path.name).dataobj))


def test_rotation_options(tmp_path):
    out = make_example_dataset(tmp_path / "hippo", cases=3, test_fraction=0.34, rotate_train="random",
                               rotate_test="random", seed=3)
    description = json.loads((out / "dataset.json").read_text())
    train_label = next((out / "labelsTr").glob("*.nii.gz"))

    assert len(description["test_rotations"]) == 1
    assert nib.load(train_label).shape != nib.load(shipped_hippocampus_dir() / "labelsTr" / train_label.name).shape


def test_refuses_non_empty_folder(tmp_path):
    target = tmp_path / "hippo"
    target.mkdir()
    (target / "notes.txt").write_text("mine")

    with pytest.raises(FileExistsError, match="not empty"):
        make_example_dataset(target, cases=2)
    with pytest.raises(InputError, match="no dataset.json"):
        make_example_dataset(target, cases=2, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_dataset(tmp_path):
    out = make_example_dataset(tmp_path / "hippo", cases=4, test_fraction=0.25)
    make_example_dataset(out, cases=2, test_fraction=0.5, overwrite=True)

    assert len(list((out / "imagesTr").iterdir())) == 1
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1


@pytest.mark.parametrize("arguments, match", [
    ({"dataset": "brats"}, "dataset must be"),
    ({"cases": 1}, "cases must be"),
    ({"cases": 500}, "at most 80"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"rotate_train": "15"}, "'none' or 'random'"),
    ({"rotate_test": "fifteen"}, "comma-separated angles"),
    ({"rotate_test": "15,,30"}, "comma-separated angles"),
    ({"rotate_test": "15,30,15.0"}, "angle 15 appears more than once"),
    ({"label_interpolation": "cubic"}, "label_interpolation must be one of nearest, linear"),
    ({"dataset": "mni152", "label_interpolation": "nearest"}, "hippocampus cases only"),
])
def test_invalid_arguments(tmp_path, arguments, match):
    with pytest.raises(InputError, match=match):
        make_example_dataset(tmp_path / "out", **arguments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, interrupt):
    # A fresh folder is not created at all, and an earlier dataset survives a failed
    # overwrite unchanged. No hidden staging folder is left behind either way.
    import gmrseg.data.example_data as example_data

    earlier = make_example_dataset(tmp_path / "earlier", cases=2, test_fraction=0.5)
    before = sorted(path.relative_to(earlier) for path in earlier.rglob("*"))
    save = example_data._save_nifti
    calls = []

    def failing_save(*args):
        calls.append(args)
        if len(calls) == 3:
            raise interrupt("stopped")
        save(*args)

    monkeypatch.setattr(example_data, "_save_nifti", failing_save)
    with pytest.raises(interrupt):
        make_example_dataset(tmp_path / "fresh", cases=2, test_fraction=0.5)
    calls.clear()
    with pytest.raises(interrupt):
        make_example_dataset(earlier, cases=3, test_fraction=0.34, overwrite=True)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier"]
    assert sorted(path.relative_to(earlier) for path in earlier.rglob("*")) == before
    assert json.loads((earlier / "dataset.json").read_text())["numTraining"] == 1


def test_written_folder_follows_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        out = make_example_dataset(tmp_path / "hippo", cases=2)
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="nilearn not installed")
def test_mni152_small_cases(tmp_path):
    out = make_example_dataset(tmp_path / "mni", dataset="mni152", cases=2, test_fraction=0.5, spacing=4.0)
    description = json.loads((out / "dataset.json").read_text())
    image = nib.load(next((out / "imagesTr").glob("*.nii.gz")))
    label = nib.load(next((out / "labelsTr").glob("*.nii.gz")))
    counts = np.bincount(np.asarray(label.dataobj).astype(int).ravel(), minlength=3)

    assert description["labels"] == {"background": 0, "grey_matter": 1, "white_matter": 2}
    assert np.allclose(np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0)), 4.0)
    assert image.shape == label.shape
    assert counts[1] > 0.1 * counts[1:].sum()
    assert counts[2] > 0.1 * counts[1:].sum()
    assert len(list((out / "imagesTs").iterdir())) == 1


def test_mni152_without_nilearn_names_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nilearn(name, *args, **kwargs):
        if name.startswith("nilearn"):
            raise ImportError("no nilearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nilearn)
    with pytest.raises(InputError, match=r"pip install nilearn.*pip install -e \"\.\[examples\]\""):
        make_example_dataset(tmp_path / "mni", dataset="mni152", cases=2)
    assert not (tmp_path / "mni").exists()
