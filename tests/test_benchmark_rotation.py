"""Rotation-robustness benchmark: rotated test sets, tables, goal check, plot, and an end-to-end run."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from gmrseg.benchmarking.rotated_sets import build_rotation_settings, write_rotated_test_sets
from gmrseg.benchmarking.rotation import main
from gmrseg.benchmarking.rotation_repeats import average_results
from gmrseg.benchmarking.rotation_report import check_goal, format_csv, format_markdown, plot_dice_against_angle
from gmrseg.data.dataset import Case
from gmrseg.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _write_case(folder: Path, case_id: str, affine: np.ndarray, shape=(14, 18, 10)) -> Case:
    """Write a case with a box of label 1 and a smaller box of label 2 off the centre, zero near the faces."""
    image = np.zeros(shape, dtype=np.float32)
    image[2:-2, 2:-2, 2:-2] = np.random.default_rng(0).normal(100.0, 5.0, size=[size - 4 for size in shape])
    label = np.zeros(shape, dtype=np.uint8)
    label[3:7, 4:12, 2:6] = 1
    label[8:11, 12:15, 5:8] = 2
    image[label > 0] += 50.0
    (folder / "imagesTs").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTs").mkdir(parents=True, exist_ok=True)
    image_path = folder / "imagesTs" / f"{case_id}_0000.nii.gz"
    label_path = folder / "labelsTs" / f"{case_id}.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), image_path)
    nib.save(nib.Nifti1Image(label, affine), label_path)
    return Case(case_id, [image_path], label_path)


def _world_centroid(path: Path, value: int) -> np.ndarray:
    volume = nib.load(path)
    voxels = np.argwhere(np.asarray(volume.dataobj) == value)
    return voxels.mean(axis=0) @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _world_center(affine: np.ndarray, shape) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


# LPS affines with off-grid origins: rotations must happen in world space.
LPS_AFFINE = np.array([[-1.5, 0, 0, 30.3], [0, -1.5, 0, 12.0], [0, 0, 1.5, -40.7], [0, 0, 0, 1]])
ANISOTROPIC_AFFINE = np.array([[-1.2, 0, 0, 30.0], [0, -0.9, 0, 12.0], [0, 0, 2.0, -40.0], [0, 0, 0, 1]])


def test_settings_order_and_names():
    settings = build_rotation_settings([0, 15, 90, -30], random_rotations=True)
    names = [setting.name for setting in settings]
    assert names[0] == "upright"
    assert names[1:4] == ["x015", "y015", "z015"]
    assert "zm030" in names
    assert names[-1] == "random"
    assert settings[-1].is_random
    assert len(settings) == 1 + 3 * 3 + 1


def test_settings_reject_bad_angles():
    with pytest.raises(InputError, match="listed twice"):
        build_rotation_settings([15, 15], random_rotations=False)
    with pytest.raises(InputError, match="finite"):
        build_rotation_settings([float("nan")], random_rotations=False)


def test_quarter_turn_keeps_labels_and_world_position(tmp_path):
    case = _write_case(tmp_path / "source", "case_a", LPS_AFFINE)
    settings = build_rotation_settings([90], random_rotations=False)
    folders = write_rotated_test_sets([case], settings, tmp_path / "sets")

    source_label = np.asarray(nib.load(case.label_path).dataobj)
    center = _world_center(LPS_AFFINE, source_label.shape)
    axes = {"x": 0, "y": 1, "z": 2}
    for setting in settings[1:]:
        rotated_path = folders[setting.name] / "labelsTs" / "case_a.nii.gz"
        rotated = np.asarray(nib.load(rotated_path).dataobj)
        # A quarter turn moves whole voxels: every label keeps its voxel count.
        for value in (1, 2):
            assert (rotated == value).sum() == (source_label == value).sum(), setting.name
        # The label's world centroid turns about the volume centre.
        matrix = np.asarray(json.loads((folders[setting.name] / "rotations.json").read_text())
                            ["cases"]["case_a"]["matrix"])
        expected = matrix @ (_world_centroid(case.label_path, 2) - center) + center
        spacing = np.abs(np.diag(LPS_AFFINE)[:3])
        assert np.allclose(_world_centroid(rotated_path, 2), expected, atol=spacing.max()), setting.name
        assert np.allclose(matrix, np.round(matrix)), "a 90 degree turn is a signed permutation"
        assert abs(matrix[axes[setting.axis], axes[setting.axis]] - 1.0) < 1e-9


def test_anisotropic_turn_keeps_world_position(tmp_path):
    case = _write_case(tmp_path / "source", "case_c", ANISOTROPIC_AFFINE)
    settings = build_rotation_settings([90, 30], random_rotations=False)
    folders = write_rotated_test_sets([case], settings, tmp_path / "sets")
    shape = nib.load(case.label_path).shape
    center = _world_center(ANISOTROPIC_AFFINE, shape)
    for setting in settings[1:]:
        rotated_path = folders[setting.name] / "labelsTs" / "case_c.nii.gz"
        assert np.allclose(nib.load(rotated_path).affine[:3, :3], ANISOTROPIC_AFFINE[:3, :3])
        matrix = np.asarray(json.loads((folders[setting.name] / "rotations.json").read_text())
                            ["cases"]["case_c"]["matrix"])
        for value in (1, 2):
            expected = matrix @ (_world_centroid(case.label_path, value) - center) + center
            assert np.allclose(_world_centroid(rotated_path, value), expected, atol=2.0), (setting.name, value)


def test_oblique_angle_cuts_nothing_off(tmp_path):
    case = _write_case(tmp_path / "source", "case_b", ANISOTROPIC_AFFINE)
    folders = write_rotated_test_sets([case], build_rotation_settings([45], random_rotations=False), tmp_path / "sets")
    source = nib.load(case.image_paths[0])
    for name in ("x045", "y045", "z045"):
        rotated = nib.load(folders[name] / "imagesTs" / "case_b_0000.nii.gz")
        label = nib.load(folders[name] / "labelsTs" / "case_b.nii.gz")
        assert rotated.shape == label.shape
        assert np.allclose(rotated.affine, label.affine)
        # Same axes and spacing as the source; the grid grows to hold the turned volume.
        assert np.allclose(rotated.affine[:3, :3], source.affine[:3, :3])
        assert np.prod(rotated.shape) > np.prod(source.shape)
        # Linear resampling keeps the total intensity close when nothing is cut off
        # (the source is zero near its faces, so the padding adds nothing).
        total = np.asarray(rotated.dataobj, dtype=np.float64).sum()
        expected = np.asarray(source.dataobj, dtype=np.float64).sum()
        assert abs(total - expected) / expected < 0.05, name
        labels = np.unique(np.asarray(label.dataobj))
        assert set(labels.tolist()) == {0, 1, 2}


def test_upright_copy_and_random_set(tmp_path):
    cases = [_write_case(tmp_path / "source", name, np.diag([1.0, 1.0, 1.5, 1.0])) for name in ("c1", "c2")]
    folders = write_rotated_test_sets(cases, build_rotation_settings([], random_rotations=True), tmp_path / "sets",
                                      random_per_case=3, seed=4)
    assert list(folders) == ["upright", "random"]
    assert (folders["upright"] / "labelsTs" / "c1.nii.gz").read_bytes() == cases[0].label_path.read_bytes()

    records = json.loads((folders["random"] / "rotations.json").read_text())["cases"]
    assert sorted(records) == ["c1_r0", "c1_r1", "c1_r2", "c2_r0", "c2_r1", "c2_r2"]
    for record in records.values():
        matrix = np.asarray(record["matrix"])
        assert np.allclose(matrix @ matrix.T, np.eye(3), atol=1e-9)
        assert abs(np.linalg.det(matrix) - 1.0) < 1e-9
    assert len(list((folders["random"] / "imagesTs").iterdir())) == 6


def test_case_without_label_is_rejected(tmp_path):
    case = _write_case(tmp_path / "source", "c1", np.eye(4))
    with pytest.raises(InputError, match="without a label.*c1"):
        write_rotated_test_sets([Case("c1", case.image_paths, None)], build_rotation_settings([], random_rotations=False),
                                tmp_path / "sets")
    with pytest.raises(InputError, match="no held-out cases"):
        write_rotated_test_sets([], build_rotation_settings([], random_rotations=False), tmp_path / "sets")


# --------------------------------------------------------------------------- report


def _results(gmr_random: float, gmr_parameters: int = 1000) -> dict:
    sets = [{"name": "upright", "axis": None, "angle_deg": 0.0, "cases": 2},
            {"name": "x090", "axis": "x", "angle_deg": 90.0, "cases": 2},
            {"name": "random", "axis": None, "angle_deg": None, "cases": 4}]

    def scores(upright, x090, random):
        return {name: {"per_class": {"a": value, "b": value}, "mean": value}
                for name, value in (("upright", upright), ("x090", x090), ("random", random))}

    model = {"network": "n", "training_seconds": 10.0, "inference_seconds_per_case": 0.5}
    return {
        "settings": {"dataset": "hippocampus", "random_per_case": 2, "epochs_label": "1 epochs of 1 iterations",
                     "patch_size": [16, 16, 16], "tta": "none"},
        "hardware": {"summary": "test machine"},
        "num_training_cases": 5,
        "num_test_cases": 2,
        "classes": ["a", "b"],
        "sets": sets,
        "models": [
            {**model, "key": "gmrunet", "label": "GMRUNet", "rotation_augmentation": False,
             "parameters": gmr_parameters},
            {**model, "key": "unet", "label": "dense UNet", "rotation_augmentation": False, "parameters": 5000},
            {**model, "key": "unet_rotaug", "label": "dense UNet + rotation aug.", "rotation_augmentation": True,
             "parameters": 5000},
        ],
        "dice": {"gmrunet": scores(0.80, 0.80, gmr_random), "unet": scores(0.85, 0.30, 0.20),
                 "unet_rotaug": scores(0.79, 0.70, 0.64)},
    }


def test_goal_met_and_not_met():
    met = check_goal(_results(gmr_random=0.79))
    assert met["met"] is True
    assert len(met["checks"]) == 4

    dropped = check_goal(_results(gmr_random=0.60))
    assert dropped["met"] is False
    failed = [check["name"] for check in dropped["checks"] if not check["passed"]]
    assert any("within 2 points" in name for name in failed)
    assert any("rotation aug." in name for name in failed)

    too_big = check_goal(_results(gmr_random=0.79, gmr_parameters=4000))
    assert [check["passed"] for check in too_big["checks"]] == [True, True, True, False]


def test_goal_skipped_without_random_set():
    results = _results(gmr_random=0.79)
    results["sets"] = results["sets"][:2]
    assert check_goal(results) == {"checks": [], "met": None}


def test_markdown_and_csv_tables():
    results = _results(gmr_random=0.70)
    text = format_markdown(results)
    assert "| upright | 2 | 0.800 | 0.850 | 0.790 |" in text
    assert "| random 3D | 4 | 0.700 | 0.200 | 0.640 |" in text
    assert "| 90° about x |" in text
    assert "NOT met" in text
    assert "| GMRUNet | n | 1,000 | none | 10 | 0.50 |" in text

    rows = format_csv(results).strip().splitlines()
    assert rows[0].startswith("model,network")
    # 3 models x 3 sets x (2 classes + mean)
    assert len(rows) == 1 + 3 * 3 * 3
    assert "gmrunet,n,0,1000,random,,,4,1,mean,0.7000," in rows


def test_average_of_two_runs():
    first, second = _results(gmr_random=0.78), _results(gmr_random=0.74)
    first["settings"]["seed"], second["settings"]["seed"] = 0, 1
    second["dice"]["gmrunet"]["upright"] = {"per_class": {"a": 0.84, "b": 0.80}, "mean": 0.82}
    averaged = average_results([first, second], ["seed_0", "seed_1"])

    upright = averaged["dice"]["gmrunet"]["upright"]
    assert upright["mean"] == pytest.approx(0.81)
    assert upright["per_class"] == pytest.approx({"a": 0.82, "b": 0.80})
    assert averaged["dice"]["gmrunet"]["random"]["mean"] == pytest.approx(0.76)
    assert [entry["cases"] for entry in averaged["sets"]] == [4, 4, 8]
    assert averaged["num_test_cases"] == 4

    repeats = averaged["repeats"]
    assert repeats["seeds"] == [0, 1]
    assert [row["drop"] for row in repeats["per_seed"]["gmrunet"]] == pytest.approx([0.02, 0.08])
    mean, spread = repeats["summary"]["gmrunet"]["drop"]
    assert mean == pytest.approx(0.05)
    assert spread == pytest.approx(0.06 / 2 ** 0.5)
    # The inputs are left as they were.
    assert first["dice"]["gmrunet"]["upright"]["mean"] == 0.80

    # Each averaged score keeps its spread over the runs, and the CSV lists it.
    assert upright["runs"] == 2
    assert upright["sd"]["mean"] == pytest.approx(0.02 / 2 ** 0.5)
    assert upright["sd"]["per_class"] == pytest.approx({"a": 0.04 / 2 ** 0.5, "b": 0.0})
    rows = format_csv(averaged).strip().splitlines()
    assert rows[0].split(",")[-4:] == ["runs", "class", "dice_mean", "dice_sd"]
    assert "gmrunet,n,0,1000,upright,,0,4,2,a,0.8200,0.0283" in rows
    assert "gmrunet,n,0,1000,random,,,8,2,mean,0.7600,0.0283" in rows

    goal = check_goal(averaged)
    assert goal["met"] is False
    assert "mean of 2 runs" in goal["checks"][0]["detail"]
    text = format_markdown({**averaged, "goal": goal})
    assert "## Repeats" in text
    assert "mean over 2 runs with seeds 0, 1" in text
    assert "5 upright training cases per run, 4 held-out cases per test set summed over the runs" in text
    assert "single runs from +2.0 to +8.0" in goal["checks"][0]["detail"]
    assert "| GMRUNet | 0.810 ± 0.014 | 0.760 ± 0.028 | 5.0 ± 4.2 | +2.0 | +8.0 |" in text


def test_average_rejects_other_designs():
    first, second = _results(gmr_random=0.78), _results(gmr_random=0.74)
    first["settings"]["seed"], second["settings"]["seed"] = 0, 1
    second["models"] = second["models"][:1]
    with pytest.raises(ValueError, match="different models"):
        average_results([first, second], ["a", "b"])
    with pytest.raises(ValueError, match="no benchmark runs"):
        average_results([], [])


def test_plot_writes_png(tmp_path):
    path = tmp_path / "plot.png"
    plot_dice_against_angle(_results(gmr_random=0.7), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [item.name for item in tmp_path.iterdir()] == ["plot.png"]


# --------------------------------------------------------------------------- command line

TINY = ["--cases", "6", "--test-cases", "1", "--angles", "90", "--random-rotations", "1", "--epochs", "1",
        "--iterations-per-epoch", "1", "--features", "4", "8", "--kernel-sizes", "3", "3",
        "--patch-size", "32", "32", "32", "--device", "cpu", "--threads", "1"]


def test_refuses_foreign_non_empty_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["--out", str(tmp_path), *TINY]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--overwrite", *TINY]) == 2
    assert "not a benchmark folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_overwrite_logs_what_it_removes(tmp_path, caplog):
    from gmrseg.benchmarking.common import MARKER, prepare_benchmark_dir

    (tmp_path / MARKER).write_text("{}")
    (tmp_path / "results.md").write_text("old")
    (tmp_path / "seed_3").mkdir()
    (tmp_path / "notes.txt").write_text("keep")
    with caplog.at_level("INFO", logger="gmrseg.benchmarking.common"):
        prepare_benchmark_dir(tmp_path, overwrite=True, outputs=("results.md", "results.csv", "seed_3"),
                              marker={"benchmark": "rotation"})

    assert f"removed {MARKER}, results.md, seed_3 of the earlier benchmark in {tmp_path}" in caplog.text
    assert not (tmp_path / "seed_3").exists()
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_rejects_bad_options(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "a"), "--features", "4", "8", "--kernel-sizes", "3"]) == 2
    assert "same length" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "b"), "--kernel-sizes", "4", "3", "--features", "4", "8"]) == 2
    assert "odd" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "c"), "--repeats", "0"]) == 2
    assert "--repeats must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_one_model_end_to_end(tmp_path):
    out = tmp_path / "bench"
    assert main(["--out", str(out), "--models", "gmrunet", *TINY, "--epochs", "2"]) == 0

    results = json.loads((out / "results.json").read_text())
    # Validation runs once, after the last epoch.
    metrics = (out / "runs" / "gmrunet" / "fold_0" / "metrics.csv").read_text().splitlines()
    assert [bool(row.split(",")[2]) for row in metrics[1:]] == [False, True]
    (model,) = results["models"]
    assert model["key"] == "gmrunet"
    assert model["parameters"] > 0
    assert model["training_seconds"] > 0
    # The CPU design trains at batch 2 whatever the quick preset's batch size.
    assert yaml.safe_load(Path(model["config"]).read_text())["data"]["batch_size"] == 2
    set_names = [entry["name"] for entry in results["sets"]]
    assert set_names == ["upright", "x090", "y090", "z090", "random"]
    assert sorted(results["dice"]["gmrunet"]) == sorted(set_names)
    for scores in results["dice"]["gmrunet"].values():
        assert sorted(scores["per_class"]) == ["anterior", "posterior"]
        assert 0.0 <= scores["mean"] <= 1.0
        # The whole hippocampus (anterior + posterior) is scored as one region too.
        assert list(scores["regions"]) == ["whole"]
        assert 0.0 <= scores["regions"]["whole"] <= 1.0
    # Predictions keep each rotated scan's grid, so evaluate could compare them.
    for name in set_names:
        assert len(list((out / "predictions" / "gmrunet" / name).glob("*.nii.gz"))) == 1
    assert "| upright | 1 |" in (out / "results.md").read_text()
    # 5 sets x (2 classes, their mean, the whole structure)
    assert (out / "results.csv").read_text().count("\n") == 1 + 5 * 4
    assert (out / "dice_vs_angle.png").read_bytes()[:4] == b"\x89PNG"
    # A second run into the same folder needs --overwrite.
    assert main(["--out", str(out), "--models", "gmrunet", *TINY]) == 2
    assert (out / "results.json").is_file()

    # --rescore evaluates the saved predictions again and rewrites the tables.
    (out / "results.md").unlink()
    assert main(["--out", str(out), "--rescore"]) == 0
    rescored = json.loads((out / "results.json").read_text())
    assert rescored["dice"] == results["dice"]
    assert "| upright | 1 |" in (out / "results.md").read_text()


def test_repeats_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["--out", str(out), "--models", "gmrunet", *TINY, "--repeats", "2", "--seed", "3"]) == 0

    for seed in (3, 4):
        single = json.loads((out / f"seed_{seed}" / "results.json").read_text())
        assert single["settings"]["seed"] == seed
        assert (out / f"seed_{seed}" / "runs" / "gmrunet" / "fold_0" / "checkpoint_last.pt").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["repeats"]["seeds"] == [3, 4]
    assert results["settings"]["out"] == str(out)
    assert [entry["cases"] for entry in results["sets"]] == [2, 2, 2, 2, 2]
    assert "## Repeats" in (out / "results.md").read_text()
    assert (out / "dice_vs_angle.png").read_bytes()[:4] == b"\x89PNG"

    # --rescore rescores each run and averages again.
    (out / "results.md").unlink()
    assert main(["--out", str(out), "--rescore"]) == 0
    assert json.loads((out / "results.json").read_text())["dice"] == results["dice"]
    assert "## Repeats" in (out / "results.md").read_text()

    # --resume after an interruption in the second run keeps the first and runs the second again.
    first_checkpoint = out / "seed_3" / "runs" / "gmrunet" / "fold_0" / "checkpoint_last.pt"
    first_written = first_checkpoint.stat().st_mtime_ns
    (out / "seed_4" / "results.json").unlink()
    (out / "results.json").unlink()
    options = ["--out", str(out), "--models", "gmrunet", *TINY, "--repeats", "2", "--seed", "3"]
    assert main([*options, "--resume"]) == 0
    assert first_checkpoint.stat().st_mtime_ns == first_written
    assert (out / "seed_4" / "results.json").is_file()
    assert json.loads((out / "results.json").read_text())["repeats"]["seeds"] == [3, 4]
    # Other options, or --resume beside --overwrite or --rescore, are rejected.
    assert main([*options, "--epochs", "2", "--resume"]) == 2
    assert "epochs: 1 then, 2 now" in capsys.readouterr().err
    assert main([*options, "--resume", "--overwrite"]) == 2
    assert main(["--out", str(out), "--rescore", "--resume"]) == 2
    assert main(["--out", str(tmp_path / "new"), "--models", "gmrunet", *TINY, "--repeats", "2", "--resume"]) == 2
    assert "has no benchmark.json" in capsys.readouterr().err

    # --overwrite replaces the run folders too.
    assert main(["--out", str(out), "--models", "gmrunet", *TINY, "--overwrite"]) == 0
    assert not (out / "seed_3").exists()
    assert "repeats" not in json.loads((out / "results.json").read_text())


def test_presets_and_explicit_options(tmp_path):
    from gmrseg.benchmarking.rotation import build_parser, settings_from_args

    def settings(*argv):
        argv = ["--out", str(tmp_path), *argv]
        return settings_from_args(build_parser().parse_args(argv), argv)

    cpu = settings()
    assert (cpu.base_config, cpu.epochs, cpu.overlap, cpu.test_cases) == ("quick", 16, 0.25, 8)
    assert cpu.batch_size == 2
    full = settings("--full")
    assert (full.base_config, full.epochs, full.overlap, full.test_cases) == ("default", 100, 0.5, None)
    assert full.batch_size is None
    # Options given explicitly win over either preset.
    explicit = settings("--full", "--overlap", "0", "--epochs", "3", "--batch-size", "3")
    assert (explicit.overlap, explicit.epochs, explicit.batch_size) == (0.0, 3, 3)


def test_ring_settings_kept_for_gmr_only(tmp_path):
    from gmrseg.benchmarking.common import base_config_values
    from gmrseg.networks.factory import build_network

    config = tmp_path / "rings.yaml"
    config.write_text("network:\n  name: gmrunet\n  kwargs:\n    features: [4, 8]\n    kernel_sizes: [3, 3]\n"
                      "    gmr_kwargs: {num_rings: 3}\n")
    gmr = base_config_values(config, network="gmrunet")["network"]["kwargs"]
    dense = base_config_values(config, network="unet")["network"]["kwargs"]
    assert gmr["gmr_kwargs"] == {"num_rings": 3}
    assert "gmr_kwargs" not in dense
    assert {key: value for key, value in gmr.items() if key != "gmr_kwargs"} == dense
    build_network("unet", 1, 3, **dense)


def test_time_limit_of_base_config_dropped(tmp_path):
    from gmrseg.benchmarking.common import base_config_values

    config = tmp_path / "limited.yaml"
    config.write_text("training:\n  epochs: 50\n  time_limit_minutes: 9\n")
    values = base_config_values(config, network="unet", epochs=4)

    assert values["training"]["time_limit_minutes"] is None
    assert values["training"]["epochs"] == 4


def test_rescore_needs_finished_run(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--rescore"]) == 2
    assert "results.json not found" in capsys.readouterr().err


@pytest.mark.slow
def test_three_models_end_to_end(tmp_path):
    out = tmp_path / "bench"
    assert main(["--out", str(out), *TINY]) == 0

    results = json.loads((out / "results.json").read_text())
    assert [model["key"] for model in results["models"]] == ["gmrunet", "unet", "unet_rotaug"]
    set_names = [entry["name"] for entry in results["sets"]]
    assert set_names == ["upright", "x090", "y090", "z090", "random"]
    for key in ("gmrunet", "unet", "unet_rotaug"):
        assert sorted(results["dice"][key]) == sorted(set_names)
        for scores in results["dice"][key].values():
            assert sorted(scores["per_class"]) == ["anterior", "posterior"]
            assert 0.0 <= scores["mean"] <= 1.0
    models = {model["key"]: model for model in results["models"]}
    assert models["gmrunet"]["parameters"] < models["unet"]["parameters"]
    assert models["unet"]["parameters"] == models["unet_rotaug"]["parameters"]
    assert models["unet_rotaug"]["rotation_augmentation"] is True
    for model in results["models"]:
        assert model["training_seconds"] > 0
        assert model["inference_seconds_per_case"] > 0

    # The configs differ only in the network and rotation augmentation.
    import yaml

    configs = {key: yaml.safe_load((out / "configs" / f"{key}.yaml").read_text()) for key in models}
    assert configs["gmrunet"]["augmentation"]["rotation"] is False
    assert configs["unet_rotaug"]["augmentation"]["rotation"] is True
    assert configs["gmrunet"]["network"]["kwargs"] == configs["unet"]["network"]["kwargs"]
    assert configs["gmrunet"]["training"] == configs["unet"]["training"]
    assert configs["gmrunet"]["optim"] == configs["unet_rotaug"]["optim"]
    # Each model is validated once, after its last epoch.
    assert configs["gmrunet"]["validation"]["interval"] == configs["gmrunet"]["training"]["epochs"]

    assert "| upright | 1 |" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().count("\n") == 1 + 3 * 5 * 4
    assert (out / "dice_vs_angle.png").read_bytes()[:4] == b"\x89PNG"

    # A second run into the same folder needs --overwrite, which replaces it.
    assert main(["--out", str(out), *TINY]) == 2
    assert main(["--out", str(out), "--overwrite", "--models", "gmrunet", *TINY]) == 0
    assert [model["key"] for model in json.loads((out / "results.json").read_text())["models"]] == ["gmrunet"]
    assert not (out / "runs" / "unet").exists()


def test_cli_reaches_the_benchmark(capsys):
    from gmrseg.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["benchmark", "rotation", "--help"])
    assert exit_info.value.code == 0
    assert "--random-rotations" in capsys.readouterr().out


def test_script_reaches_the_benchmark():
    completed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rotation_robustness.py"), "--help"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "--random-rotations" in completed.stdout
