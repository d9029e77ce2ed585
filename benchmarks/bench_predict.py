"""Prediction pipeline overhead, and how much test-time augmentation changes a GMR network's output.

Part ``overhead`` (default) measures wall time and peak memory of the whole
``gmrseg predict`` pipeline (read NIfTI, preprocess, sliding window, restore,
write) on one CPU volume per size. The reference is a bare MONAI
``sliding_window_inference`` call on the same voxels, with the same network,
window size, overlap, Gaussian blending and window batch size. Each measurement
runs in a fresh child process (so peak resident memory is its own), bare and
pipeline runs alternate, and the median of the repeats is reported.

Part ``tta``: a small GMRUNet with random weights segments a random volume
with every one of the 48 cube symmetries. The script prints the largest change
of any class probability against no augmentation, once with gmrseg's
symmetric window layout and once with MONAI's default window placement.

Usage::

    python benchmarks/bench_predict.py                       # overhead at 160^3 and 256^3
    python benchmarks/bench_predict.py --part tta            # TTA change, about 3 minutes on 2 cores
    python benchmarks/bench_predict.py --sizes 96 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NETWORK = {"name": "gmrunet", "kwargs": {"features": [4, 8, 16, 32], "kernel_sizes": 3}}
PATCH_SIZE = (128, 128, 128)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_inputs(folder: Path, size: int) -> tuple[Path, Path]:
    """Write a synthetic scan of ``size``^3 voxels (1 mm, RAS) and a run folder with random weights."""
    import nibabel as nib
    import torch

    from gmrseg.inference.run_folder import _build_network

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)

    # A body-like ellipsoid with noisy texture, so crop-to-nonzero keeps most of the volume.
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, size, dtype=np.float32)] * 3, indexing="ij", sparse=True)
    body = (axes[0] ** 2 / 0.95 + axes[1] ** 2 / 0.9 + axes[2] ** 2 / 0.95) < 1.0
    image = np.where(body, 100.0 + 20.0 * rng.standard_normal((size,) * 3, dtype=np.float32), 0.0).astype(np.float32)
    scan = folder / f"scan_{size}.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(scan))

    run = folder / "run"
    if not (run / "plans.json").exists():
        torch.manual_seed(0)
        network = _build_network(NETWORK["name"], 1, 2, dict(NETWORK["kwargs"]))
        (run / "fold_0").mkdir(parents=True, exist_ok=True)
        torch.save({"model": network.state_dict()}, run / "fold_0" / "checkpoint_best.pt")
        plans = {
            "preprocessing": {
                "orientation": "RAS",
                "target_spacing": [1.0, 1.0, 1.0],
                "normalization": [{"scheme": "zscore_nonzero"}],
                "crop_to_nonzero": True,
            },
            "fingerprint": {},
            "labels": {"background": 0, "foreground": 1},
            "network_labels": {"background": 0, "foreground": 1},
            "label_pairs": [],
            "in_channels": 1,
            "channel_names": {"0": "MRI"},
            "file_ending": ".nii.gz",
            "patch_size": list(PATCH_SIZE),
            "network": NETWORK,
            "equivariant": True,
        }
        (run / "plans.json").write_text(json.dumps(plans, indent=2))
    return scan, run


def _child_bare(scan: Path, run: Path, overlap: float, sw_batch_size: int) -> dict:
    """Time one bare MONAI sliding_window_inference call on the scan's voxels (already in memory)."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference

    from gmrseg.inference.run_folder import find_folds, load_fold_network, load_plans

    plans = load_plans(run)
    network = load_fold_network(plans, find_folds(run, None, "best")[0][1], torch.device("cpu"))
    image = torch.from_numpy(np.asarray(nib.load(str(scan)).dataobj, dtype=np.float32))[None, None]
    baseline = _peak_rss_mb()

    start = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(
            image, PATCH_SIZE, sw_batch_size, network, overlap=overlap, mode="gaussian", sigma_scale=0.125
        )
        segmentation = torch.argmax(logits, dim=1)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _peak_rss_mb(), "baseline_mb": baseline, "voxels": int(segmentation.numel())}


def _child_pipeline(scan: Path, run: Path, overlap: float, sw_batch_size: int, output: Path) -> dict:
    """Time the ``gmrseg predict`` command function on the NIfTI file, from reading to writing."""
    import logging

    import torch  # noqa: F401  (imported before the baseline, as in the bare run)

    from gmrseg.cli import main

    # --verbose logs "CASE: STAGE SECONDS s" per stage; keep those records.
    stages: dict[str, float] = {}

    class _StageHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            parts = record.getMessage().split()
            if len(parts) == 4 and parts[3] == "s" and parts[0].endswith(":"):
                stages[parts[1]] = stages.get(parts[1], 0.0) + float(parts[2])

    handler = _StageHandler(level=logging.INFO)
    logging.getLogger("gmrseg.inference.predictor").addHandler(handler)
    logging.getLogger("gmrseg.inference.predictor").setLevel(logging.INFO)

    baseline = _peak_rss_mb()
    start = time.perf_counter()
    code = main([
        "--log-level", "WARNING", "predict", "-m", str(run), "-i", str(scan), "-o", str(output),
        "--device", "cpu", "--overlap", str(overlap), "--sw-batch-size", str(sw_batch_size), "--overwrite",
        "--verbose",
    ])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"gmrseg predict failed with exit code {code}")
    return {"seconds": seconds, "peak_mb": _peak_rss_mb(), "baseline_mb": baseline, "stages": stages}


def _run_child(kind: str, scan: Path, run: Path, args) -> dict:
    command = [
        sys.executable, __file__, "--child", kind, "--scan", str(scan), "--run", str(run),
        "--overlap", str(args.overlap), "--sw-batch-size", str(args.sw_batch_size),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_overhead(args) -> None:
    import torch

    print(f"CPU threads: {torch.get_num_threads()}, network {NETWORK['name']} {NETWORK['kwargs']}, "
          f"patch {PATCH_SIZE}, overlap {args.overlap}, sw_batch_size {args.sw_batch_size}, TTA none")
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as temporary:
        folder = Path(temporary)
        rows = []
        for size in args.sizes:
            scan, run = _write_inputs(folder, size)
            bare, pipeline = [], []
            for _ in range(args.repeats):
                bare.append(_run_child("bare", scan, run, args))
                pipeline.append(_run_child("pipeline", scan, run, args))
            bare_seconds = statistics.median(item["seconds"] for item in bare)
            pipeline_seconds = statistics.median(item["seconds"] for item in pipeline)
            rows.append((
                size,
                bare_seconds,
                pipeline_seconds,
                pipeline_seconds / bare_seconds - 1.0,
                max(item["peak_mb"] for item in bare),
                max(item["peak_mb"] for item in pipeline),
                statistics.median(item["baseline_mb"] for item in pipeline),
                pipeline[-1]["stages"],
            ))
            scan.unlink()

    print(f"{'size':>6} {'bare s':>8} {'pipeline s':>11} {'overhead':>9} {'bare peak MB':>13} "
          f"{'pipeline peak MB':>17} {'import baseline MB':>19}")
    for size, bare_seconds, pipeline_seconds, overhead, bare_peak, pipeline_peak, baseline, _ in rows:
        print(f"{size:>5}^3 {bare_seconds:>8.1f} {pipeline_seconds:>11.1f} {overhead:>8.1%} {bare_peak:>13.0f} "
              f"{pipeline_peak:>17.0f} {baseline:>19.0f}")
    print(f"(median of {args.repeats} alternating runs per size; peak = max resident set size of the child process)")

    # The stages around the windows are the pipeline's own cost, measured inside one run,
    # so they do not depend on how busy a shared machine was between two runs.
    print("Stage seconds of the last pipeline run (windows = sliding window; the rest is pipeline overhead):")
    for size, *_, stages in rows:
        around = sum(seconds for stage, seconds in stages.items() if stage != "windows")
        listing = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in stages.items())
        ratio = around / stages["windows"] if stages.get("windows") else float("nan")
        print(f"{size:>5}^3 {listing}; non-window stages / windows = {ratio:.1%}")


def run_tta(args) -> None:
    """Print how much each of the 48 cube symmetries changes a random GMRUNet's probabilities."""
    import torch
    from monai.inferers import sliding_window_inference

    from gmrseg.inference.run_folder import _build_network
    from gmrseg.inference.sliding_window import sliding_window_logits
    from gmrseg.inference.tta import tta_symmetries

    torch.manual_seed(0)
    network = _build_network("gmrunet", 1, 3, {"features": [4, 8, 16], "kernel_sizes": 3}).eval()
    image = torch.randn(1, 1, 27, 22, 19)
    roi = (16, 16, 16)

    def symmetric(symmetry):
        logits = sliding_window_logits(network, image, roi, overlap=0.5, sw_batch_size=8, symmetry=symmetry)
        return torch.softmax(logits, dim=1)

    def monai_default(symmetry):
        with torch.inference_mode():
            logits = sliding_window_inference(symmetry.apply(image), roi, 8, network, overlap=0.5, mode="gaussian")
        return symmetry.invert(torch.softmax(logits, dim=1))

    symmetries = tta_symmetries("full")
    for name, function in (("gmrseg symmetric layout", symmetric), ("MONAI default placement", monai_default)):
        start = time.perf_counter()
        reference = function(symmetries[0])
        changes = [float((function(symmetry) - reference).abs().max()) for symmetry in symmetries[1:]]
        flips = changes[:7]
        print(f"{name}: max |p_symmetry - p_none| over 47 symmetries {max(changes):.2e} "
              f"(flips only {max(flips):.2e}, median {statistics.median(changes):.2e}), "
              f"{time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("overhead", "tta"), default="overhead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 256], help="cube edge lengths in voxels")
    parser.add_argument("--repeats", type=int, default=2, help="alternating bare/pipeline runs per size")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=2)
    parser.add_argument("--child", choices=("bare", "pipeline"), help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "bare":
        print(json.dumps(_child_bare(args.scan, args.run, args.overlap, args.sw_batch_size)))
    elif args.child == "pipeline":
        output = args.scan.with_name(f"seg_{os.getpid()}.nii.gz")
        print(json.dumps(_child_pipeline(args.scan, args.run, args.overlap, args.sw_batch_size, output)))
        output.unlink()
    elif args.part == "tta":
        run_tta(args)
    else:
        run_overhead(args)


if __name__ == "__main__":
    main()
