"""Rotation-robustness benchmark: train on upright scans, test on rotated ones.

``gmrseg benchmark rotation`` (or ``benchmarks/rotation_robustness.py``) runs,
in one output folder:

1. ``data/``: an example dataset (the shipped hippocampus MRI by default, or
   MNI152 tissue classes) with upright training cases and held-out cases.
2. ``test_sets/``: the held-out cases upright, rotated by each angle about
   each world axis, and under uniform random 3D rotations
   (:mod:`gmrseg.benchmarking.rotated_sets`).
3. ``configs/`` and ``runs/``: three models trained on the upright cases with
   the same base config, epochs, patch, optimizer and seed: GMRUNet and the
   dense UNet of the same shape without rotation augmentation, and the dense
   UNet with full 3D rotation augmentation.
4. ``predictions/`` and ``evaluation/``: every model on every test set.
5. ``results.md``, ``results.csv``, ``results.json`` and ``dice_vs_angle.png``.

With ``--repeats N`` the benchmark runs N times with seeds ``seed`` ..
``seed + N - 1``, each run in its own ``seed_S/`` subfolder with the layout
above. The output folder then contains the mean over the runs in the same four
result files, with a per-seed table (:mod:`gmrseg.benchmarking.rotation_repeats`).

The default settings are sized for a 2-core CPU (33 minutes measured with other jobs beside it);
``--full`` switches to the default config and every held-out case for a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from gmrseg.benchmarking.common import (
    MARKER,
    base_config_values,
    hardware_summary,
    predict_and_evaluate,
    prepare_benchmark_dir,
    torch_threads,
    train_with_config,
    write_region_labels,
)
from gmrseg.errors import InputError
from gmrseg.utils.files import save_json_atomic, save_text_atomic

__all__ = ["MODELS", "ModelSpec", "RotationBenchmarkSettings", "WHOLE_STRUCTURE", "build_parser", "main",
           "rescore_rotation_benchmark", "run_rotation_benchmark"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison.

    Attributes:
        key: folder name and results key.
        label: name in tables and plots.
        network: ``gmrseg.networks.factory`` name.
        rotation_augmentation: train with random 3D rotations of the patches.
    """

    key: str
    label: str
    network: str
    rotation_augmentation: bool


MODELS = {
    "gmrunet": ModelSpec("gmrunet", "GMRUNet", "gmrunet", False),
    "unet": ModelSpec("unet", "dense UNet", "unet", False),
    "unet_rotaug": ModelSpec("unet_rotaug", "dense UNet + rotation aug.", "unet", True),
}

# Name of the region that joins every foreground class (the whole hippocampus).
WHOLE_STRUCTURE = "whole"

# Files and folders the benchmark writes; --overwrite removes only these.
_OUTPUTS = ("data", "test_sets", "configs", "runs", "predictions", "evaluation",
            "results.md", "results.csv", "results.json", "dice_vs_angle.png")

_DEFAULT_ANGLES = (15.0, 30.0, 45.0, 90.0, 180.0)

# CPU defaults: 8 held-out cases in 17 test sets (144 scans per model) and 16 epochs of
# the quick preset per model at batch 2, without its time limit. Windows overlap by a quarter, half
# as many windows as 0.5 on these volumes. NOTE: measured at 9 minutes on a 2-core CPU
# with AVX-512, but at 33 minutes, over the 30-minute goal, on an older 2-core CPU beside
# other jobs. Overlap 0.5 scored GMRUNet 2 to 4 points higher (docs/benchmarks.md).
_CPU_DEFAULTS = {"base_config": "quick", "test_cases": 8, "random_per_case": 2, "device": "auto", "epochs": 16,
                 "batch_size": 2, "overlap": 0.25}
# --full: the default (nnU-Net-like) config, every held-out case, more random rotations.
_FULL_DEFAULTS = {"base_config": "default", "test_cases": None, "random_per_case": 4, "device": "auto",
                  "epochs": 100, "batch_size": None, "overlap": 0.5}


@dataclass
class RotationBenchmarkSettings:
    """Everything that defines one benchmark run (stored in ``results.json``).

    Attributes:
        out: output folder.
        dataset: ``hippocampus`` or ``mni152``.
        cases: total example cases, training plus held-out (None: all).
        test_fraction: fraction of cases held out.
        test_cases: held-out cases used in each test set (None: all).
        angles_deg: rotation angles about each axis, in degrees.
        random_per_case: random 3D rotations per held-out case.
        base_config: preset name or YAML file every model starts from.
        epochs: training epochs per model (None: the base config's).
        iterations_per_epoch: optimizer steps per epoch (None: the base config's).
        batch_size: patches per optimizer step (None: the base config's).
        patch_size: training patch and window size in voxels (None: the base config's).
        features: channels per UNet level (None: the base config's).
        kernel_sizes: kernel size per UNet level (None: the base config's).
        models: keys of :data:`MODELS` to run, in table order.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads (None: torch's default).
        tta: test-time augmentation for every model (``none``, ``flip``,
            ``full``) or ``default`` for the predictor's per-network choice.
        overlap: sliding-window overlap in [0, 1).
        seed: seed of the data split, the random rotations and training (of the first run).
        repeats: number of runs, with seeds ``seed`` .. ``seed + repeats - 1``, averaged.
        overwrite: replace a previous benchmark in ``out``.
        resume: continue an interrupted ``repeats`` run in ``out`` with the same
            settings: finished runs are kept, the others run again from the start.
        full: the ``--full`` preset was requested.
        command: command line, recorded with the results.
    """

    out: Path
    dataset: str = "hippocampus"
    cases: int | None = None
    test_fraction: float = 0.2
    test_cases: int | None = 8
    angles_deg: list[float] = field(default_factory=lambda: list(_DEFAULT_ANGLES))
    random_per_case: int = 2
    base_config: str = "quick"
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    batch_size: int | None = None
    patch_size: list[int] | None = None
    features: list[int] | None = None
    kernel_sizes: list[int] | None = None
    models: list[str] = field(default_factory=lambda: list(MODELS))
    device: str = "auto"
    threads: int | None = None
    tta: str = "none"
    overlap: float = 0.25
    seed: int = 0
    repeats: int = 1
    overwrite: bool = False
    resume: bool = False
    full: bool = False
    command: str = ""


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``gmrseg benchmark rotation``."""
    parser = argparse.ArgumentParser(
        prog="gmrseg benchmark rotation",
        description="Train GMRUNet, the dense UNet of the same shape, and the dense UNet with rotation "
        "augmentation on upright scans; test all three on the held-out scans upright, rotated about each axis, "
        "and under random 3D rotations. Writes results.md, results.csv, results.json and dice_vs_angle.png.",
    )
    parser.add_argument("--out", type=Path, default=Path("gmrseg_rotation_benchmark"),
                        help="output folder (default: ./gmrseg_rotation_benchmark)")
    parser.add_argument("--dataset", choices=("hippocampus", "mni152"), default="hippocampus",
                        help="example data: shipped hippocampus MRI or MNI152 tissue classes (needs nilearn) "
                        "(default: hippocampus)")
    parser.add_argument("--full", action="store_true",
                        help="larger settings for a GPU: default config, 100 epochs, every held-out case, "
                        "4 random rotations per case (options given explicitly still win)")
    parser.add_argument("--cases", type=int, default=None,
                        help="total example cases, training plus held-out (default: all 80 hippocampus cases, "
                        "20 MNI152 cases)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="fraction of the cases held out for testing (default: 0.2)")
    parser.add_argument("--test-cases", type=int, default=None,
                        help="held-out cases in each test set (default: 8; --full: all)")
    parser.add_argument("--angles", type=float, nargs="+", default=list(_DEFAULT_ANGLES), metavar="DEGREES",
                        help="rotation angles about each of the x, y and z axes, in degrees "
                        "(default: 15 30 45 90 180)")
    parser.add_argument("--random-rotations", type=int, default=None, metavar="N",
                        help="uniform random 3D rotations per held-out case; 0 skips the random set "
                        "(default: 2; --full: 4)")
    parser.add_argument("--config", dest="base_config", default=None,
                        help="preset name or YAML file that every model starts from; the benchmark sets the "
                        "network name and rotation augmentation (default: quick; --full: default)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs per model, the same for all (default: 16; --full: 100)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None,
                        help="optimizer steps per epoch (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="patches per optimizer step (default: 2; --full: the config's)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="training patch and sliding-window size in voxels (default: the config's)")
    parser.add_argument("--features", type=int, nargs="+", default=None,
                        help="channels per UNet level, the same for every model (default: the config's)")
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=None,
                        help="odd kernel size per UNet level (default: the config's)")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS),
                        help="models to train and test, in table order (default: all three)")
    parser.add_argument("--device", default=None,
                        help="device: auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (torch.set_num_threads); 1 is much faster on a CPU shared with "
                        "other jobs (default: torch's choice, usually one per core)")
    parser.add_argument("--tta", choices=("none", "flip", "full", "default"), default="none",
                        help="test-time augmentation for every model; 'default' lets the predictor choose per "
                        "network (flips for dense networks) (default: none, to compare the networks alone)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default: 0.25; --full: 0.5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the case split, the random rotations and training (default: 0)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N",
                        help="run the benchmark N times with seeds SEED .. SEED+N-1, each in OUT/seed_S, and write "
                        "the mean and spread over the runs into OUT; N times the run time (default: 1, a single "
                        "run written into OUT itself)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier benchmark in --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted --repeats run in --out, given the same options: runs with "
                        "results are kept, the unfinished one starts again")
    parser.add_argument("--rescore", action="store_true",
                        help="only evaluate the predictions of a finished benchmark in --out again and rewrite its "
                        "tables and plot (nothing is trained or predicted)")
    return parser


def settings_from_args(args: argparse.Namespace, argv: Sequence[str]) -> RotationBenchmarkSettings:
    """Resolve parsed options and the ``--full`` preset into settings; options given explicitly win."""
    defaults = dict(_FULL_DEFAULTS if args.full else _CPU_DEFAULTS)

    def pick(value: Any, key: str, fallback: Any = None) -> Any:
        return value if value is not None else defaults.get(key, fallback)

    return RotationBenchmarkSettings(
        out=args.out,
        dataset=args.dataset,
        cases=args.cases,
        test_fraction=args.test_fraction,
        test_cases=args.test_cases if args.test_cases is not None else defaults["test_cases"],
        angles_deg=[float(angle) for angle in args.angles],
        random_per_case=pick(args.random_rotations, "random_per_case"),
        base_config=pick(args.base_config, "base_config"),
        epochs=pick(args.epochs, "epochs"),
        iterations_per_epoch=args.iterations_per_epoch,
        batch_size=pick(args.batch_size, "batch_size"),
        patch_size=list(args.patch_size) if args.patch_size else None,
        features=args.features,
        kernel_sizes=args.kernel_sizes,
        models=list(dict.fromkeys(args.models)),
        device=pick(args.device, "device"),
        threads=args.threads,
        tta=args.tta,
        overlap=pick(args.overlap, "overlap"),
        seed=args.seed,
        repeats=args.repeats,
        overwrite=args.overwrite,
        resume=args.resume,
        full=args.full,
        command=" ".join(["gmrseg", "benchmark", "rotation", *argv]),
    )


def _check_settings(settings: RotationBenchmarkSettings) -> None:
    """Reject impossible settings before anything is written."""
    def positive(name: str, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")

    positive("--cases", settings.cases)
    positive("--test-cases", settings.test_cases)
    positive("--epochs", settings.epochs)
    positive("--iterations-per-epoch", settings.iterations_per_epoch)
    positive("--batch-size", settings.batch_size)
    positive("--repeats", settings.repeats)
    if settings.resume and settings.overwrite:
        raise InputError("--resume keeps the finished runs and --overwrite removes them; pass one of the two")
    if settings.resume and settings.repeats == 1:
        raise InputError("--resume continues an interrupted --repeats run (N > 1); a single run starts again "
                         "with --overwrite")
    if settings.random_per_case < 0:
        raise InputError(f"--random-rotations must be 0 or more, got {settings.random_per_case}")
    if not 0.0 <= settings.overlap < 1.0:
        raise InputError(f"--overlap must lie in [0, 1), got {settings.overlap}")
    if not settings.models:
        raise InputError(f"--models needs at least one of {', '.join(MODELS)}")
    unknown = [key for key in settings.models if key not in MODELS]
    if unknown:
        raise InputError(f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(MODELS)}")
    if settings.features is not None and settings.kernel_sizes is not None:
        if len(settings.features) != len(settings.kernel_sizes):
            raise InputError(f"--features ({len(settings.features)} levels) and --kernel-sizes "
                             f"({len(settings.kernel_sizes)} levels) must have the same length")
    if settings.kernel_sizes is not None and any(size < 1 or size % 2 == 0 for size in settings.kernel_sizes):
        raise InputError(f"--kernel-sizes must be odd and positive (GMR rings need a centre voxel), "
                         f"got {settings.kernel_sizes}")
    if settings.features is not None and any(size < 1 for size in settings.features):
        raise InputError(f"--features must be positive, got {settings.features}")


def _train_model(settings: RotationBenchmarkSettings, spec: ModelSpec, data_dir: Path) -> dict[str, Any]:
    values = base_config_values(
        settings.base_config, network=spec.network, features=settings.features,
        kernel_sizes=settings.kernel_sizes, epochs=settings.epochs,
        iterations_per_epoch=settings.iterations_per_epoch, patch_size=settings.patch_size, seed=settings.seed,
    )
    # Validate once, after the last epoch, so every model is tested with its final weights
    # and no time goes to intermediate validations.
    values["validation"]["interval"] = values["training"]["epochs"]
    if settings.batch_size is not None:
        values["data"]["batch_size"] = settings.batch_size
    values["augmentation"]["rotation"] = spec.rotation_augmentation
    if spec.rotation_augmentation:
        values["augmentation"]["rotation_range_deg"] = 180.0

    logger.info("Training %s (%s, rotation augmentation %s)", spec.label, spec.network,
                "on" if spec.rotation_augmentation else "off")
    trained = train_with_config(values, settings.out / "configs" / f"{spec.key}.yaml", data_dir,
                                settings.out / "runs" / spec.key, device=settings.device)
    logger.info("Trained %s in %.0f s: best validation Dice %s at epoch %s", spec.label,
                trained["training_seconds"], trained["best_validation_dice"], trained["best_epoch"])
    return {"key": spec.key, "label": spec.label, "network": spec.network,
            "rotation_augmentation": spec.rotation_augmentation, **trained}


def _region_json(out: Path, labels: dict[str, int]) -> Path | None:
    """Write the whole-structure region (union of every foreground class) when there are several classes."""
    foreground = sorted(value for value in labels.values() if value != 0)
    if len(foreground) < 2:
        return None
    return write_region_labels(out / "evaluation" / "regions.json", {WHOLE_STRUCTURE: foreground})


def _test_model(settings: RotationBenchmarkSettings, model: dict[str, Any], test_sets: dict[str, Path],
                data_dir: Path, region_json: Path | None) -> dict[str, dict[str, Any]]:
    """Predict and evaluate every test set; return the scores per set."""
    scores = {}
    for name, folder in test_sets.items():
        scores[name] = predict_and_evaluate(
            model["run_dir"], folder / "imagesTs", folder / "labelsTs",
            settings.out / "predictions" / model["key"] / name, settings.out / "evaluation" / model["key"] / name,
            dataset_json=data_dir / "dataset.json", device=settings.device,
            tta=None if settings.tta == "default" else settings.tta, overlap=settings.overlap,
            region_json=region_json,
        )
        logger.info("%s on %s: mean Dice %.3f over %d case(s)", model["label"], name, scores[name]["mean"],
                    scores[name]["cases"])
    return scores


def _dice_entry(scores: dict[str, Any]) -> dict[str, Any]:
    return {"per_class": scores["per_class"], "mean": scores["mean"], "regions": scores.get("regions", {})}


def run_rotation_benchmark(settings: RotationBenchmarkSettings) -> dict[str, Any]:
    """Run the whole benchmark and write its results into ``settings.out``.

    Returns:
        The results dict written to ``results.json`` (see
        :mod:`gmrseg.benchmarking.rotation_report` for its layout).

    Raises:
        InputError: invalid settings, or a non-empty ``out`` that is not a benchmark folder.
        FileExistsError: ``out`` is not empty and ``overwrite`` is False.
    """
    with torch_threads(settings.threads):
        if settings.repeats > 1:
            return _run_repeats(settings)
        return _run(settings)


def _earlier_repeats(out: Path) -> list[str]:
    """Return the run subfolders of an earlier ``--repeats`` benchmark in ``out``, read from its marker file."""
    from gmrseg.benchmarking.rotation_repeats import repeat_folder

    marker = Path(out) / MARKER
    if not marker.is_file():
        return []
    try:
        settings = json.loads(marker.read_text(encoding="utf-8")).get("settings", {})
        seed, repeats = int(settings.get("seed", 0)), int(settings.get("repeats", 1))
    except (ValueError, TypeError, AttributeError):
        return []
    return [repeat_folder(seed + index) for index in range(repeats)] if repeats > 1 else []


def _run_repeats(settings: RotationBenchmarkSettings) -> dict[str, Any]:
    """Run the benchmark once per seed, each in its own subfolder, then write the averages into ``out``."""
    from gmrseg.benchmarking.rotation_repeats import average_results, repeat_folder
    from gmrseg.benchmarking.rotation_report import check_goal

    _check_settings(settings)
    out = Path(settings.out)
    seeds = [settings.seed + index for index in range(settings.repeats)]
    folders = [repeat_folder(seed) for seed in seeds]
    stored_settings = {key: (str(value) if isinstance(value, Path) else value)
                       for key, value in asdict(settings).items()}
    if settings.resume:
        _check_resumable(out, stored_settings)
    else:
        prepare_benchmark_dir(out, overwrite=settings.overwrite,
                              outputs=(*_OUTPUTS, *folders, *_earlier_repeats(out)),
                              marker={"benchmark": "rotation", "settings": stored_settings})

    runs = []
    for seed, folder in zip(seeds, folders):
        finished = out / folder / "results.json"
        if settings.resume and finished.is_file():
            logger.info("Rotation benchmark run %d of %d (seed %d): keeping the finished run in %s", len(runs) + 1,
                        len(seeds), seed, out / folder)
            runs.append(json.loads(finished.read_text(encoding="utf-8")))
            continue
        if settings.resume and (out / folder).exists():
            logger.info("Removing the unfinished run in %s", out / folder)
            shutil.rmtree(out / folder)
        logger.info("Rotation benchmark run %d of %d (seed %d) into %s", len(runs) + 1, len(seeds), seed, out / folder)
        runs.append(_run(replace(settings, out=out / folder, seed=seed, repeats=1, overwrite=False, resume=False)))

    results = average_results(runs, folders)
    results["command"] = settings.command
    results["settings"].update(out=str(out), repeats=settings.repeats)
    results["goal"] = check_goal(results)
    _write_outputs(results, out)
    logger.info("Rotation benchmark: %d runs finished in %.0f s. Mean results in %s", len(runs),
                results["total_seconds"], out)
    return results


# Settings that may differ when a run is resumed: they change neither the data nor the training.
_RESUME_FREE = ("out", "threads", "overwrite", "resume", "command")


def _check_resumable(out: Path, stored_settings: dict[str, Any]) -> None:
    """Raise ``InputError`` unless ``out`` contains an earlier ``--repeats`` run with the same settings."""
    marker = out / MARKER
    if not marker.is_file():
        raise InputError(f"--resume needs the folder of an interrupted --repeats run, and {out} has no {MARKER}; "
                         "start a new run without --resume")
    earlier = json.loads(marker.read_text(encoding="utf-8")).get("settings", {})
    changed = [key for key in stored_settings
               if key not in _RESUME_FREE and json.loads(json.dumps(stored_settings[key])) != earlier.get(key)]
    if changed:
        details = "; ".join(f"{key}: {earlier.get(key)!r} then, {stored_settings[key]!r} now" for key in changed)
        raise InputError(f"--resume: the options differ from the interrupted run in {out} ({details}). "
                         "Pass the same options, or start again with --overwrite")


def _run(settings: RotationBenchmarkSettings) -> dict[str, Any]:
    from gmrseg.benchmarking.rotated_sets import build_rotation_settings, write_rotated_test_sets
    from gmrseg.benchmarking.rotation_report import check_goal
    from gmrseg.data.dataset import load_dataset
    from gmrseg.data.example_data import make_example_dataset

    _check_settings(settings)
    rotation_settings = build_rotation_settings(settings.angles_deg, random_rotations=settings.random_per_case > 0)
    settings.out = Path(settings.out)
    hardware = hardware_summary(settings.device)
    stored_settings = {key: (str(value) if isinstance(value, Path) else value)
                       for key, value in asdict(settings).items()}
    prepare_benchmark_dir(settings.out, overwrite=settings.overwrite,
                          outputs=(*_OUTPUTS, *_earlier_repeats(settings.out)),
                          marker={"benchmark": "rotation", "settings": stored_settings})
    started = time.perf_counter()

    # Data: upright training cases, upright held-out cases, then the rotated test sets.
    data_dir = make_example_dataset(settings.out / "data", dataset=settings.dataset, cases=settings.cases,
                                    test_fraction=settings.test_fraction, seed=settings.seed)
    spec = load_dataset(data_dir)
    held_out = sorted(spec.test, key=lambda case: case.case_id)
    if settings.test_cases is not None:
        held_out = held_out[: settings.test_cases]
    test_sets = write_rotated_test_sets(held_out, rotation_settings, settings.out / "test_sets",
                                        file_ending=spec.file_ending, random_per_case=max(settings.random_per_case, 1),
                                        seed=settings.seed)
    case_counts = {name: len(list((folder / "labelsTs").iterdir())) for name, folder in test_sets.items()}
    region_json = _region_json(settings.out, spec.labels)

    # Models: train each, then predict and evaluate every test set.
    models = []
    dice = {}
    for key in settings.models:
        model = _train_model(settings, MODELS[key], data_dir)
        scores = _test_model(settings, model, test_sets, data_dir, region_json)
        seconds = sum(entry["seconds"] for entry in scores.values())
        model["inference_seconds"] = seconds
        model["inference_seconds_per_case"] = seconds / max(sum(entry["cases"] for entry in scores.values()), 1)
        dice[key] = {name: _dice_entry(entry) for name, entry in scores.items()}
        models.append(model)

    stored_settings["patch_size"] = _resolved_patch_size(models)
    stored_settings["epochs_label"] = _epochs_label(models)
    results = {
        "benchmark": "rotation",
        "command": settings.command,
        "settings": stored_settings,
        "hardware": hardware,
        "num_training_cases": len(spec.training),
        "num_test_cases": len(held_out),
        "classes": [name for name, value in sorted(spec.labels.items(), key=lambda item: item[1]) if value != 0],
        "sets": [{**setting.to_dict(), "cases": case_counts[setting.name]} for setting in rotation_settings],
        "models": models,
        "dice": dice,
        "total_seconds": time.perf_counter() - started,
    }
    results["goal"] = check_goal(results)

    _write_outputs(results, settings.out)
    logger.info("Rotation benchmark finished in %.0f s; results in %s", results["total_seconds"], settings.out)
    return results


def _write_outputs(results: dict[str, Any], out: Path) -> None:
    """Write results.md, results.csv, dice_vs_angle.png and results.json (each atomically)."""
    from gmrseg.benchmarking.rotation_report import format_csv, format_markdown, plot_dice_against_angle

    save_text_atomic(out / "results.md", format_markdown(results))
    save_text_atomic(out / "results.csv", format_csv(results))
    plot_dice_against_angle(results, out / "dice_vs_angle.png")
    save_json_atomic(out / "results.json", results)


def rescore_rotation_benchmark(out: str | Path) -> dict[str, Any]:
    """Evaluate a finished benchmark's predictions again and rewrite its tables and plot.

    Nothing is trained or predicted: the predictions in ``out/predictions``
    are scored against the test sets in ``out/test_sets`` with the current
    ``gmrseg evaluate``, per class and for the whole structure.

    Raises:
        FileNotFoundError: ``out`` has no results.json (the benchmark did not finish).
    """
    from gmrseg.benchmarking.common import evaluate_folder
    from gmrseg.benchmarking.rotation_report import check_goal
    from gmrseg.data.dataset import load_dataset

    out = Path(out)
    results_path = out / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} not found; --rescore needs the folder of a finished benchmark run")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    if "repeats" in results:
        return _rescore_repeats(out, results)
    data_dir = out / "data"
    region_json = _region_json(out, load_dataset(data_dir).labels)

    for model in results["models"]:
        for entry in results["sets"]:
            name = entry["name"]
            scores = evaluate_folder(out / "predictions" / model["key"] / name, out / "test_sets" / name / "labelsTs",
                                     out / "evaluation" / model["key"] / name, dataset_json=data_dir / "dataset.json",
                                     region_json=region_json)
            results["dice"][model["key"]][name] = _dice_entry(scores)
    results["goal"] = check_goal(results)
    _write_outputs(results, out)
    logger.info("Rescored %s", out)
    return results


def _rescore_repeats(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Rescore every run of a ``--repeats`` benchmark, then average them again."""
    from gmrseg.benchmarking.rotation_repeats import average_results
    from gmrseg.benchmarking.rotation_report import check_goal

    folders = results["repeats"]["folders"]
    runs = [rescore_rotation_benchmark(out / folder) for folder in folders]
    averaged = average_results(runs, folders)
    averaged["command"] = results["command"]
    averaged["settings"].update(out=str(out), repeats=len(runs))
    averaged["goal"] = check_goal(averaged)
    _write_outputs(averaged, out)
    logger.info("Rescored %d runs in %s", len(runs), out)
    return averaged


def _resolved_patch_size(models: list[dict[str, Any]]) -> list[int]:
    plans = json.loads((Path(models[0]["run_dir"]) / "plans.json").read_text(encoding="utf-8"))
    return list(plans["patch_size"])


def _epochs_label(models: list[dict[str, Any]]) -> str:
    first = models[0]
    epochs, iterations = first["epochs"], first["iterations_per_epoch"]
    return f"{epochs} epoch{'s' if epochs != 1 else ''} of {iterations} iteration{'s' if iterations != 1 else ''}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; print the Markdown table; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    settings = settings_from_args(args, argv)
    try:
        if args.rescore and args.resume:
            raise InputError("--rescore scores a finished benchmark and --resume finishes an interrupted one; "
                             "pass one of the two")
        results = rescore_rotation_benchmark(settings.out) if args.rescore else run_rotation_benchmark(settings)
    except (InputError, FileNotFoundError, FileExistsError) as error:
        print(f"gmrseg benchmark rotation: error: {error}", file=sys.stderr)
        return 2

    from gmrseg.benchmarking.rotation_report import format_markdown

    print(format_markdown(results))
    print(f"Results: {settings.out / 'results.md'}, results.csv, results.json, dice_vs_angle.png")
    return 0
