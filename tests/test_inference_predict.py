"""Tests for gmrseg predict: input and output forms, safety rules, folds, logging and torchrun splitting."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_helpers import MarkerNetwork, patch_marker_factory, save_nifti, write_run_folder

from gmrseg.errors import InputError
from gmrseg.inference import Predictor, predict

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _pattern(shape=(12, 10, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=shape).astype(np.float32)


@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    patch_marker_factory(monkeypatch)
    return write_run_folder(tmp_path / "run", MarkerNetwork(1, 2), network_name="marker", patch_size=(8, 8, 8))


def _segmentation(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_folder_one_file_per_case_keeps_endings(tmp_path, run):
    patterns = {"a": _pattern(seed=1), "b": _pattern(seed=2)}
    save_nifti(tmp_path / "in" / "a.nii.gz", patterns["a"], AFFINE)
    save_nifti(tmp_path / "in" / "b.nii", patterns["b"], AFFINE)

    assert predict(run, tmp_path / "in", tmp_path / "out", device="cpu") == 0

    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii"]
    np.testing.assert_array_equal(_segmentation(tmp_path / "out" / "a.nii.gz"), patterns["a"])
    np.testing.assert_array_equal(_segmentation(tmp_path / "out" / "b.nii"), patterns["b"])


def test_folder_with_channel_naming(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    run = write_run_folder(tmp_path / "run", MarkerNetwork(2, 2), network_name="marker", in_channels=2,
                           patch_size=(8, 8, 8))
    pattern = _pattern(seed=4)
    save_nifti(tmp_path / "in" / "case_0000.nii.gz", pattern, AFFINE)
    save_nifti(tmp_path / "in" / "case_0001.nii.gz", np.ones_like(pattern), AFFINE)

    assert predict(run, tmp_path / "in", tmp_path / "out", device="cpu") == 0
    np.testing.assert_array_equal(_segmentation(tmp_path / "out" / "case.nii.gz"), pattern)


def test_bad_file_skipped_others_written(tmp_path, run, caplog):
    save_nifti(tmp_path / "in" / "good.nii.gz", _pattern(), AFFINE)
    save_nifti(tmp_path / "in" / "zz_good.nii.gz", _pattern(seed=3), AFFINE)
    raw = gzip.compress(nib.Nifti1Image(_pattern(), AFFINE).to_bytes())
    (tmp_path / "in" / "broken.nii.gz").write_bytes(raw[: len(raw) // 2])

    with caplog.at_level(logging.ERROR):
        failures = predict(run, tmp_path / "in", tmp_path / "out", device="cpu")

    assert failures == 1
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["good.nii.gz", "zz_good.nii.gz"]
    assert "broken" in caplog.text


def test_cli_exit_code_on_failure(tmp_path, run):
    from gmrseg.cli import main

    save_nifti(tmp_path / "in" / "good.nii.gz", _pattern(), AFFINE)
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not a nifti file")
    assert main(["predict", "-m", str(run), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 1
    assert (tmp_path / "out" / "good.nii.gz").exists()


def test_4d_file_for_one_channel_model_fails(tmp_path, run, caplog):
    save_nifti(tmp_path / "in" / "good.nii.gz", _pattern(), AFFINE)
    save_nifti(tmp_path / "in" / "four_d.nii.gz", np.stack([_pattern(), _pattern()], axis=-1), AFFINE)
    with caplog.at_level(logging.ERROR):
        assert predict(run, tmp_path / "in", tmp_path / "out", device="cpu") == 1
    assert "four_d" in caplog.text
    assert not (tmp_path / "out" / "four_d.nii.gz").exists()
    assert (tmp_path / "out" / "good.nii.gz").exists()


def test_output_equal_to_input_rejected(tmp_path, run):
    source = save_nifti(tmp_path / "in" / "scan.nii.gz", _pattern(), AFFINE)
    before = source.read_bytes()
    with pytest.raises(InputError, match="never overwrites an input"):
        predict(run, source, source, device="cpu", overwrite=True)
    with pytest.raises(InputError, match="is the input folder"):
        predict(run, tmp_path / "in", tmp_path / "in", device="cpu", overwrite=True)
    assert source.read_bytes() == before


def test_output_folder_as_input_rejected(tmp_path, run):
    # CASE_0000 inputs give CASE outputs, so no file is overwritten. The next run
    # on that folder would still read the segmentations as scans.
    save_nifti(tmp_path / "in" / "scan_0000.nii.gz", _pattern(), AFFINE)
    with pytest.raises(InputError, match="is the input folder"):
        predict(run, tmp_path / "in", tmp_path / "in" / ".", device="cpu")
    assert sorted(path.name for path in (tmp_path / "in").iterdir()) == ["scan_0000.nii.gz"]


def test_existing_output_kept_without_overwrite(tmp_path, run, caplog):
    source = save_nifti(tmp_path / "in" / "scan.nii.gz", _pattern(), AFFINE)
    target = tmp_path / "out" / "scan.nii.gz"
    target.parent.mkdir()
    target.write_bytes(b"existing")

    with pytest.raises(FileExistsError, match="--overwrite"):
        predict(run, source, target, device="cpu")
    with caplog.at_level(logging.WARNING):
        assert predict(run, tmp_path / "in", tmp_path / "out", device="cpu") == 0
    assert target.read_bytes() == b"existing"
    assert "Kept 1 existing output" in caplog.text

    assert predict(run, source, target, device="cpu", overwrite=True) == 0
    np.testing.assert_array_equal(_segmentation(target), _pattern())


def test_output_file_for_folder_rejected(tmp_path, run):
    save_nifti(tmp_path / "in" / "a.nii.gz", _pattern(), AFFINE)
    save_nifti(tmp_path / "in" / "b.nii.gz", _pattern(), AFFINE)
    with pytest.raises(InputError, match="contains 2 cases"):
        predict(run, tmp_path / "in", tmp_path / "seg.nii.gz", device="cpu")


def test_output_with_other_ending_rejected(tmp_path, run):
    source = save_nifti(tmp_path / "scan.nii.gz", _pattern(), AFFINE)
    with pytest.raises(InputError, match="NIfTI"):
        predict(run, source, tmp_path / "seg.nrrd", device="cpu")


def test_paths_with_spaces_and_non_ascii(tmp_path, run):
    source = save_nifti(tmp_path / "entrée données" / "scan 1.nii.gz", _pattern(), AFFINE)
    target = tmp_path / "sortie é" / "seg 1.nii.gz"
    assert predict(run, source, target, device="cpu") == 0
    np.testing.assert_array_equal(_segmentation(target), _pattern())


def test_verbose_logs_each_stage(tmp_path, run, caplog):
    source = save_nifti(tmp_path / "scan.nii.gz", _pattern(), AFFINE)
    with caplog.at_level(logging.INFO, logger="gmrseg.inference.predictor"):
        predict(run, source, tmp_path / "seg.nii.gz", device="cpu", verbose=True)
    for stage in ("read", "preprocess", "windows", "invert", "write"):
        assert f"scan: {stage} " in caplog.text


def test_dicom_series_input(tmp_path, monkeypatch):
    import SimpleITK as sitk

    patch_marker_factory(monkeypatch)
    run = write_run_folder(tmp_path / "run", MarkerNetwork(1, 2), network_name="marker", patch_size=(8, 8, 8),
                           target_spacing=(0.9, 1.1, 2.0))

    pattern = _pattern(shape=(10, 12, 6), seed=5)
    volume = sitk.GetImageFromArray(np.transpose(pattern, (2, 1, 0)).astype(np.int16))
    volume.SetSpacing((0.9, 1.1, 2.0))
    volume.SetOrigin((10.0, -20.0, 30.0))
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(volume.GetDepth()):
        slice_image = volume[:, :, index]
        slice_image.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, index)))))
        slice_image.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        slice_image.SetMetaData("0020|0013", str(index))
        slice_image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        slice_image.SetMetaData("0028|0030", "1.1\\0.9")
        slice_image.SetMetaData("0018|0050", "2.0")
        writer.SetFileName(str(folder / f"slice{index:03d}.dcm"))
        writer.Execute(slice_image)

    assert predict(run, folder, tmp_path / "out", device="cpu") == 0

    from gmrseg.data.io import read_dicom_series

    _, geometry = read_dicom_series(folder)
    written = nib.load(str(tmp_path / "out" / "series.nii.gz"))
    assert written.shape == tuple(geometry.shape)
    np.testing.assert_allclose(written.affine, geometry.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(written.dataobj), pattern)


def test_folds_are_averaged(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    sharp = MarkerNetwork(1, 2)
    run = write_run_folder(tmp_path / "run", sharp, network_name="marker", folds=(0,), patch_size=(8, 8, 8))
    flat = MarkerNetwork(1, 2)
    with torch.no_grad():
        flat.scale.zero_()  # uniform probabilities
    (run / "fold_1").mkdir()
    torch.save({"model": flat.state_dict()}, run / "fold_1" / "checkpoint_best.pt")

    image = _pattern()[None]
    single = Predictor.from_run(run, device="cpu", folds=["0"]).segment(image, AFFINE).probabilities
    both = Predictor.from_run(run, device="cpu").segment(image, AFFINE).probabilities
    np.testing.assert_allclose(both, (single + 0.5) / 2, atol=1e-5)


def test_run_folder_errors(tmp_path, run):
    with pytest.raises(FileNotFoundError, match="plans.json"):
        Predictor.from_run(tmp_path, device="cpu")
    with pytest.raises(InputError, match=r"fold 3 has no checkpoint_best.pt.*folds with that checkpoint: 0"):
        Predictor.from_run(run, device="cpu", folds=["3"])
    torch.save({"model": {"other.weight": torch.zeros(1)}}, run / "fold_0" / "checkpoint_last.pt")
    with pytest.raises(InputError, match="does not fit the network"):
        Predictor.from_run(run, device="cpu", checkpoint="last")


def test_checkpoint_with_code_is_not_loaded(tmp_path, run):
    class _Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    torch.save({"model": _Payload()}, run / "fold_0" / "checkpoint_best.pt")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        Predictor.from_run(run, device="cpu")


def test_tta_defaults_follow_equivariance(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    equivariant = write_run_folder(tmp_path / "gmr", MarkerNetwork(), network_name="marker", equivariant=True)
    dense = write_run_folder(tmp_path / "dense", MarkerNetwork(), network_name="marker", equivariant=False)
    assert Predictor.from_run(equivariant, device="cpu").tta == "none"
    assert Predictor.from_run(dense, device="cpu").tta == "flip"
    assert len(Predictor.from_run(dense, device="cpu", tta="full").symmetries) == 48


def test_full_tta_on_non_cubic_patch(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    run = write_run_folder(tmp_path / "run", MarkerNetwork(), network_name="marker", patch_size=(8, 8, 4))
    pattern = _pattern(shape=(11, 9, 7))
    result = Predictor.from_run(run, device="cpu", tta="full").segment(pattern[None], AFFINE)
    np.testing.assert_array_equal(result.segmentation, pattern)


def test_too_large_resampling_stops_with_message(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    run = write_run_folder(tmp_path / "run", MarkerNetwork(), network_name="marker", target_spacing=(0.1, 0.1, 0.1),
                           max_voxels=10**5)
    source = save_nifti(tmp_path / "big scan.nii.gz", _pattern() + 1.0, AFFINE)
    with pytest.raises(InputError, match="big scan.*above the limit"):
        predict(run, source, tmp_path / "seg.nii.gz", device="cpu")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_lateral_pairs_split_by_world_x(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    labels = {"background": 0, "kidney_left": 1, "kidney_right": 2}
    run = write_run_folder(
        tmp_path / "run", MarkerNetwork(1, 2), network_name="marker", labels=labels,
        network_labels={"background": 0, "kidney": 1}, label_pairs=[["kidney_left", "kidney_right"]],
        patch_size=(8, 8, 8),
    )
    image = np.zeros((20, 8, 8), np.float32)
    image[2:6, 2:6, 2:6] = 1.0
    image[14:18, 2:6, 2:6] = 1.0
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # voxel x grows toward the patient's left
    source = save_nifti(tmp_path / "scan.nii.gz", image, lps)
    assert predict(run, source, tmp_path / "seg.nii.gz", device="cpu") == 0

    segmentation = _segmentation(tmp_path / "seg.nii.gz")
    assert set(np.unique(segmentation[2:6, 2:6, 2:6])) == {2}  # low voxel x is the patient's right
    assert set(np.unique(segmentation[14:18, 2:6, 2:6])) == {1}


def test_cuda_out_of_memory_retries_on_cpu(tmp_path, run, caplog):
    predictor = Predictor.from_run(run, device="cpu")
    original = predictor._mean_probabilities
    calls = []

    def fake(image, stitch_device):
        calls.append(stitch_device.type)
        if stitch_device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(image, stitch_device)

    predictor._stitch_device = lambda image: torch.device("cuda")
    predictor._mean_probabilities = fake
    with caplog.at_level(logging.WARNING):
        probabilities = predictor.predict_probabilities(torch.zeros(1, 1, 8, 8, 8))
    assert calls == ["cuda", "cpu"]
    assert probabilities.shape == (1, 2, 8, 8, 8)
    assert "retrying with stitching on the CPU" in caplog.text


def test_ranks_split_files_exactly_once(tmp_path, run, monkeypatch, caplog):
    for index in range(5):
        save_nifti(tmp_path / "in" / f"case{index}.nii.gz", _pattern(seed=index), AFFINE)

    monkeypatch.setenv("WORLD_SIZE", "2")
    with caplog.at_level(logging.INFO, logger="gmrseg.inference.predictor"):
        for rank in ("0", "1"):
            monkeypatch.setenv("RANK", rank)
            assert predict(run, tmp_path / "in", tmp_path / "out", device="cpu") == 0

    written = [record.getMessage().split("Wrote ")[1].split(" (")[0] for record in caplog.records
               if record.getMessage().startswith("Wrote ")]
    assert sorted(Path(path).name for path in written) == [f"case{index}.nii.gz" for index in range(5)]
    assert "Rank 0 of 2: 3 of 5" in caplog.text
    assert "Rank 1 of 2: 2 of 5" in caplog.text


@pytest.mark.slow
def test_torchrun_two_processes_write_each_file_once(tmp_path, run):
    for index in range(5):
        save_nifti(tmp_path / "in" / f"case{index}.nii.gz", _pattern(seed=index), AFFINE)
    script = tmp_path / "predict_with_marker.py"
    script.write_text(textwrap.dedent(
        """
        import sys
        import pytest
        from gmrseg.cli import main
        from inference_helpers import patch_marker_factory

        with pytest.MonkeyPatch.context() as monkeypatch:
            patch_marker_factory(monkeypatch)
            sys.exit(main(sys.argv[1:]))
        """
    ))
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
        str(script), "predict", "-m", str(run), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
        "--device", "cpu",
    ]
    completed = subprocess.run(
        command, env=environment, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    written = [line.split("Wrote ")[1].split(" (")[0] for line in completed.stderr.splitlines() if "Wrote " in line]
    assert sorted(Path(path).name for path in written) == [f"case{index}.nii.gz" for index in range(5)]
    assert "Rank 0 of 2: 3 of 5" in completed.stderr
    assert "Rank 1 of 2: 2 of 5" in completed.stderr
    for index in range(5):
        np.testing.assert_array_equal(_segmentation(tmp_path / "out" / f"case{index}.nii.gz"), _pattern(seed=index))
    assert json.loads((run / "plans.json").read_text())["network"]["name"] == "marker"


class _AlwaysForeground(torch.nn.Module):
    """Logits that pick class 1 on every voxel, whatever the input."""

    size_divisor = 1

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), self.scale * torch.ones_like(x[:, :1])], dim=1)


@pytest.mark.parametrize("normalization, empty_label", [("zscore_nonzero", 0), ("none", 1)])
def test_empty_voxels_are_background_only_for_zscore_nonzero(tmp_path, monkeypatch, normalization, empty_label):
    from gmrseg.inference import run_folder

    monkeypatch.setattr(run_folder, "_build_network", lambda name, in_channels, out_channels, kwargs: _AlwaysForeground())
    run = write_run_folder(tmp_path / "run", _AlwaysForeground(), network_name="always", normalization=normalization,
                           patch_size=(8, 8, 8))

    # A scan with blank oblique corners, as after a rotation: the nonzero box is still the whole grid.
    scan = np.random.default_rng(0).uniform(1.0, 2.0, size=(12, 10, 8)).astype(np.float32)
    x, y = np.meshgrid(np.arange(12), np.arange(10), indexing="ij")
    empty = np.broadcast_to((x + y < 4)[:, :, None], scan.shape)
    scan[empty] = 0.0

    result = Predictor.from_run(run, device="cpu").segment(scan[None], AFFINE)

    assert np.all(result.segmentation[~empty] == 1)
    assert np.all(result.segmentation[empty] == empty_label)
    assert np.allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_window_margin_is_cropped_off(tmp_path, monkeypatch):
    patch_marker_factory(monkeypatch)
    run = write_run_folder(tmp_path / "run", MarkerNetwork(), network_name="marker", patch_size=(8, 8, 8))
    plans = json.loads((run / "plans.json").read_text())
    plans["window_margin"] = [2, 3, 1]
    (run / "plans.json").write_text(json.dumps(plans))
    pattern = _pattern(shape=(11, 9, 7))

    predictor = Predictor.from_run(run, device="cpu")
    seen = []
    original = predictor.predict_probabilities
    monkeypatch.setattr(predictor, "predict_probabilities", lambda image: seen.append(image.shape) or original(image))
    result = predictor.segment(pattern[None], AFFINE)

    assert seen == [(1, 1, 15, 15, 9)]
    np.testing.assert_array_equal(result.segmentation, pattern)
