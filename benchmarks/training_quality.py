"""Training quality: train one fold, then measure Dice upright and randomly rotated.

Trains ``gmrseg train DATASET -c CONFIG -o OUT --fold F`` (skipped with
``--skip-train`` when OUT already contains the trained fold), then segments the fold's
validation cases with the best checkpoint through the full prediction path
(``Predictor.segment``: preprocessing, sliding windows, resampling back) twice:
as stored, and after a uniform random 3D rotation of each case about its
centre (``gmrseg.data.example_data.rotate_case``; the grid is enlarged so
nothing is cut off). Dice is computed per class on each case's own grid.

A rotated case's reference is its label moved with the image. Row ``rotated``
moves it by nearest neighbour, whose boundaries jitter by up to half a voxel
against the linearly interpolated image. Row ``rotated_linear_reference``
scores the same predictions against the label moved by linear interpolation of
each class, which follows the image. On the hippocampus the two references
agree at a Dice of about 0.97 only, so the first row understates rotated
accuracy by about a point (docs/benchmarks.md).

Prints a Markdown table and writes ``OUT/quality.json``. Wall and CPU seconds
of training are reported separately because shared machines stretch wall time.

Example::

    nice python benchmarks/training_quality.py ../shared/data/hippocampus --config quick --out /tmp/quick_run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation


# Scored settings: the stored cases, then the rotated cases against their label moved
# by nearest neighbour, then the same predictions against the label moved by linear
# interpolation of each class (``rotate_case``).
SETTINGS = ("upright", "rotated", "rotated_linear_reference")

# Figures of the training itself, kept from an earlier quality.json by --skip-train.
_TRAINING_KEYS = ("train_wall_seconds", "train_cpu_seconds", "load_average_at_end", "validation_dice_during_training")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def _dice(prediction: np.ndarray, reference: np.ndarray, value: int) -> float:
    """Return Dice of one class; NaN when the class is absent from both."""
    predicted = prediction == value
    expected = reference == value
    total = predicted.sum() + expected.sum()
    if total == 0:
        return float("nan")
    return float(2.0 * np.logical_and(predicted, expected).sum() / total)


def _evaluate(run_dir: Path, dataset_dir: Path, fold: int, seed: int, threads: int | None) -> dict:
    import torch

    from gmrseg.data.dataset import load_dataset
    from gmrseg.data.example_data import rotate_case
    from gmrseg.data.io import read_image, read_label
    from gmrseg.inference.predictor import Predictor

    if threads:
        torch.set_num_threads(threads)
    spec = load_dataset(dataset_dir)
    by_id = {case.case_id: case for case in spec.training}
    splits = json.loads((run_dir / "splits.json").read_text())
    plans = json.loads((run_dir / "plans.json").read_text())
    classes = {name: value for name, value in plans["labels"].items() if value != 0}
    predictor = Predictor.from_run(run_dir, device="cpu", folds=[fold], checkpoint="best")
    rng = np.random.default_rng(seed)

    scores: dict[str, dict[str, list[float]]] = {setting: {} for setting in SETTINGS}
    for case_id in splits[fold]["val"]:
        case = by_id[case_id]
        image, geometry = read_image(case.image_paths)
        label = read_label(case.label_path, geometry)
        rotation = Rotation.random(random_state=int(rng.integers(2**31 - 1))).as_matrix()
        rotated_image, nearest_label, rotated_affine = rotate_case(image[0], label, geometry.affine, rotation)
        _, linear_label, _ = rotate_case(image[0], label, geometry.affine, rotation, label_interpolation="linear")

        upright = predictor.segment(image, geometry.affine, case_id=case_id).segmentation
        rotated = predictor.segment(rotated_image[None], rotated_affine, case_id=case_id).segmentation
        for setting, segmentation, reference in (("upright", upright, label), ("rotated", rotated, nearest_label),
                                                 ("rotated_linear_reference", rotated, linear_label)):
            for name, value in classes.items():
                scores[setting].setdefault(name, []).append(_dice(segmentation, reference, value))

    summary = {}
    for setting, per_class in scores.items():
        means = {name: float(np.nanmean(values)) for name, values in per_class.items()}
        summary[setting] = {"per_class": means, "mean": float(np.mean(list(means.values()))),
                            "cases": len(splits[fold]["val"])}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", type=Path, help="dataset folder (nnU-Net v2 or Decathlon layout)")
    parser.add_argument("--config", default="quick", help="config file or preset name (default: quick)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to train into and evaluate")
    parser.add_argument("--fold", type=int, default=0, help="fold to train and evaluate (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rotations (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-train", action="store_true", help="evaluate an existing run folder only")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)

    from gmrseg.training.run import train

    if args.skip_train and not (args.out / "splits.json").is_file():
        parser.error(f"{args.out} holds no trained run (no splits.json); drop --skip-train to train it first.")

    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        # With --skip-train the run's own resolved config describes what was trained.
        "config": str(args.out / "config.yaml") if args.skip_train else str(args.config),
        "fold": args.fold,
        "hardware": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "processor": platform.processor() or platform.machine(),
                     "load_average_at_start": os.getloadavg()},
    }
    if not args.skip_train:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        summary = train(args.dataset_dir, config_path=args.config, run_dir=args.out, fold=str(args.fold),
                        device="cpu", quiet=True)
        result["train_wall_seconds"] = time.perf_counter() - wall
        result["train_cpu_seconds"] = _cpu_seconds() - cpu
        result["load_average_at_end"] = os.getloadavg()
        result["validation_dice_during_training"] = summary["folds"][args.fold]["best_dice_mean"]

    else:
        # Keep the training figures of an earlier run of this script.
        previous = args.out / "quality.json"
        if previous.is_file():
            earlier = json.loads(previous.read_text())
            result.update({key: earlier[key] for key in _TRAINING_KEYS if key in earlier})
    result.update(_evaluate(args.out, args.dataset_dir, args.fold, args.seed, args.threads))
    (args.out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"| setting | {' | '.join(result['upright']['per_class'])} | mean foreground Dice |")
    print("|---|" + "---|" * (len(result["upright"]["per_class"]) + 1))
    for setting in SETTINGS:
        values = " | ".join(f"{value:.3f}" for value in result[setting]["per_class"].values())
        label = setting.replace("_linear_reference", ", linear reference")
        print(f"| {label} ({result[setting]['cases']} cases) | {values} | {result[setting]['mean']:.3f} |")
    if "train_wall_seconds" in result:
        print(f"training: {result['train_wall_seconds']:.0f} s wall, {result['train_cpu_seconds']:.0f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
