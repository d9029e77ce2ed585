"""Dataset folders (nnU-Net v2, Decathlon) and prediction input discovery."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gmrseg.data.dataset import find_input_cases, load_dataset
from gmrseg.errors import InputError

HIPPOCAMPUS = Path("/work/shared/data/hippocampus")


def touch_nifti(path, shape=(6, 5, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.float32), np.eye(4)), str(path))
    return path


def write_json(root, data):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(data), encoding="utf-8")


NNUNET_JSON = {
    "channel_names": {"0": "T2", "1": "ADC"},
    "labels": {"background": 0, "peripheral zone": 1, "transition zone": 2},
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


def test_load_nnunet_v2(tmp_path):
    root = tmp_path / "Dataset005_Prostate"
    write_json(root, NNUNET_JSON)
    for case in ("prostate_00", "prostate_01"):
        for channel in range(2):
            touch_nifti(root / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        touch_nifti(root / "labelsTr" / f"{case}.nii.gz")
    touch_nifti(root / "imagesTs" / "prostate_07_0000.nii.gz")
    touch_nifti(root / "imagesTs" / "prostate_07_0001.nii.gz")

    spec = load_dataset(root)

    assert spec.layout == "nnunetv2"
    assert spec.name == "Dataset005_Prostate"
    assert spec.channel_names == {0: "T2", 1: "ADC"}
    assert spec.labels == {"background": 0, "peripheral zone": 1, "transition zone": 2}
    assert spec.num_training == 2
    assert spec.num_channels == 2
    assert [case.case_id for case in spec.training] == ["prostate_00", "prostate_01"]
    assert spec.training[1].image_paths == [root / "imagesTr" / "prostate_01_0000.nii.gz",
                                            root / "imagesTr" / "prostate_01_0001.nii.gz"]
    assert spec.training[1].label_path == root / "labelsTr" / "prostate_01.nii.gz"
    assert [case.case_id for case in spec.test] == ["prostate_07"]
    assert spec.test[0].label_path is None


def test_load_nnunet_explicit_file_list(tmp_path):
    root = tmp_path / "explicit"
    data = dict(NNUNET_JSON, dataset={
        "a": {"images": ["scans/a_t2.nii.gz", "scans/a_adc.nii.gz"], "label": "masks/a.nii.gz"},
    }, numTraining=1)
    write_json(root, data)

    spec = load_dataset(root)

    assert spec.training[0].image_paths == [root / "scans" / "a_t2.nii.gz", root / "scans" / "a_adc.nii.gz"]
    assert spec.training[0].label_path == root / "masks" / "a.nii.gz"


def test_load_decathlon(tmp_path):
    root = tmp_path / "Task02_Heart"
    write_json(root, {
        "name": "LeftAtrium",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "left atrium"},
        "numTraining": 2,
        "training": [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"},
                     {"image": "./imagesTr/la_004.nii.gz", "label": "./labelsTr/la_004.nii.gz"}],
        "test": ["./imagesTs/la_001.nii.gz"],
    })
    touch_nifti(root / "labelsTs" / "la_001.nii.gz")

    spec = load_dataset(root)

    assert spec.layout == "decathlon"
    assert spec.channel_names == {0: "MRI"}
    assert spec.labels == {"background": 0, "left atrium": 1}
    assert spec.file_ending == ".nii.gz"
    assert [case.case_id for case in spec.training] == ["la_003", "la_004"]
    assert spec.training[0].image_paths == [root / "imagesTr" / "la_003.nii.gz"]
    assert spec.training[0].label_path == root / "labelsTr" / "la_003.nii.gz"
    assert spec.test[0].case_id == "la_001"
    assert spec.test[0].label_path == root / "labelsTs" / "la_001.nii.gz"


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="hippocampus dataset not available")
def test_load_hippocampus():
    spec = load_dataset(HIPPOCAMPUS)

    assert spec.labels == {"background": 0, "anterior": 1, "posterior": 2}
    assert len(spec.training) == spec.num_training == 200
    assert all(case.image_paths[0].exists() and case.label_path.exists() for case in spec.training)


@pytest.mark.parametrize("content, message", [
    ("not json", "invalid JSON at line 1"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"labels": {"background": 0}, "file_ending": ".nii.gz"}), "missing 'channel_names'"),
    (json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}), "missing or empty 'labels'"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 2}, "file_ending": ".nii.gz"}),
     r"label values must be 0..1"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": [1, 2]},
                 "file_ending": ".nii.gz"}), "region-based labels are not supported"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1.5}, "file_ending": ".nii.gz"}),
     "not an integer"),
    (json.dumps({"channel_names": {"1": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz"}),
     r"indices must be 0..0"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": "nii"}),
     "'file_ending' must be a string such as"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}}), "missing 'file_ending'\\. "),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_endings": ".nii.gz"}),
     "missing 'file_ending' \\(found 'file_endings': rename it\\)"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".png"}),
     "'file_ending' '.png' is not supported"),
    (json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz",
                 "numTraining": "ten"}), "'numTraining' must be a non-negative integer"),
])
def test_invalid_dataset_json(tmp_path, content, message):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "dataset.json").write_text(content)

    with pytest.raises(InputError, match=message):
        load_dataset(root)


def test_misspelled_dataset_key_warned(tmp_path, caplog):
    root = tmp_path / "Dataset005_Prostate"
    values = {key: value for key, value in NNUNET_JSON.items() if key != "numTraining"}
    write_json(root, {**values, "numTrainning": 2, "description": "free text", "licence": "CC BY-SA 4.0"})
    with caplog.at_level("WARNING"):
        spec = load_dataset(root)
    assert "unknown key 'numTrainning' is ignored. Did you mean 'numTraining'?" in caplog.text
    # Free-form metadata keys get no warning and stay in spec.raw.
    assert "description" not in caplog.text
    assert "licence" not in caplog.text
    assert spec.raw["licence"] == "CC BY-SA 4.0"


def test_missing_dataset_folder_and_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        load_dataset(tmp_path / "absent")
    with pytest.raises(InputError, match="dataset.json not found"):
        load_dataset(tmp_path)


# Prediction inputs ----------------------------------------------------------------------------


def test_find_cases_single_file(tmp_path):
    path = touch_nifti(tmp_path / "patient 01_0000.nii.gz")

    cases = find_input_cases(path)

    assert len(cases) == 1
    assert cases[0].case_id == "patient 01"
    assert cases[0].image_paths == [path]


def test_find_cases_single_file_with_channels(tmp_path):
    first = touch_nifti(tmp_path / "p_0000.nii.gz")
    second = touch_nifti(tmp_path / "p_0001.nii.gz")

    cases = find_input_cases(first, num_channels=2)

    assert cases[0].image_paths == [first, second]
    second.unlink()
    with pytest.raises(InputError, match=r"missing channel file\(s\) p_0001.nii.gz"):
        find_input_cases(first, num_channels=2)


def test_find_cases_channel_folder(tmp_path):
    for case in ("b", "a"):
        for channel in range(2):
            touch_nifti(tmp_path / f"{case}_{channel:04d}.nii.gz")
    (tmp_path / "notes.txt").write_text("ignored")

    cases = find_input_cases(tmp_path, num_channels=2)

    assert [case.case_id for case in cases] == ["a", "b"]
    assert cases[0].image_paths == [tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"]


def test_find_cases_missing_channel_named(tmp_path):
    touch_nifti(tmp_path / "a_0000.nii.gz")
    touch_nifti(tmp_path / "a_0001.nii.gz")
    touch_nifti(tmp_path / "b_0000.nii.gz")

    with pytest.raises(InputError, match=r"case 'b' is missing channel\(s\) b_0001"):
        find_input_cases(tmp_path, num_channels=2)


def test_find_cases_unexpected_channel(tmp_path):
    touch_nifti(tmp_path / "a_0000.nii.gz")
    touch_nifti(tmp_path / "a_0001.nii.gz")

    with pytest.raises(InputError, match=r"case 'a' has unexpected channel\(s\) a_0001"):
        find_input_cases(tmp_path, num_channels=1)


def test_find_cases_one_file_per_case(tmp_path):
    touch_nifti(tmp_path / "brain scan é.nii")
    touch_nifti(tmp_path / "liver.nii.gz")

    cases = find_input_cases(tmp_path)

    assert [case.case_id for case in cases] == ["brain scan é", "liver"]
    assert [len(case.image_paths) for case in cases] == [1, 1]


def test_find_cases_file_ending_filter(tmp_path):
    touch_nifti(tmp_path / "a.nii")
    touch_nifti(tmp_path / "b.nii.gz")

    cases = find_input_cases(tmp_path, file_ending=".nii.gz")

    assert [case.case_id for case in cases] == ["b"]


def test_find_cases_duplicate_case_name(tmp_path):
    touch_nifti(tmp_path / "a.nii")
    touch_nifti(tmp_path / "a.nii.gz")

    with pytest.raises(InputError, match="two files for one case name 'a'"):
        find_input_cases(tmp_path)


def test_find_cases_multichannel_needs_suffixes(tmp_path):
    touch_nifti(tmp_path / "a.nii.gz")

    with pytest.raises(InputError, match="files must be named CASE_0000"):
        find_input_cases(tmp_path, num_channels=2)


def test_find_cases_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no image files ending in"):
        find_input_cases(tmp_path)
    with pytest.raises(FileNotFoundError, match="input not found"):
        find_input_cases(tmp_path / "absent.nii.gz")


def test_find_cases_dicom_folder(tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(3):
        slice_image = sitk.GetImageFromArray(np.full((4, 5), index, dtype=np.int16))
        slice_image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.7.1")
        slice_image.SetMetaData("0020|0032", f"0\\0\\{index}")
        slice_image.SetMetaData("0020|0013", str(index + 1))
        writer.SetFileName(str(folder / f"slice_{index}.dcm"))
        writer.Execute(slice_image)

    cases = find_input_cases(folder)

    assert len(cases) == 1
    assert cases[0].case_id == "series"
    assert cases[0].image_paths == [folder]
