"""Rotation gap: split a trained run's drop from upright to rotated Dice into its parts.

For each validation case of the fold, with the best checkpoint and the same random
rotations as ``benchmarks/training_quality.py`` (same ``--seed``), it scores:

- ``upright``: the case as stored;
- ``blur_0.4`` and ``blur_0.8``: the stored case after a Gaussian blur of that sigma
  (voxels). Linear interpolation at a random sub-voxel offset blurs by about 0.4 voxel
  on average, so the first shows what the interpolation of a rotated image alone costs;
- ``rotated``: the rotated case against its label moved by nearest neighbour
  (the ``rotated`` row of training_quality.py);
- ``rotated_linear_reference``: the same predictions against the label moved by
  linear interpolation of each class;
- ``moved_upright``: the upright prediction moved with the case (linear per class)
  against the linear reference. A network that commuted exactly with the rotation,
  interpolation included, would score this;
- ``nearest_reference``: the nearest-neighbour reference scored against the linear
  one, which shows how far the two references agree.

``upright - moved_upright`` is what moving the labels costs by itself (near 0),
``rotated_linear_reference - rotated`` what the nearest-neighbour reference takes
away, and ``moved_upright - rotated_linear_reference`` what remains for the network.

Example::

    python benchmarks/rotation_gap.py ../shared/data/hippocampus --run /tmp/quality/run --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

SETTINGS = ("upright", "blur_0.4", "blur_0.8", "rotated", "rotated_linear_reference", "moved_upright",
            "nearest_reference")


def _dice(segmentation: np.ndarray, reference: np.ndarray, value: int) -> float:
    """Return Dice of one class; NaN when the class is absent from both."""
    predicted, expected = segmentation == value, reference == value
    total = predicted.sum() + expected.sum()
    return float(2.0 * np.logical_and(predicted, expected).sum() / total) if total else float("nan")


def measure(run_dir: Path, dataset_dir: Path, fold: int, seed: int) -> dict[str, float]:
    """Return each setting's mean foreground Dice: per class over the cases, then over the classes.

    This is how training_quality.py averages, so ``upright`` and ``rotated`` repeat its figures.
    """
    from gmrseg.data.dataset import load_dataset
    from gmrseg.data.example_data import rotate_case
    from gmrseg.data.io import read_image, read_label
    from gmrseg.inference.predictor import Predictor

    spec = load_dataset(dataset_dir)
    by_id = {case.case_id: case for case in spec.training}
    splits = json.loads((run_dir / "splits.json").read_text())
    plans = json.loads((run_dir / "plans.json").read_text())
    values = [value for value in plans["labels"].values() if value != 0]
    predictor = Predictor.from_run(run_dir, device="cpu", folds=[fold], checkpoint="best")
    rng = np.random.default_rng(seed)

    scores: dict[str, dict[int, list[float]]] = {setting: {value: [] for value in values} for setting in SETTINGS}

    def score(setting: str, segmentation: np.ndarray, reference: np.ndarray) -> None:
        for value in values:
            scores[setting][value].append(_dice(segmentation, reference, value))

    for case_id in splits[fold]["val"]:
        case = by_id[case_id]
        image, geometry = read_image(case.image_paths)
        label = read_label(case.label_path, geometry)
        rotation = Rotation.random(random_state=int(rng.integers(2**31 - 1))).as_matrix()

        def segment(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
            return predictor.segment(volume[None], affine, case_id=case_id).segmentation

        # Upright, sharp and blurred.
        upright = segment(image[0], geometry.affine)
        score("upright", upright, label)
        for sigma in (0.4, 0.8):
            blurred = ndimage.gaussian_filter(image[0].astype(np.float32), sigma)
            score(f"blur_{sigma}", segment(blurred, geometry.affine), label)

        # Rotated, against both references, and the upright prediction moved the same way.
        rotated_image, nearest_label, rotated_affine = rotate_case(image[0], label, geometry.affine, rotation)
        _, linear_label, _ = rotate_case(image[0], label, geometry.affine, rotation, label_interpolation="linear")
        _, moved_upright, _ = rotate_case(image[0], upright, geometry.affine, rotation, label_interpolation="linear")
        rotated = segment(rotated_image, rotated_affine)
        score("rotated", rotated, nearest_label)
        score("rotated_linear_reference", rotated, linear_label)
        score("moved_upright", moved_upright, linear_label)
        score("nearest_reference", nearest_label, linear_label)

    return {setting: float(np.mean([np.nanmean(per_case) for per_case in per_class.values()]))
            for setting, per_class in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", type=Path, help="dataset folder the run was trained on")
    parser.add_argument("--run", type=Path, required=True, help="trained run folder (gmrseg train -o)")
    parser.add_argument("--fold", type=int, default=0, help="fold to evaluate (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rotations (default: 0, as training_quality.py)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    if not (args.run / "splits.json").is_file():
        parser.error(f"{args.run} holds no trained run (no splits.json); give the folder of gmrseg train -o.")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dice = measure(args.run, args.dataset_dir, args.fold, args.seed)
    cases = len(json.loads((args.run / "splits.json").read_text())[args.fold]["val"])
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "fold": args.fold, "seed": args.seed,
              "cases": cases, "dice": dice}
    (args.run / "rotation_gap.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"| setting ({cases} cases) | mean foreground Dice |")
    print("|---|---|")
    for setting, value in dice.items():
        print(f"| {setting} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
