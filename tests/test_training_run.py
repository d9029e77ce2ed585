"""``gmrseg train`` end to end on tiny synthetic dataset folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gmrseg.cli import main
from gmrseg.errors import InputError
from gmrseg.training.run import parse_folds, resolve_patch_size, resolve_rotation, train
from gmrseg.training.splits import make_splits
from training_helpers import write_tiny_dataset

TINY_CONFIG = {
    "network": {"name": "gmrunet", "kwargs": {"features": [4, 8], "kernel_sizes": [3, 3], "deep_supervision": True}},
    "data": {"patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0},
    "optim": {"name": "adamw", "lr": 0.01},
    "training": {"epochs": 1, "iterations_per_epoch": 1, "amp": "none", "seed": 5},
    "validation": {"interval": 1},
}


def write_config(path: Path, **changes) -> Path:
    values = json.loads(json.dumps(TINY_CONFIG))
    for section, entries in changes.items():
        values.setdefault(section, {}).update(entries)
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("train") / "Dataset001_Tiny", num_cases=6)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """One fold trained once, shared by the checks on the run folder."""
    root = tmp_path_factory.mktemp("run")
    config = write_config(root / "tiny.yaml")
    summary = train(dataset, config_path=config, run_dir=root / "run", fold="0", device="cpu", quiet=True)
    return root / "run", config, summary


def test_run_folder_layout(trained):
    run_dir, _, summary = trained
    for name in ("config.yaml", "dataset.json", "plans.json", "splits.json"):
        assert (run_dir / name).is_file(), name
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv", "train.log", "progress.png"):
        assert (run_dir / "fold_0" / name).is_file(), name
    assert summary["folds"][0]["epochs"] == 1


def test_plans_keys(trained, dataset):
    run_dir, _, _ = trained
    plans = json.loads((run_dir / "plans.json").read_text())
    assert plans["labels"] == {"background": 0, "head": 1, "tail": 2}
    assert plans["network_labels"] == plans["labels"]
    assert plans["label_pairs"] == []
    assert plans["in_channels"] == 1
    assert plans["patch_size"] == [16, 16, 16]
    assert plans["network"] == TINY_CONFIG["network"]
    assert plans["equivariant"] is True
    assert plans["file_ending"] == ".nii.gz"
    # Field-of-view augmentation is on by default, so prediction adds a quarter-patch zero margin.
    assert plans["window_margin"] == [4, 4, 4]
    assert plans["preprocessing"]["target_spacing"] == [1.0, 1.0, 1.0]
    assert plans["fingerprint"]["num_cases"] == 6


def test_splits_five_disjoint_folds(trained):
    run_dir, _, _ = trained
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(splits) == 5
    validated = [case for fold in splits for case in fold["val"]]
    assert sorted(validated) == [f"case_{index:03d}" for index in range(6)]
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"])


def test_saved_config_is_resolved(trained):
    run_dir, _, _ = trained
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.01
    assert saved["schedule"]["name"] == "poly"  # default filled in


def test_predictor_loads_run(trained):
    from gmrseg.inference.run_folder import find_folds, load_fold_network, load_plans

    run_dir, _, _ = trained
    plans = load_plans(run_dir)
    folds = find_folds(run_dir, None, "best")
    network = load_fold_network(plans, folds[0][1], torch.device("cpu"))
    assert network(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_existing_fold_needs_resume(trained, dataset):
    run_dir, config, _ = trained
    with pytest.raises(FileExistsError, match="--resume"):
        train(dataset, config_path=config, run_dir=run_dir, fold="0", device="cpu", quiet=True)


def test_resume_trains_more_epochs(dataset, tmp_path):
    config = write_config(tmp_path / "tiny.yaml")
    train(dataset, config_path=config, run_dir=tmp_path / "run", device="cpu", quiet=True)
    summary = train(dataset, config_path=config, run_dir=tmp_path / "run", device="cpu", quiet=True, resume=True,
                    epochs=2)
    assert summary["folds"][0]["epochs"] == 2
    metrics = (tmp_path / "run" / "fold_0" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3  # header and two epochs


def test_time_limit_flag_and_resume(dataset, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", training={"epochs": 3})
    main(["train", str(dataset), "-c", str(config), "-o", str(tmp_path / "run"), "--device", "cpu", "--quiet",
          "--time-limit", "0.000001"])
    metrics = tmp_path / "run" / "fold_0" / "metrics.csv"
    assert len(metrics.read_text().splitlines()) == 2  # header and one epoch

    summary = train(dataset, config_path=config, run_dir=tmp_path / "run", device="cpu", quiet=True, resume=True,
                    time_limit_minutes=0)

    assert summary["folds"][0]["epochs"] == 3
    assert len(metrics.read_text().splitlines()) == 4


@pytest.mark.parametrize("minutes", [-1.0, float("nan"), True])
def test_time_limit_invalid_value(dataset, tmp_path, minutes):
    with pytest.raises(InputError, match="--time-limit"):
        train(dataset, config_path=write_config(tmp_path / "tiny.yaml"), run_dir=tmp_path / "run", device="cpu",
              quiet=True, time_limit_minutes=minutes)


def test_epochs_override_shortens_warmup(dataset, tmp_path, caplog):
    config = write_config(tmp_path / "tiny.yaml", schedule={"name": "cosine", "warmup_epochs": 1},
                          training={"epochs": 3})
    with caplog.at_level("INFO"):
        train(dataset, config_path=config, run_dir=tmp_path / "run", device="cpu", quiet=True, epochs=1)
    assert "the warm-up is shortened to 0 epoch(s)" in caplog.text
    # The last log lines name the run folder and the predict command.
    assert f"Training finished. Run folder: {tmp_path / 'run'}" in caplog.text
    assert str(tmp_path / "run" / "fold_0" / "checkpoint_best.pt") in caplog.text
    assert f"gmrseg predict -m {tmp_path / 'run'}" in caplog.text
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["schedule"]["warmup_epochs"] == 0
    # The one epoch trains at the configured learning rate, not at the warm-up's start.
    header, row = (tmp_path / "run" / "fold_0" / "metrics.csv").read_text().splitlines()
    assert float(row.split(",")[header.split(",").index("lr")]) == pytest.approx(0.01)


def test_other_config_rejected(trained, dataset, tmp_path):
    run_dir, _, _ = trained
    other = write_config(tmp_path / "other.yaml", optim={"lr": 0.5})
    with pytest.raises(InputError, match="optim.lr"):
        train(dataset, config_path=other, run_dir=run_dir, fold="1", device="cpu", quiet=True)


def test_resume_needs_run_folder(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        train(dataset, config_path=None, run_dir=tmp_path / "nothing", resume=True, device="cpu")


def test_tiny_dataset_single_fold(tmp_path, caplog):
    dataset = write_tiny_dataset(tmp_path / "three", num_cases=3)
    config = write_config(tmp_path / "tiny.yaml")
    summary = train(dataset, config_path=config, run_dir=tmp_path / "run", fold="all", device="cpu", quiet=True)
    assert list(summary["folds"]) == [0]
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits == [{"train": ["case_000", "case_001", "case_002"], "val": ["case_000", "case_001", "case_002"]}]
    assert "fewer than 5 folds" in caplog.text
    with pytest.raises(InputError, match="use --fold 0"):
        train(dataset, config_path=config, run_dir=tmp_path / "run", fold="1", device="cpu", quiet=True)


def test_invalid_dataset_stops_before_training(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "bad", num_cases=3)
    (dataset / "labelsTr" / "case_001.nii.gz").unlink()
    config = write_config(tmp_path / "tiny.yaml")
    with pytest.raises(InputError, match="failed validation") as error:
        train(dataset, config_path=config, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert "case_001" in str(error.value)
    assert not (tmp_path / "run" / "plans.json").exists()


def test_patch_size_not_multiple(dataset, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", data={"patch_size": [15, 16, 16]})
    with pytest.raises(InputError, match=r"data.patch_size.*size_divisor 2.*\[16, 16, 16\]"):
        train(dataset, config_path=config, run_dir=tmp_path / "run", device="cpu", quiet=True)


def test_unknown_network_argument(dataset, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", network={"name": "gmrunet", "kwargs": {"featurez": [4, 8]}})
    with pytest.raises(InputError, match="network.kwargs"):
        train(dataset, config_path=config, run_dir=tmp_path / "run", device="cpu", quiet=True)


def test_cli_train(dataset, tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml")
    code = main(["train", str(dataset), "-c", str(config), "-o", str(tmp_path / "run"), "--device", "cpu",
                 "--quiet"])
    assert code == 0
    assert (tmp_path / "run" / "fold_0" / "checkpoint_best.pt").is_file()


def test_cli_reports_config_error(dataset, tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", optim={"name": "adam"})
    code = main(["train", str(dataset), "-c", str(config), "-o", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 2
    assert "optim.name" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [("0", [0]), ("4", [4]), ("all", [0, 1, 2, 3, 4]), (2, [2])])
def test_parse_folds(text, expected):
    assert parse_folds(text) == expected


@pytest.mark.parametrize("text", ["5", "-1", "first", ""])
def test_parse_folds_invalid(text):
    with pytest.raises(InputError, match="--fold"):
        parse_folds(text)


def test_patch_size_auto():
    assert resolve_patch_size("auto", [35.0, 50.0, 35.5], 8, [64, 64, 64]) == [40, 56, 40]
    assert resolve_patch_size("auto", [300.0, 20.0, 9.0], 16, [128, 128, 100]) == [128, 32, 16]
    assert resolve_patch_size([24, 24, 24], [300.0, 20.0, 9.0], 8, [64, 64, 64]) == [24, 24, 24]


def test_rotation_auto_rule():
    assert resolve_rotation("auto", equivariant=True) is False
    assert resolve_rotation("auto", equivariant=False) is True
    assert resolve_rotation(True, equivariant=True) is True


def test_splits_deterministic():
    ids = [f"c{index}" for index in range(23)]
    assert make_splits(ids, 1) == make_splits(list(reversed(ids)), 1)
    assert make_splits(ids, 1) != make_splits(ids, 2)
    assert sorted(len(fold["val"]) for fold in make_splits(ids, 1)) == [4, 4, 5, 5, 5]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(dataset, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", training={"epochs": 2})
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "gmrseg",
         "train", str(dataset), "-c", str(config), "-o", str(tmp_path / "run"), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=600, env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fold_dir = tmp_path / "run" / "fold_0"
    checkpoint = torch.load(fold_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert len((fold_dir / "metrics.csv").read_text().splitlines()) == 3  # one writer: header and two rows
    assert (fold_dir / "train.log").read_text().count("epoch 2/2") == 1
