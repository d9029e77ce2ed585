"""Tests for gmrseg evaluate: metric values, empty-mask conventions, pairing, grids and reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gmrseg.errors import InputError
from gmrseg.evaluation import class_metrics, evaluate, format_summary, load_class_names


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    image = nib.Nifti1Image(array.astype(np.uint8), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _cube(shape=(16, 16, 16), start=(4, 4, 4), size=4, value=1) -> np.ndarray:
    array = np.zeros(shape, dtype=np.uint8)
    array[start[0]:start[0] + size, start[1]:start[1] + size, start[2]:start[2] + size] = value
    return array


def test_metrics_dice_half_overlap():
    reference = np.zeros((8, 8, 8), bool)
    prediction = np.zeros((8, 8, 8), bool)
    reference[0:2, 0:2, 0:2] = True
    prediction[1:3, 0:2, 0:2] = True
    result = class_metrics(prediction, reference, (1.0, 1.0, 1.0))
    assert result.dice == pytest.approx(0.5)


def test_metrics_hd95_uses_spacing_per_axis():
    reference = np.zeros((10, 10, 10), bool)
    reference[2, 2, 2] = True
    along_z = np.zeros_like(reference)
    along_z[2, 2, 5] = True
    along_x = np.zeros_like(reference)
    along_x[5, 2, 2] = True
    spacing = (1.0, 1.0, 2.5)
    assert class_metrics(along_z, reference, spacing).hd95 == pytest.approx(7.5)
    assert class_metrics(along_x, reference, spacing).hd95 == pytest.approx(3.0)


def test_metrics_volume_in_millilitres():
    reference = np.zeros((10, 10, 10), bool)
    prediction = np.zeros((10, 10, 10), bool)
    prediction[:5, :5, :5] = True  # 125 voxels of 8 mm^3 = 1 mL
    result = class_metrics(prediction, reference, (2.0, 2.0, 2.0))
    assert result.volume_prediction_ml == pytest.approx(1.0)
    assert result.volume_reference_ml == 0.0
    assert result.volume_difference_ml == pytest.approx(1.0)


def test_metrics_both_empty_convention():
    empty = np.zeros((6, 6, 6), bool)
    result = class_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert result.dice == 1.0
    assert result.hd95 is None
    assert result.both_empty


def test_metrics_one_empty_convention():
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    for prediction, reference in ((empty, full), (full, empty)):
        result = class_metrics(prediction, reference, (1.0, 1.0, 1.0))
        assert result.dice == 0.0
        assert math.isinf(result.hd95)
        assert result.one_empty


def test_evaluate_empty_conventions_in_summary(tmp_path):
    labels = {"labels": {"background": 0, "liver": 1, "tumour": 2}}
    (tmp_path / "dataset.json").write_text(json.dumps(labels))
    reference = _cube() + _cube(start=(10, 10, 10), size=2, value=2)
    # case_a: tumour missing in the prediction (one empty); case_b: no tumour anywhere (both empty).
    _save(tmp_path / "ref" / "case_a.nii.gz", reference)
    _save(tmp_path / "pred" / "case_a.nii.gz", _cube())
    _save(tmp_path / "ref" / "case_b.nii.gz", _cube())
    _save(tmp_path / "pred" / "case_b.nii.gz", _cube())

    report = evaluate(tmp_path / "pred", tmp_path / "ref", dataset_json=tmp_path / "dataset.json")
    tumour = report["summary"]["tumour"]
    assert tumour["hd95"]["excluded_both_empty"] == 1
    assert tumour["hd95"]["infinite_one_empty"] == 1
    assert tumour["hd95"]["cases"] == 1
    assert math.isinf(tumour["hd95"]["mean"])
    assert tumour["dice"]["mean"] == pytest.approx(0.5)
    assert report["summary"]["liver"]["dice"]["mean"] == pytest.approx(1.0)
    assert report["summary"]["liver"]["hd95"]["mean"] == pytest.approx(0.0)


def test_evaluate_writes_json_and_csv(tmp_path):
    _save(tmp_path / "ref" / "case.nii.gz", _cube())
    _save(tmp_path / "pred" / "case.nii.gz", np.zeros((16, 16, 16)))
    report = evaluate(tmp_path / "pred", tmp_path / "ref", output=tmp_path / "out" / "report.json")

    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["cases"][0]["metrics"]["label_1"]["hd95"] == "inf"
    assert data["cases"][0]["metrics"]["label_1"]["dice"] == 0.0
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert rows[0]["case"] == "case"
    assert rows[0]["hd95"] == "inf"
    assert {row["case"] for row in rows} == {"case", "mean", "median"}
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]
    assert "label_1" in format_summary(report)


def test_evaluate_other_grid_names_case(tmp_path):
    _save(tmp_path / "ref" / "case_7.nii.gz", _cube())
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 0.5  # half a voxel
    _save(tmp_path / "pred" / "case_7.nii.gz", _cube(), affine=shifted)
    with pytest.raises(InputError, match="case_7.*another grid.*origin"):
        evaluate(tmp_path / "pred", tmp_path / "ref")


def test_evaluate_other_shape_names_case(tmp_path):
    _save(tmp_path / "ref" / "case_7.nii.gz", _cube())
    _save(tmp_path / "pred" / "case_7.nii.gz", _cube(shape=(16, 16, 15)))
    with pytest.raises(InputError, match="case_7.*another grid.*shape") as error:
        evaluate(tmp_path / "pred", tmp_path / "ref")
    shape = tuple(_cube().shape)
    assert f"reference vs prediction: shape {shape} vs (16, 16, 15)" in str(error.value)


def test_evaluate_float_noise_in_affine_accepted(tmp_path):
    _save(tmp_path / "ref" / "case.nii.gz", _cube())
    noisy = np.diag([1.0, 1.0, 1.0, 1.0])
    noisy[:3, 3] = 1e-6
    _save(tmp_path / "pred" / "case.nii.gz", _cube(), affine=noisy)
    report = evaluate(tmp_path / "pred", tmp_path / "ref")
    assert report["cases"][0]["metrics"]["label_1"]["dice"] == 1.0


def test_evaluate_missing_prediction_is_error(tmp_path):
    for case in ("a", "b", "c"):
        _save(tmp_path / "ref" / f"{case}.nii.gz", _cube())
    _save(tmp_path / "pred" / "a.nii.gz", _cube())
    with pytest.raises(InputError, match="2 of 3 reference case.*b, c"):
        evaluate(tmp_path / "pred", tmp_path / "ref")


def test_evaluate_pairs_across_endings(tmp_path):
    _save(tmp_path / "ref" / "a.nii.gz", _cube())
    _save(tmp_path / "pred" / "a.nii", _cube())
    _save(tmp_path / "pred" / "a_probabilities.nii.gz", _cube())
    report = evaluate(tmp_path / "pred", tmp_path / "ref")
    assert [case["case"] for case in report["cases"]] == ["a"]


def test_evaluate_single_files(tmp_path):
    reference = _save(tmp_path / "ref.nii.gz", _cube())
    prediction = _save(tmp_path / "pred.nii.gz", _cube(start=(5, 4, 4)))
    report = evaluate(prediction, reference)
    assert report["cases"][0]["metrics"]["label_1"]["dice"] == pytest.approx(0.75)


def test_evaluate_non_integer_prediction_rejected(tmp_path):
    _save(tmp_path / "ref" / "a.nii.gz", _cube())
    image = nib.Nifti1Image(_cube().astype(np.float32) * 0.99997, np.eye(4))
    (tmp_path / "pred").mkdir()
    nib.save(image, str(tmp_path / "pred" / "a.nii.gz"))
    with pytest.raises(InputError, match="case a"):
        evaluate(tmp_path / "pred", tmp_path / "ref")


def test_class_names_from_both_dataset_json_forms(tmp_path):
    nnunet = tmp_path / "nnunet.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "anterior": 1, "posterior": 2}}))
    decathlon = tmp_path / "decathlon.json"
    decathlon.write_text(json.dumps({"labels": {"0": "background", "1": "anterior", "2": "posterior"}}))
    expected = {"anterior": (1,), "posterior": (2,)}
    assert load_class_names(nnunet) == expected
    assert load_class_names(decathlon) == expected


def test_class_names_from_run_folder(tmp_path):
    (tmp_path / "plans.json").write_text(json.dumps({"labels": {"background": 0, "kidney_left": 1, "kidney_right": 2}}))
    assert list(load_class_names(tmp_path)) == ["kidney_left", "kidney_right"]


def test_class_names_region_covers_values(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": 2}}))
    _save(tmp_path / "ref" / "a.nii.gz", _cube() + _cube(start=(10, 10, 10), size=2, value=2))
    _save(tmp_path / "pred" / "a.nii.gz", _cube())
    report = evaluate(tmp_path / "pred", tmp_path / "ref", dataset_json=path)
    assert report["cases"][0]["metrics"]["whole"]["dice"] == pytest.approx(2 * 64 / (64 + 72))
    assert report["cases"][0]["metrics"]["core"]["dice"] == 0.0
