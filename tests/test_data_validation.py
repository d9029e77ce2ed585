"""Dataset validation: every kind of bad dataset gives one line naming the file."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gmrseg.cli import main
from gmrseg.data.validation import validate_dataset

HIPPOCAMPUS = Path("/work/shared/data/hippocampus")
SHAPE = (16, 14, 12)


def save_nifti(path, data, affine=None):
    affine = np.eye(4) if affine is None else affine
    image = nib.Nifti1Image(np.asarray(data), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def image_volume(seed):
    return np.random.default_rng(seed).normal(50.0, 10.0, size=SHAPE).astype(np.float32)


def label_volume(seed):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    offset = seed % 3
    labels[4 + offset:9 + offset, 3:8, 3:7] = 1
    labels[2:4, 9:12, 6:9] = 2
    return labels


def make_dataset(root, *, cases=3, channels=1, ending=".nii.gz", num_training=None, labels=None):
    """Write a clean nnU-Net v2 dataset with ``cases`` training cases and one test case."""
    root = Path(root)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(cases):
        case_id = f"case_{index:03d}"
        for channel in range(channels):
            save_nifti(root / "imagesTr" / f"{case_id}_{channel:04d}{ending}", image_volume(10 * index + channel))
        save_nifti(root / "labelsTr" / f"{case_id}{ending}", label_volume(index))
    save_nifti(root / "imagesTs" / f"test_000_0000{ending}", image_volume(99))
    for channel in range(1, channels):
        save_nifti(root / "imagesTs" / f"test_000_{channel:04d}{ending}", image_volume(100 + channel))

    dataset = {
        "name": "Synthetic",
        "channel_names": {str(channel): ("CT" if channel == 0 else f"MR{channel}") for channel in range(channels)},
        "labels": labels or {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": cases if num_training is None else num_training,
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def problem_lines(report):
    return [str(problem) for problem in report.problems]


def assert_one_problem(report, path, fragment):
    """Exactly one problem names ``path`` and contains ``fragment``."""
    matches = [line for line in problem_lines(report) if line.startswith(f"{path}: ") and fragment in line]
    assert len(matches) == 1, problem_lines(report)


def test_clean_dataset_ok(tmp_path):
    root = make_dataset(tmp_path / "clean")

    report = validate_dataset(root)

    assert report.ok, problem_lines(report)
    assert report.num_training == 3
    assert report.num_test == 1
    assert report.warnings == []
    assert "ready for training" in report.summary()


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_multichannel_dataset_ok(tmp_path, ending):
    root = make_dataset(tmp_path / "multi", channels=2, ending=ending)

    report = validate_dataset(root)

    assert report.ok, problem_lines(report)


def test_spaces_and_non_ascii_names(tmp_path):
    root = make_dataset(tmp_path / "données IRM", cases=1, num_training=2)
    save_nifti(root / "imagesTr" / "patient é 01_0000.nii.gz", image_volume(4))
    save_nifti(root / "labelsTr" / "patient é 01.nii.gz", label_volume(4))

    report = validate_dataset(root)

    assert report.ok, problem_lines(report)
    assert report.num_training == 2


def test_missing_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").unlink()

    report = validate_dataset(root)

    assert not report.ok
    assert_one_problem(report, root / "dataset.json", "dataset.json not found")


def test_invalid_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text('{"labels": {"background": 0,}')

    report = validate_dataset(root)

    assert_one_problem(report, root / "dataset.json", "invalid JSON at line 1")


def test_missing_channel_file(tmp_path):
    root = make_dataset(tmp_path / "ds", channels=2)
    missing = root / "imagesTr" / "case_001_0001.nii.gz"
    missing.unlink()

    report = validate_dataset(root)

    assert_one_problem(report, missing, "missing channel 1 (MR1) file of case 'case_001'")
    assert len(report.problems) == 1


def test_missing_label_file(tmp_path):
    root = make_dataset(tmp_path / "ds")
    missing = root / "labelsTr" / "case_002.nii.gz"
    missing.unlink()

    report = validate_dataset(root)

    assert_one_problem(report, missing, "missing label file of case 'case_002'")


def test_label_without_image(tmp_path):
    root = make_dataset(tmp_path / "ds", num_training=4)
    save_nifti(root / "labelsTr" / "orphan.nii.gz", label_volume(0))

    report = validate_dataset(root)

    assert_one_problem(report, root / "imagesTr" / "orphan_0000.nii.gz", "missing image file of case 'orphan'")


def test_extra_files_reported(tmp_path):
    root = make_dataset(tmp_path / "ds")
    unnamed = save_nifti(root / "imagesTr" / "scan.nii.gz", image_volume(5))
    extra_channel = save_nifti(root / "imagesTr" / "case_000_0001.nii.gz", image_volume(6))
    (root / "imagesTr" / ".DS_Store").write_bytes(b"junk")

    report = validate_dataset(root)

    assert_one_problem(report, unnamed, "does not end in a 4-digit channel index")
    assert_one_problem(report, extra_channel, "channel 1 of case 'case_000', but dataset.json declares 1 channel")
    assert len(report.problems) == 2


def test_wrong_file_ending_files(tmp_path):
    root = make_dataset(tmp_path / "ds")
    wrong = save_nifti(root / "imagesTr" / "case_003_0000.nii", image_volume(7))

    report = validate_dataset(root)

    assert_one_problem(report, wrong, "file ending '.nii' does not match dataset.json file_ending '.nii.gz'")


def test_file_ending_matches_nothing(tmp_path):
    root = make_dataset(tmp_path / "ds", ending=".nii")
    dataset = json.loads((root / "dataset.json").read_text())
    dataset["file_ending"] = ".nii.gz"
    (root / "dataset.json").write_text(json.dumps(dataset))

    report = validate_dataset(root)

    assert_one_problem(report, root / "dataset.json", "file_ending '.nii.gz' matches no file in imagesTr/")
    assert_one_problem(report, root / "dataset.json", "empty dataset")


def test_empty_dataset(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=0, num_training=0)

    report = validate_dataset(root)

    assert_one_problem(report, root / "dataset.json", "empty dataset: no training cases found")


def test_num_training_disagrees(tmp_path):
    root = make_dataset(tmp_path / "ds", num_training=5)

    report = validate_dataset(root)

    assert_one_problem(report, root / "dataset.json", "numTraining is 5 but 3 training cases were found")


def test_label_shape_off_by_one(tmp_path):
    root = make_dataset(tmp_path / "ds")
    label = root / "labelsTr" / "case_001.nii.gz"
    save_nifti(label, np.zeros((16, 14, 13), dtype=np.uint8))

    report = validate_dataset(root)

    assert_one_problem(report, label, "label grid does not match")
    assert "shape (16, 14, 12) vs (16, 14, 13)" in str(report.problems[0])
    assert "case_001_0000.nii.gz" in str(report.problems[0])


def test_label_affine_mismatch_and_noise(tmp_path):
    root = make_dataset(tmp_path / "ds")
    shifted = np.eye(4)
    shifted[:3, 3] = (0.0, 0.0, 1.5)
    save_nifti(root / "labelsTr" / "case_000.nii.gz", label_volume(0), shifted)
    noisy = np.eye(4) + np.diag([1e-6, -1e-6, 1e-6, 0.0])
    save_nifti(root / "labelsTr" / "case_001.nii.gz", label_volume(1), noisy)

    report = validate_dataset(root)

    assert_one_problem(report, root / "labelsTr" / "case_000.nii.gz", "origin (0, 0, 0) vs (0, 0, 1.5) mm")
    assert len(report.problems) == 1


def test_channels_on_different_grids(tmp_path):
    root = make_dataset(tmp_path / "ds", channels=2)
    second = root / "imagesTr" / "case_002_0001.nii.gz"
    save_nifti(second, image_volume(3), np.diag([1.0, 1.0, 2.0, 1.0]))

    report = validate_dataset(root)

    assert_one_problem(report, second, "channel grid does not match")
    assert "spacing (1, 1, 1) vs (1, 1, 2) mm" in str(report.problems[0])


def test_undeclared_and_non_integer_labels(tmp_path):
    root = make_dataset(tmp_path / "ds")
    undeclared = label_volume(0)
    undeclared[0, 0, 0] = 7
    save_nifti(root / "labelsTr" / "case_000.nii.gz", undeclared)
    residue = label_volume(1).astype(np.float32)
    residue[5, 5, 5] = 0.99997
    save_nifti(root / "labelsTr" / "case_001.nii.gz", residue)
    exact_float = label_volume(2).astype(np.float32)
    save_nifti(root / "labelsTr" / "case_002.nii.gz", exact_float)

    report = validate_dataset(root)

    assert_one_problem(report, root / "labelsTr" / "case_000.nii.gz", "label values not declared in dataset.json: 7")
    assert_one_problem(report, root / "labelsTr" / "case_001.nii.gz", "not whole numbers (for example 0.99997)")
    assert len(report.problems) == 2


def test_mask_255_suggests_remapping(tmp_path):
    root = make_dataset(tmp_path / "ds", labels={"background": 0, "lesion": 1})
    for index in range(3):
        save_nifti(root / "labelsTr" / f"case_{index:03d}.nii.gz", (label_volume(index) > 0).astype(np.uint8) * 255)

    report = validate_dataset(root)

    assert len(report.problems) == 3
    assert all("remap 255" in line for line in problem_lines(report))


def test_nonfinite_image(tmp_path):
    root = make_dataset(tmp_path / "ds")
    data = image_volume(1)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    image = save_nifti(root / "imagesTr" / "case_001_0000.nii.gz", data)

    report = validate_dataset(root)

    assert_one_problem(report, image, "4 non-finite voxels (3 NaN, 1 Inf)")


def test_4d_image_where_3d_expected(tmp_path):
    root = make_dataset(tmp_path / "ds")
    image = save_nifti(root / "imagesTr" / "case_000_0000.nii.gz", np.stack([image_volume(0)] * 3, axis=-1))

    report = validate_dataset(root)

    assert_one_problem(report, image, "4D image with 3 volumes")


def test_trailing_singleton_is_warning(tmp_path):
    root = make_dataset(tmp_path / "ds")
    image = save_nifti(root / "imagesTr" / "case_000_0000.nii.gz", image_volume(0)[..., np.newaxis])

    report = validate_dataset(root)

    assert report.ok, problem_lines(report)
    assert any(str(warning).startswith(f"{image}: shape (16, 14, 12, 1)") for warning in report.warnings)


def test_truncated_and_corrupt_files(tmp_path):
    root = make_dataset(tmp_path / "ds")
    image = root / "imagesTr" / "case_000_0000.nii.gz"
    image.write_bytes(image.read_bytes()[:-300])
    label = root / "labelsTr" / "case_001.nii.gz"
    label.write_bytes(b"not a gzip file" * 40)

    report = validate_dataset(root)

    assert_one_problem(report, image, "unreadable or truncated NIfTI file")
    assert_one_problem(report, label, "not a NIfTI-1 or NIfTI-2 file")


def test_all_background_label_is_warning(tmp_path):
    root = make_dataset(tmp_path / "ds")
    label = save_nifti(root / "labelsTr" / "case_002.nii.gz", np.zeros(SHAPE, dtype=np.uint8))

    report = validate_dataset(root)

    assert report.ok, problem_lines(report)
    assert any(str(warning).startswith(f"{label}: label of case 'case_002' is all background")
               for warning in report.warnings)


def test_constant_image_and_unused_class_warnings(tmp_path):
    root = make_dataset(tmp_path / "ds", labels={"background": 0, "liver": 1, "tumour": 2, "vessel": 3})
    image = save_nifti(root / "imagesTr" / "case_001_0000.nii.gz", np.zeros(SHAPE, dtype=np.float32))

    report = validate_dataset(root)

    assert report.ok, problem_lines(report)
    warnings = [str(warning) for warning in report.warnings]
    assert any(line.startswith(f"{image}: constant image") for line in warnings)
    assert any("class 'vessel' (value 3) occurs in no readable training label" in line for line in warnings)


def test_every_problem_listed_together(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=4, num_training=6)
    (root / "labelsTr" / "case_000.nii.gz").unlink()
    data = image_volume(1)
    data[2, 2, 2] = np.nan
    save_nifti(root / "imagesTr" / "case_001_0000.nii.gz", data)
    bad = label_volume(2)
    bad[0, 0, 0] = 9
    save_nifti(root / "labelsTr" / "case_002.nii.gz", bad)
    truncated = root / "imagesTr" / "case_003_0000.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:200])

    report = validate_dataset(root)

    assert len(report.problems) == 5, problem_lines(report)
    assert "5 problem(s)" in report.summary()


def test_decathlon_dataset(tmp_path):
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    for index in range(2):
        save_nifti(root / "imagesTr" / f"brain_{index}.nii.gz", np.stack([image_volume(index)] * 2, axis=-1))
        save_nifti(root / "labelsTr" / f"brain_{index}.nii.gz", label_volume(index))
        (root / "imagesTr" / f"._brain_{index}.nii.gz").write_bytes(b"AppleDouble")
    save_nifti(root / "imagesTs" / "brain_9.nii.gz", np.stack([image_volume(9)] * 2, axis=-1))
    dataset = {
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": 2, "numTest": 1,
        "training": [{"image": f"./imagesTr/brain_{index}.nii.gz", "label": f"./labelsTr/brain_{index}.nii.gz"}
                     for index in range(2)],
        "test": ["./imagesTs/brain_9.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(dataset))

    assert validate_dataset(root).ok

    save_nifti(root / "imagesTr" / "brain_1.nii.gz", image_volume(1))
    save_nifti(root / "imagesTr" / "brain_5.nii.gz", image_volume(5))
    report = validate_dataset(root)

    assert_one_problem(report, root / "imagesTr" / "brain_1.nii.gz", "3D image with one channel, but 2 channels")
    assert_one_problem(report, root / "imagesTr" / "brain_5.nii.gz", "matches no case")


# Command line ---------------------------------------------------------------------------------


def copy_hippocampus(destination, count):
    """Copy the first ``count`` hippocampus cases and a dataset.json that matches them."""
    cases = sorted(path.name[: -len("_0000.nii.gz")] for path in (HIPPOCAMPUS / "imagesTr").iterdir())[:count]
    (destination / "imagesTr").mkdir(parents=True)
    (destination / "labelsTr").mkdir()
    for case in cases:
        shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz", destination / "imagesTr")
        shutil.copy(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz", destination / "labelsTr")
    dataset = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    dataset["numTraining"] = count
    (destination / "dataset.json").write_text(json.dumps(dataset))
    return cases


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="hippocampus dataset not available")
def test_cli_validate_hippocampus_clean(capsys):
    exit_code = main(["validate", str(HIPPOCAMPUS)])

    output = capsys.readouterr().out
    assert exit_code == 0, output
    assert "200 training and 0 test cases checked: 0 problem(s)" in output


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="hippocampus dataset not available")
def test_cli_validate_broken_copy(tmp_path, capsys):
    root = tmp_path / "hippocampus copy"
    cases = copy_hippocampus(root, 6)
    (root / "labelsTr" / f"{cases[0]}.nii.gz").unlink()
    image = root / "imagesTr" / f"{cases[1]}_0000.nii.gz"
    image.write_bytes(image.read_bytes()[:-500])
    label_path = root / "labelsTr" / f"{cases[2]}.nii.gz"
    label = nib.load(str(label_path))
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 4
    nib.save(nib.Nifti1Image(data, label.affine, label.header), str(label_path))

    exit_code = main(["validate", str(root)])

    lines = capsys.readouterr().out.splitlines()
    assert exit_code == 1
    assert f"{root / 'labelsTr' / cases[0]}.nii.gz: missing label file of case '{cases[0]}'." in lines
    assert any(line.startswith(f"{image}: unreadable or truncated NIfTI file") for line in lines)
    assert any(line.startswith(f"{label_path}: label values not declared in dataset.json: 4 (1 voxels)")
               for line in lines)
    assert lines[-1].endswith("Fix the files listed above and run gmrseg validate again.")
    assert "3 problem(s)" in lines[-1]
