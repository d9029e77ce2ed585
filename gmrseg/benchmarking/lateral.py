"""Lateral-label benchmark: a reflection-equivariant network with and without merged left/right pairs.

A GMR network commutes with reflections, so it cannot tell a left kidney
from a right one by appearance. gmrseg merges each left/right label pair
into one network class during training and splits the prediction by the
side of the patient's midline afterwards (:mod:`gmrseg.data.lateral`). This
benchmark shows what that buys: on a synthetic dataset with mirror-image
kidneys (:mod:`gmrseg.benchmarking.synthetic_lateral`), it trains a small
GMRUNet twice,

- ``merged``: lateral pairs found by name and merged (the default,
  ``data.label_pairs: null``),
- ``unmerged``: pairing disabled (``data.label_pairs: []``), so the network
  must predict ``kidney_left`` and ``kidney_right`` itself,

and optionally (``--models ... dense``) the dense UNet of the same shape
(never merged) as a reference, then reports the Dice of every label on the held-out cases.

Output folder: ``data/``, ``configs/``, ``runs/``, ``predictions/``,
``evaluation/``, ``results.md``, ``results.csv``, ``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from gmrseg.benchmarking.common import (
    base_config_values,
    hardware_summary,
    predict_and_evaluate,
    prepare_benchmark_dir,
    torch_threads,
    train_with_config,
)
from gmrseg.errors import InputError
from gmrseg.utils.files import save_json_atomic, save_text_atomic

__all__ = ["LATERAL_MODELS", "build_parser", "format_markdown", "main", "run_lateral_benchmark"]

logger = logging.getLogger(__name__)

# key -> (label in tables, network name, data.label_pairs)
LATERAL_MODELS: dict[str, tuple[str, str, list | None]] = {
    "merged": ("GMRUNet, pairs merged", "gmrunet", None),
    "unmerged": ("GMRUNet, pairs not merged", "gmrunet", []),
    "dense": ("dense UNet (reference)", "unet", None),
}

_OUTPUTS = ("data", "configs", "runs", "predictions", "evaluation", "results.md", "results.csv", "results.json")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the lateral-label benchmark."""
    parser = argparse.ArgumentParser(
        prog="lateral_labels.py",
        description="Train a small GMRUNet on synthetic scans with mirror-image left and right kidneys, once with "
        "the lateral pair merged into one class (split by side after prediction) and once without, and report "
        "the Dice of each label on held-out scans.",
    )
    parser.add_argument("--out", type=Path, default=Path("gmrseg_lateral_benchmark"),
                        help="output folder (default: ./gmrseg_lateral_benchmark)")
    parser.add_argument("--cases", type=int, default=32, help="synthetic cases, training plus test (default: 32)")
    parser.add_argument("--test-fraction", type=float, default=0.25,
                        help="fraction of the cases held out for testing (default: 0.25)")
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 32, 32), metavar=("X", "Y", "Z"),
                        help="volume size in voxels, each at least 24 (default: 40 32 32)")
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm (default: 2)")
    parser.add_argument("--config", dest="base_config", default="quick",
                        help="preset name or YAML file every model starts from (default: quick)")
    # Fixed epochs and batch, not the preset's: the preset's time limit does not apply here, and
    # its epoch count is only an upper bound for that limit.
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per model (default: 12)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None,
                        help="optimizer steps per epoch (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=2, help="patches per optimizer step (default: 2)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(32, 32, 32), metavar=("X", "Y", "Z"),
                        help="training patch and sliding-window size in voxels (default: 32 32 32)")
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32],
                        help="channels per UNet level (default: 8 16 32)")
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[5, 5, 3],
                        help="odd kernel size per UNet level (default: 5 5 3)")
    parser.add_argument("--models", nargs="+", choices=tuple(LATERAL_MODELS), default=["merged", "unmerged"],
                        help="models to train, in table order: merged (GMRUNet, pairs merged), unmerged (GMRUNet, "
                        "label_pairs: []), dense (dense UNet of the same shape, which can tell left from right) "
                        "(default: merged unmerged)")
    parser.add_argument("--device", default="auto",
                        help="device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (torch.set_num_threads); 1 is much faster on a CPU shared with "
                        "other jobs (default: torch's choice, usually one per core)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of training (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier benchmark in --out")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "iterations_per_epoch", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if len(args.features) != len(args.kernel_sizes):
        raise InputError(f"--features ({len(args.features)} levels) and --kernel-sizes ({len(args.kernel_sizes)} "
                         "levels) must have the same length")
    if any(size < 1 or size % 2 == 0 for size in args.kernel_sizes):
        raise InputError(f"--kernel-sizes must be odd and positive, got {args.kernel_sizes}")


def run_lateral_benchmark(args: argparse.Namespace, command: str = "") -> dict[str, Any]:
    """Run the benchmark with parsed options; write and return its results."""
    with torch_threads(args.threads):
        return _run(args, command)


def _run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from gmrseg.benchmarking.synthetic_lateral import make_lateral_dataset

    _check_args(args)
    out = Path(args.out)
    hardware = hardware_summary(args.device)
    settings = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        settings[key] = value
    prepare_benchmark_dir(out, overwrite=args.overwrite, outputs=_OUTPUTS,
                          marker={"benchmark": "lateral", "settings": settings})
    started = time.perf_counter()

    data_dir = make_lateral_dataset(out / "data", cases=args.cases, test_fraction=args.test_fraction,
                                    shape=args.shape, spacing=args.spacing, seed=args.seed)
    keys = list(dict.fromkeys(args.models))

    models = []
    for key in keys:
        label, network, label_pairs = LATERAL_MODELS[key]
        values = base_config_values(args.base_config, network=network, features=args.features,
                                    kernel_sizes=args.kernel_sizes, epochs=args.epochs,
                                    iterations_per_epoch=args.iterations_per_epoch, patch_size=args.patch_size,
                                    seed=args.seed)
        values["data"]["label_pairs"] = label_pairs
        values["data"]["batch_size"] = args.batch_size
        # Rotation augmentation is not what this benchmark compares; flips stay as configured.
        values["augmentation"]["rotation"] = False

        logger.info("Training %s", label)
        run_dir = out / "runs" / key
        trained = train_with_config(values, out / "configs" / f"{key}.yaml", data_dir, run_dir, device=args.device)
        plans = json.loads((run_dir / "plans.json").read_text(encoding="utf-8"))
        scores = predict_and_evaluate(run_dir, data_dir / "imagesTs", data_dir / "labelsTs",
                                      out / "predictions" / key, out / "evaluation" / key,
                                      dataset_json=data_dir / "dataset.json", device=args.device, tta=None,
                                      overlap=0.5)
        logger.info("%s: Dice %s", label, ", ".join(f"{name} {value:.3f}" for name, value in
                                                    scores["per_class"].items()))
        models.append({
            "key": key, "label": label, "network": network, "label_pairs_setting": label_pairs,
            "network_labels": plans["network_labels"], "merged_pairs": plans["label_pairs"],
            **trained, **scores,
        })

    results = {
        "benchmark": "lateral",
        "command": command,
        "settings": settings,
        "hardware": hardware,
        "classes": [name for name in json.loads((data_dir / "dataset.json").read_text(encoding="utf-8"))["labels"]
                    if name != "background"],
        "models": models,
        "total_seconds": time.perf_counter() - started,
    }
    save_text_atomic(out / "results.md", format_markdown(results))
    save_text_atomic(out / "results.csv", _format_csv(results))
    save_json_atomic(out / "results.json", results)
    return results


def format_markdown(results: dict[str, Any]) -> str:
    """Return the lateral benchmark's table as Markdown."""
    classes = results["classes"]
    lines = ["# Lateral labels", "",
             "| model | network classes | " + " | ".join(classes) + " | mean | parameters | training (s) |",
             "|---|---|" + "---:|" * (len(classes) + 3)]
    for model in results["models"]:
        network_classes = ", ".join(name for name in model["network_labels"] if name != "background")
        cells = [f"{model['per_class'][name]:.3f}" for name in classes]
        lines.append(f"| {model['label']} | {network_classes} | " + " | ".join(cells)
                     + f" | {model['mean']:.3f} | {model['parameters']:,} | {model['training_seconds']:.0f} |")
    lines += ["", f"Hardware: {results['hardware']['summary']}.", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def _format_csv(results: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "network", "merged", "class", "dice_mean", "parameters", "training_seconds"])
    for model in results["models"]:
        merged = int(bool(model["merged_pairs"]))
        for name in [*results["classes"], "mean"]:
            value = model["mean"] if name == "mean" else model["per_class"][name]
            writer.writerow([model["key"], model["network"], merged, name, f"{value:.4f}", model["parameters"],
                             f"{model['training_seconds']:.1f}"])
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the lateral-label benchmark from the command line; print its table; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        results = run_lateral_benchmark(args, command=" ".join(["python", "benchmarks/lateral_labels.py", *argv]))
    except (InputError, FileNotFoundError, FileExistsError) as error:
        print(f"lateral_labels.py: error: {error}", file=sys.stderr)
        return 2
    print(format_markdown(results))
    return 0
