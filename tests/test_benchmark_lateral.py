"""Lateral-label benchmark: the synthetic mirror-image dataset and an end-to-end tiny run."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from gmrseg.benchmarking.lateral import build_parser, main
from gmrseg.benchmarking.synthetic_lateral import LATERAL_LABELS, make_lateral_dataset
from gmrseg.data.validation import validate_dataset
from gmrseg.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _world_x(path: Path, value: int) -> float:
    volume = nib.load(path)
    voxels = np.argwhere(np.asarray(volume.dataobj) == value)
    return float((voxels @ volume.affine[:3, :3].T + volume.affine[:3, 3])[:, 0].mean())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_lateral_dataset(tmp_path_factory.mktemp("lateral") / "data", cases=6, shape=(28, 24, 24), seed=3)


def test_dataset_is_valid_and_split(dataset):
    report = validate_dataset(dataset)
    assert report.ok, [str(problem) for problem in report.problems]
    description = json.loads((dataset / "dataset.json").read_text())
    assert description["labels"] == LATERAL_LABELS
    assert len(list((dataset / "labelsTr").iterdir())) == description["numTraining"] == 4
    assert len(list((dataset / "labelsTs").iterdir())) == 2


def test_left_kidney_on_patients_left_in_any_storage(dataset):
    orientations = set()
    for path in sorted((dataset / "labelsTr").glob("*.nii.gz")) + sorted((dataset / "labelsTs").glob("*.nii.gz")):
        orientations.add(nib.aff2axcodes(nib.load(path).affine))
        # RAS+: the patient's left has the smaller world x, whatever the voxel order.
        left, right, spine = (_world_x(path, LATERAL_LABELS[name]) for name in ("kidney_left", "kidney_right", "spine"))
        assert left < spine < right, path.name
    assert orientations == {("R", "A", "S"), ("L", "P", "S")}


def test_every_case_has_every_label(dataset):
    for path in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        values = set(np.unique(np.asarray(nib.load(path).dataobj)).tolist())
        assert values == set(LATERAL_LABELS.values()), path.name


def test_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="cases"):
        make_lateral_dataset(tmp_path / "a", cases=2)
    with pytest.raises(InputError, match="shape"):
        make_lateral_dataset(tmp_path / "b", shape=(16, 32, 32))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        make_lateral_dataset(tmp_path / "c")
    with pytest.raises(InputError, match="no dataset.json"):
        make_lateral_dataset(tmp_path / "c", overwrite=True)
    assert (tmp_path / "c" / "notes.txt").read_text() == "keep"


TINY = ["--cases", "6", "--shape", "24", "24", "24", "--epochs", "1", "--iterations-per-epoch", "1",
        "--features", "4", "8", "--kernel-sizes", "3", "3", "--patch-size", "16", "16", "16", "--device", "cpu",
        "--threads", "1"]


def test_merged_model_end_to_end(tmp_path):
    out = tmp_path / "bench"
    assert main(["--out", str(out), "--models", "merged", *TINY]) == 0

    results = json.loads((out / "results.json").read_text())
    (model,) = results["models"]
    # One network class for the pair, split back into both dataset labels by side.
    assert model["network_labels"] == {"background": 0, "kidney": 1, "spine": 2}
    assert [pair[:2] for pair in model["merged_pairs"]] == [["kidney_left", "kidney_right"]]
    assert sorted(model["per_class"]) == ["kidney_left", "kidney_right", "spine"]
    assert all(0.0 <= value <= 1.0 for value in model["per_class"].values())
    assert yaml.safe_load(Path(model["config"]).read_text())["data"]["batch_size"] == 2
    predicted = np.unique(np.concatenate([np.asarray(nib.load(path).dataobj).ravel()
                                          for path in (out / "predictions" / "merged").glob("*.nii.gz")]))
    assert set(predicted.tolist()) <= set(LATERAL_LABELS.values())

    table = (out / "results.md").read_text()
    assert "| GMRUNet, pairs merged | kidney, spine |" in table
    assert (out / "results.csv").read_text().count("\n") == 1 + 4


@pytest.mark.slow
def test_merged_and_unmerged_end_to_end(tmp_path):
    out = tmp_path / "bench"
    assert main(["--out", str(out), *TINY]) == 0

    models = {model["key"]: model for model in json.loads((out / "results.json").read_text())["models"]}
    assert list(models) == ["merged", "unmerged"]
    assert models["merged"]["network_labels"] == {"background": 0, "kidney": 1, "spine": 2}
    assert models["unmerged"]["network_labels"] == LATERAL_LABELS
    assert models["unmerged"]["merged_pairs"] == []
    table = (out / "results.md").read_text()
    assert "| GMRUNet, pairs not merged | kidney_left, kidney_right, spine |" in table
    assert (out / "results.csv").read_text().count("\n") == 1 + 2 * 4


def test_fixed_epochs_and_batch_by_default():
    args = build_parser().parse_args([])

    assert args.epochs == 12
    assert args.batch_size == 2


def test_script_help():
    completed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lateral_labels.py"), "--help"],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "--models" in completed.stdout
