"""Command line interface: parse arguments and call the library.

No work happens here. Each subcommand imports its module lazily so that
``gmrseg --help`` stays fast and a missing optional extra only affects the
subcommand that needs it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gmrseg import __version__
from gmrseg.demo import DEMO_TIME_LIMIT_MINUTES
from gmrseg.errors import InputError

__all__ = ["build_parser", "main"]

_DEVICE_HELP = "device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)"


def _add_validate(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a dataset folder before training",
        description="Check every case of an nnU-Net / Decathlon dataset folder and print one line per problem. "
        "Exit code 0 when the dataset is clean, 1 otherwise.",
    )
    parser.add_argument("dataset_dir", type=Path, help="dataset folder with dataset.json, imagesTr/ and labelsTr/")
    parser.set_defaults(handler=_run_validate)


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a network on a dataset folder",
        description="Validate the dataset, plan preprocessing, and train one fold (or all folds) into RUN_DIR. "
        "Run under torchrun for DistributedDataParallel on several GPUs or CPU processes.",
    )
    parser.add_argument("dataset_dir", type=Path, help="dataset folder with dataset.json, imagesTr/ and labelsTr/")
    parser.add_argument("-c", "--config", default=None,
                        help="YAML config file, or a preset name (default, quick, unet_baseline). Keys not given "
                        "take the defaults of configs/default.yaml (default: the built-in default config)")
    parser.add_argument("-o", "--output", "--run-dir", dest="run_dir", type=Path, required=True,
                        help="run folder for checkpoints, logs, metrics and everything predict needs")
    parser.add_argument("--fold", default="0",
                        help="cross-validation fold 0..4, or 'all' to train the five folds in turn (default: 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the fold's checkpoint_last.pt (default: start fresh)")
    parser.add_argument("--device", default="auto", help=_DEVICE_HELP)
    parser.add_argument("--epochs", type=int, default=None,
                        help="number of epochs; overrides the config's training.epochs (default: the config's)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="wall-clock budget in minutes for the epochs and validations: after the first epoch "
                        "the epoch count is set to what fits and the learning-rate schedule ends there; "
                        "0 trains all epochs. Overrides the config's training.time_limit_minutes (default: the "
                        "config's; 9.5 in the quick preset, none in the others)")
    parser.add_argument("--quiet", action="store_true", help="hide progress bars and per-epoch log lines")
    parser.set_defaults(handler=_run_train)


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment NIfTI scans or a DICOM series with a trained run",
        description="Segment a NIfTI file, a folder of NIfTI files or a DICOM series folder. Outputs have the "
        "input's shape, affine and qform/sform codes. Run under torchrun to split a folder across processes.",
    )
    parser.add_argument("-m", "--model", dest="run_dir", type=Path, required=True, help="run folder written by train")
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help="NIfTI file, folder of NIfTI files (CASE_0000.nii.gz channel naming or one file "
                        "per case), or a DICOM series folder")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output NIfTI file for a single scan, or output folder for a folder of scans")
    parser.add_argument("--device", default="auto", help=_DEVICE_HELP)
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="fraction of overlap between neighbouring windows, in [0, 1) (default: 0.5)")
    parser.add_argument("--sw-batch-size", type=int, default=2,
                        help="number of windows run through the network at once (default: 2)")
    parser.add_argument("--tta", choices=("none", "flip", "full"), default=None,
                        help="test-time augmentation: none, flip (axis flips) or full (flips and the 48 cube "
                        "symmetries) (default: none for GMR networks, flip for dense networks)")
    parser.add_argument("--folds", nargs="+", default=None,
                        help="folds to average, e.g. 0 1 2 (default: every fold present in the run folder)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of each fold to use (default: best)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write per-class probabilities as a 4D float32 NIfTI next to each output")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--verbose", action="store_true",
                        help="log each stage (read, preprocess, windows, invert, write) with its seconds")
    parser.set_defaults(handler=_run_predict)


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare predicted segmentations with reference labels",
        description="Per case and per class Dice, HD95 (mm) and volume difference (mL), with mean and median "
        "summaries. Both empty: Dice 1, HD95 excluded. One empty: Dice 0, HD95 infinite.",
    )
    parser.add_argument("prediction", type=Path, help="predicted segmentation file or folder")
    parser.add_argument("reference", type=Path, help="reference label file or folder (same file names)")
    parser.add_argument("-d", "--dataset-json", type=Path, default=None,
                        help="dataset.json or a run folder for class names (default: classes found in the labels)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="report path; writes REPORT.json and REPORT.csv (default: print only)")
    parser.set_defaults(handler=_run_evaluate)


def _add_example_data(subparsers) -> None:
    parser = subparsers.add_parser(
        "example-data",
        help="write an example dataset folder from data shipped with gmrseg",
        description="Write a dataset folder (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json) from real "
        "scans that ship with the package (hippocampus MRI) or with nilearn (MNI152 template).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to create")
    parser.add_argument("--dataset", choices=("hippocampus", "mni152"), default="hippocampus",
                        help="source of the scans (default: hippocampus; mni152 needs gmrseg[examples])")
    parser.add_argument("--cases", type=int, default=None,
                        help="total number of cases, training plus test (default: all shipped cases)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of cases held out in imagesTs/labelsTs (default: 0.2)")
    parser.add_argument("--rotate-train", choices=("none", "random"), default="none",
                        help="rotate training cases: none or random 3D rotations (default: none)")
    parser.add_argument("--rotate-test", default="none",
                        help="rotate test cases: none, random (one random 3D rotation each), or comma-separated "
                        "angles in degrees, e.g. 15,30,45: each test case is then written once per angle about "
                        "each of x, y and z (CASE_rotx015, CASE_roty015, ...), and 0 adds the upright case "
                        "(default: none)")
    parser.add_argument("--label-interpolation", choices=("nearest", "linear"), default=None,
                        help="how labels of rotated hippocampus cases are moved: nearest neighbour, or linear "
                        "interpolation of each class, whose boundaries follow the interpolated image (default: "
                        "nearest; mni152 labels are always linear)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    parser.set_defaults(handler=_run_example_data)


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="example data, training, prediction and evaluation end to end on CPU",
        description="Write the shipped hippocampus example dataset, train with configs/quick.yaml, predict the "
        "held-out scans and print the Dice table. Works offline; --epochs 1 gives a quick smoke run.",
    )
    parser.add_argument("--out", type=Path, default=Path("gmrseg_demo"), help="output folder (default: ./gmrseg_demo)")
    parser.add_argument("--device", default="auto", help=_DEVICE_HELP)
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum number of training epochs of 25 steps (default: the quick config's 200; the "
                        "time limit decides)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="wall-clock minutes for training epochs and validations; the epoch count is set to "
                        f"what fits (default: {DEMO_TIME_LIMIT_MINUTES:g}, instead of the quick config's 9.5, so the "
                        "whole demo takes under 10 minutes on a 2-core CPU); 0 trains all epochs")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing non-empty output folder first")
    parser.set_defaults(handler=_run_demo)


def _add_benchmark(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="run a benchmark shipped with gmrseg",
        description="Benchmarks: 'rotation' trains GMRUNet and dense UNets on upright scans and tests them on "
        "rotated scans.",
    )
    parser.add_argument("name", choices=("rotation",), help="benchmark to run")
    parser.add_argument("benchmark_args", nargs=argparse.REMAINDER,
                        help="arguments passed to the benchmark (see gmrseg benchmark rotation --help)")
    parser.set_defaults(handler=_run_benchmark)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``gmrseg`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="gmrseg",
        description="Rotation-robust 3D medical image segmentation with GMR convolutions.",
    )
    parser.add_argument("--version", action="version", version=f"gmrseg {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging level for messages on stderr (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in (_add_validate, _add_train, _add_predict, _add_evaluate, _add_example_data, _add_demo, _add_benchmark):
        add(subparsers)
    return parser


def _run_validate(args) -> int:
    from gmrseg.data.validation import validate_dataset

    report = validate_dataset(args.dataset_dir)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else 1


def _run_train(args) -> int:
    from gmrseg.training.run import train

    train(
        args.dataset_dir,
        config_path=args.config,
        run_dir=args.run_dir,
        fold=args.fold,
        resume=args.resume,
        device=args.device,
        epochs=args.epochs,
        time_limit_minutes=args.time_limit,
        quiet=args.quiet,
    )
    return 0


def _run_predict(args) -> int:
    from gmrseg.inference.predictor import predict

    failures = predict(
        args.run_dir,
        args.input,
        args.output,
        device=args.device,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta,
        folds=args.folds,
        checkpoint=args.checkpoint,
        save_probabilities=args.save_probabilities,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    return 1 if failures else 0


def _run_evaluate(args) -> int:
    from gmrseg.evaluation.evaluate import evaluate, format_summary

    report = evaluate(args.prediction, args.reference, dataset_json=args.dataset_json, output=args.output)
    print(format_summary(report))
    return 0


def _run_example_data(args) -> int:
    from gmrseg.data.example_data import make_example_dataset

    make_example_dataset(
        args.out_dir,
        dataset=args.dataset,
        cases=args.cases,
        test_fraction=args.test_fraction,
        rotate_train=args.rotate_train,
        rotate_test=args.rotate_test,
        seed=args.seed,
        overwrite=args.overwrite,
        label_interpolation=args.label_interpolation,
    )
    # make_example_dataset logs the folder and the case counts, so the command prints nothing more.
    return 0


def _run_demo(args) -> int:
    from gmrseg.demo import run_demo
    from gmrseg.evaluation.evaluate import format_summary

    limit = {} if args.time_limit is None else {"time_limit_minutes": args.time_limit}
    result = run_demo(args.out, device=args.device, epochs=args.epochs, overwrite=args.overwrite, **limit)
    print(format_summary(result.report))
    print()
    print(f"Dataset:      {result.dataset_dir}")
    print(f"Trained run:  {result.run_dir}")
    print(f"Predictions:  {result.predictions_dir}")
    print(f"Report:       {result.report_path}.json, {result.report_path}.csv")
    print("Seconds:      " + ", ".join(f"{stage} {value:.0f}" for stage, value in result.seconds.items()))
    return 0


def _run_benchmark(args) -> int:
    from gmrseg.benchmarking.rotation import main as rotation_main

    return rotation_main(args.benchmark_args)


def main(argv: list[str] | None = None) -> int:
    """Run the ``gmrseg`` command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("gmrseg: interrupted", file=sys.stderr)
        return 130
    except (InputError, FileNotFoundError, FileExistsError) as error:
        # Input errors carry their own explanation; a traceback would hide it.
        print(f"gmrseg {args.command}: error: {error}", file=sys.stderr)
        return 2
