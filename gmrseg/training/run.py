"""``gmrseg train``: validate a dataset, plan, and train one fold or all five.

Stages, in order:

1. load the config;
2. check the dataset folder and stop with the report when it has problems;
3. plan preprocessing and write the run folder's shared files;
4. split the cases into folds;
5. preprocess the cases and train each requested fold with ``Trainer``.

Under ``torchrun`` every process runs the same stages. Rank 0 writes the run
files and logs. Every process fills the shared preprocessed cache, whose
atomic writes keep concurrent writers from clashing.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gmrseg.errors import InputError
from gmrseg.training.config import Config, load_config
from gmrseg.training.distributed import (
    DistributedContext,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from gmrseg.training.rng import seed_everything
from gmrseg.training.run_folder import build_plans, check_config_matches, read_plans, write_run_files
from gmrseg.training.splits import NUM_FOLDS, load_or_create_splits

__all__ = ["parse_folds", "parse_time_limit", "resolve_patch_size", "resolve_rotation", "train"]

logger = logging.getLogger(__name__)


def parse_folds(fold: str | int, num_folds: int = NUM_FOLDS) -> list[int]:
    """Turn ``--fold`` (``0``..``4`` or ``all``) into a list of fold indices."""
    text = str(fold).strip().lower()
    if text == "all":
        return list(range(num_folds))
    if text.isdigit() and int(text) < num_folds:
        return [int(text)]
    valid = ", ".join(str(index) for index in range(num_folds))
    raise InputError(f"--fold {fold!r} is invalid; use one of {valid} or 'all'")


def parse_time_limit(minutes: float) -> float | None:
    """Return ``--time-limit`` as ``training.time_limit_minutes``: minutes, or None for 0 (no limit).

    Raises:
        InputError: ``minutes`` is not a finite number >= 0.
    """
    is_number = isinstance(minutes, (int, float)) and not isinstance(minutes, bool)
    if not is_number or not math.isfinite(minutes) or minutes < 0:
        raise InputError(f"--time-limit must be a finite number of minutes >= 0 (0: no limit), got {minutes!r}")
    return float(minutes) if minutes > 0 else None


def resolve_rotation(setting: str | bool, equivariant: bool) -> bool:
    """Resolve ``augmentation.rotation``: ``"auto"`` rotates only non-equivariant networks."""
    if setting == "auto":
        return not equivariant
    return bool(setting)


def resolve_patch_size(setting: list[int] | str, median_shape: list[float], size_divisor: int,
                       max_patch_size: list[int]) -> list[int]:
    """Return the patch size: ``setting`` itself, or for ``"auto"`` the median
    preprocessed shape rounded up to a multiple of ``size_divisor`` and capped
    at ``max_patch_size`` (rounded down to a multiple, at least one multiple)."""
    if setting != "auto":
        return [int(size) for size in setting]
    sizes = []
    for median, cap in zip(median_shape, max_patch_size):
        rounded = -(-int(math.ceil(median)) // size_divisor) * size_divisor
        capped = max(cap // size_divisor, 1) * size_divisor
        sizes.append(max(min(rounded, capped), size_divisor))
    return sizes


def _check_dataset(dataset_dir: Path) -> None:
    """Run the dataset validator; raise with its full report when the dataset has problems."""
    from gmrseg.data.validation import validate_dataset

    report = validate_dataset(dataset_dir)
    for warning in report.warnings:
        logger.warning("%s", warning)
    if not report.ok:
        lines = "\n".join(f"  {problem}" for problem in report.problems)
        raise InputError(
            f"dataset {dataset_dir} failed validation; fix these problems and run again "
            f"(gmrseg validate {dataset_dir} prints the same report):\n{lines}\n{report.summary()}"
        )


def _build_network(config: Config, in_channels: int, out_channels: int,
                   patch_size: list[int] | None = None) -> tuple[torch.nn.Module, bool]:
    """Build the configured network; check ``patch_size`` against its ``size_divisor`` when given."""
    from gmrseg.networks.factory import build_network, is_equivariant

    name = config.network.name
    try:
        network = build_network(name, in_channels, out_channels, **config.network.kwargs)
    except (InputError, TypeError) as error:
        raise InputError(f"config keys network.name / network.kwargs: {error}") from error

    divisor = int(getattr(network, "size_divisor", 1))
    if patch_size is not None and any(size % divisor for size in patch_size):
        suggestion = [-(-size // divisor) * divisor for size in patch_size]
        raise InputError(
            f"config key data.patch_size: {patch_size} must be multiples of the network's size_divisor "
            f"{divisor} ({name} with {config.network.kwargs}); for example {suggestion}"
        )
    return network, bool(is_equivariant(name))


def _window_margin(config: Config, plan_dict: dict) -> list[int]:
    """Zero margin around a scan at prediction, in voxels per axis: a quarter patch after field-of-view training.

    Field-of-view augmentation trains on patches that often reach past the
    edge of the data. A margin at prediction lets every scan, upright or
    rotated, show its edge inside the windows as the training patches did.
    """
    from gmrseg.data.preprocessing import PreprocessingPlan, zero_means_no_data

    if not (config.augmentation.field_of_view and zero_means_no_data(PreprocessingPlan.from_dict(plan_dict))):
        return [0] * len(config.data.patch_size)
    return [int(size) // 4 for size in config.data.patch_size]


def _plan(config: Config, spec, run_dir: Path, context: DistributedContext) -> tuple[dict, dict]:
    """Return ``(preprocessing plan dict, fingerprint)``, reusing ``run_dir/plans.json`` when present."""
    from gmrseg.data.preprocessing import plan_preprocessing

    existing = read_plans(run_dir)
    if existing is not None and existing.get("preprocessing") is not None:
        return existing["preprocessing"], existing.get("fingerprint", {})

    plan_dict, fingerprint = None, None
    if context.is_main:
        start = time.perf_counter()
        plan, fingerprint = plan_preprocessing(spec, isotropic=config.preprocessing.isotropic,
                                               target_spacing=config.preprocessing.target_spacing,
                                               orientation=config.preprocessing.orientation)
        plan_dict = plan.to_dict()
        logger.info("Planned preprocessing in %.1f s: spacing %s mm, orientation %s", time.perf_counter() - start,
                    plan_dict["target_spacing"], plan_dict["orientation"])
    return broadcast_object((plan_dict, fingerprint), context)


def _flip_axes(labels: dict[str, int], merged: bool) -> tuple[int, ...]:
    """Return the axes to flip: not x (left-right in RAS) when lateral labels stay separate classes."""
    from gmrseg.data.lateral import detect_label_pairs

    if merged:
        return (0, 1, 2)
    try:
        lateral = bool(detect_label_pairs(labels))
    except InputError:
        lateral = True  # a lone left or right label is lateral too
    return (1, 2) if lateral else (0, 1, 2)


def _train_fold(
    fold: int,
    *,
    config: Config,
    plans: dict[str, Any],
    spec,
    plan,
    label_map,
    split: dict[str, list[str]],
    run_dir: Path,
    context: DistributedContext,
    resume: bool,
    quiet: bool,
) -> dict[str, Any]:
    from gmrseg.data.preprocessing import zero_means_no_data
    from gmrseg.data.transforms import build_datasets
    from gmrseg.training.trainer import Trainer

    fold_dir = run_dir / f"fold_{fold}"
    last = fold_dir / "checkpoint_last.pt"
    if resume and not last.is_file():
        logger.info("Fold %d has no checkpoint_last.pt; starting it from scratch", fold)
        resume = False
    if not resume and last.is_file():
        raise FileExistsError(
            f"{last} exists; pass --resume to continue this fold, or train into a new run folder with -o"
        )

    # Same seed for every fold and process, so all processes build identical weights.
    seed_everything(config.training.seed)
    network, equivariant = _build_network(config, plans["in_channels"], len(plans["network_labels"]),
                                          config.data.patch_size)
    class_names = [name for name, _ in sorted(plans["network_labels"].items(), key=lambda item: item[1])]

    # Datasets: preprocessed once into the cache, random patches with the configured augmentation.
    augmentation = config.augmentation
    rotation = resolve_rotation(augmentation.rotation, equivariant)
    field_of_view = augmentation.field_of_view and zero_means_no_data(plan)
    if augmentation.field_of_view and not field_of_view:
        logger.info("Field-of-view augmentation is off: it needs zscore_nonzero normalization on every channel, "
                    "where 0 marks voxels without data (normalization: %s).",
                    ", ".join(entry["scheme"] for entry in plan.normalization))
    by_id = {case.case_id: case for case in spec.training}
    val_ids = split["val"][: config.validation.max_cases] if config.validation.max_cases else split["val"]
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / "preprocessed"
    train_dataset, val_dataset = build_datasets(
        [by_id[case_id] for case_id in split["train"]], [by_id[case_id] for case_id in val_ids], plan, cache_dir,
        patch_size=config.data.patch_size, num_classes=len(class_names), label_values=spec.labels,
        label_transform=label_map.merge,
        augmentation={
            "foreground_fraction": config.data.foreground_fraction, "rotation": rotation,
            "rotation_range_deg": augmentation.rotation_range_deg, "flip": augmentation.flip,
            "flip_axes": _flip_axes(spec.labels, merged=bool(label_map.pairs)), "scale": augmentation.scale,
            "scale_range": augmentation.scale_range, "intensity": augmentation.intensity,
            "field_of_view": field_of_view,
            "probability": augmentation.probability,
        },
        # Bars only on a terminal: in a log file they would be one line per update.
        seed=config.training.seed, progress=not quiet and context.is_main and sys.stderr.isatty(),
    )
    limited = ""
    if len(val_ids) < len(split["val"]):
        limited = f" (validation.max_cases; the fold has {len(split['val'])})"
    logger.info("Fold %d: %d training and %d validation cases%s, patch %s, rotation augmentation %s", fold,
                len(split["train"]), len(val_ids), limited, config.data.patch_size, "on" if rotation else "off")

    trainer = Trainer(config, network, train_dataset, val_dataset, class_names, fold_dir=fold_dir, context=context,
                      quiet=quiet, network_info=plans["network"], window_margin=plans.get("window_margin"))
    summary = trainer.fit(resume=resume)
    summary["fold_dir"] = str(fold_dir)
    return summary


def train(
    dataset_dir: str | Path,
    *,
    config_path: str | Path | None = None,
    run_dir: str | Path,
    fold: str | int = "0",
    resume: bool = False,
    device: str = "auto",
    epochs: int | None = None,
    time_limit_minutes: float | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train one fold (or all five) of a dataset folder into a run folder.

    Args:
        dataset_dir: nnU-Net v2 or Decathlon dataset folder.
        config_path: YAML config file, preset name (``quick``, ``default``,
            ``unet_baseline``) or ``None`` for the defaults.
        run_dir: run folder; created if missing.
        fold: ``"0"``..``"4"`` or ``"all"``.
        resume: continue each fold from its ``checkpoint_last.pt`` (folds
            without one start from scratch).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        epochs: overrides ``training.epochs``.
        time_limit_minutes: overrides ``training.time_limit_minutes`` (per fold); 0 removes
            the limit.
        quiet: no progress bars and no epoch lines on the terminal.

    Returns:
        ``{"run_dir": str, "folds": {fold: summary}}``, where each summary has
        ``epochs``, ``best_dice_mean``, ``best_epoch``, ``last`` (the final
        metrics row) and ``fold_dir``.

    Raises:
        InputError: invalid config, dataset, fold or device, or a run folder
            created with another config.
        FileExistsError: a fold already has a checkpoint and ``resume`` is False.
    """
    dataset_dir = Path(dataset_dir)
    run_dir = Path(run_dir)
    config = load_config(config_path)
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise InputError(f"--epochs must be a positive integer, got {epochs!r}")
        config.training.epochs = epochs
        if config.schedule.warmup_epochs >= epochs:
            # A run that is all warm-up never reaches the configured learning rate.
            logger.warning("--epochs %d is not larger than schedule.warmup_epochs (%d), so the warm-up is "
                           "shortened to %d epoch(s)", epochs, config.schedule.warmup_epochs, epochs - 1)
            config.schedule.warmup_epochs = epochs - 1
    if time_limit_minutes is not None:
        config.training.time_limit_minutes = parse_time_limit(time_limit_minutes)
    folds = parse_folds(fold)
    if resume and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"cannot resume: {run_dir / 'config.yaml'} not found; is {run_dir} a run folder?")
    check_config_matches(run_dir, config)
    if not resume:
        for index in folds:
            last = run_dir / f"fold_{index}" / "checkpoint_last.pt"
            if last.is_file():
                raise FileExistsError(f"{last} exists; pass --resume to continue fold {index}, or train into a new "
                                      "run folder with -o")

    context = init_distributed(device)
    package_logger = logging.getLogger("gmrseg")
    saved_level = package_logger.level
    if not context.is_main:
        # Ranks other than 0 report warnings and errors only, so each message appears once.
        package_logger.setLevel(logging.WARNING)
    try:
        return _train(dataset_dir, config, run_dir, folds, context, resume=resume, quiet=quiet)
    finally:
        package_logger.setLevel(saved_level)
        shutdown_distributed()


def _train(dataset_dir: Path, config: Config, run_dir: Path, folds: list[int], context: DistributedContext, *,
           resume: bool, quiet: bool) -> dict[str, Any]:
    from gmrseg.data.dataset import load_dataset
    from gmrseg.data.lateral import build_lateral_label_map
    from gmrseg.data.preprocessing import PreprocessingPlan

    # Dataset: validate first, so no time is spent on a folder that cannot train.
    if context.is_main:
        _check_dataset(dataset_dir)
    barrier(context)
    spec = load_dataset(dataset_dir)

    # Network classes: lateral pairs are merged only for equivariant networks,
    # which cannot tell left from right.
    probe, equivariant = _build_network(config, spec.num_channels, 2)
    label_map = build_lateral_label_map(spec.labels, config.data.label_pairs if equivariant else [])

    # Plans: preprocessing, then the patch size that depends on the preprocessed shapes.
    plan_dict, fingerprint = _plan(config, spec, run_dir, context)
    config = copy.deepcopy(config)
    config.data.patch_size = resolve_patch_size(
        config.data.patch_size, fingerprint.get("median_resampled_shape", [128, 128, 128]),
        int(getattr(probe, "size_divisor", 1)), config.data.max_patch_size,
    )
    del probe
    plans = build_plans(
        plan_dict=plan_dict, fingerprint=fingerprint, label_map=label_map.to_dict(), in_channels=spec.num_channels,
        channel_names=spec.channel_names, file_ending=spec.file_ending, patch_size=config.data.patch_size,
        network_name=config.network.name, network_kwargs=dict(config.network.kwargs), equivariant=equivariant,
        window_margin=_window_margin(config, plan_dict),
    )
    if context.is_main:
        write_run_files(run_dir, config, spec.dataset_json, plans)
    barrier(context)

    # Folds: splits.json is created once and reused by later calls.
    case_ids = [case.case_id for case in spec.training]
    splits = load_or_create_splits(run_dir / "splits.json", case_ids, config.training.seed, write=context.is_main)
    if len(folds) == NUM_FOLDS and len(splits) < NUM_FOLDS:
        folds = list(range(len(splits)))
    for index in folds:
        if index >= len(splits):
            raise InputError(f"fold {index} does not exist: {run_dir / 'splits.json'} has {len(splits)} fold(s) "
                             f"(datasets with fewer than {NUM_FOLDS} training cases have one); use --fold 0")

    plan = PreprocessingPlan.from_dict(plan_dict)
    summaries = {}
    for index in folds:
        summaries[index] = _train_fold(index, config=config, plans=plans, spec=spec, plan=plan, label_map=label_map,
                                       split=splits[index], run_dir=run_dir, context=context, resume=resume,
                                       quiet=quiet)
    if context.is_main:
        _log_finished(run_dir, summaries)
    return {"run_dir": str(run_dir), "folds": summaries}


def _log_finished(run_dir: Path, summaries: dict[int, dict[str, Any]]) -> None:
    """Log the run folder, each fold's best checkpoint and the command that predicts with them."""
    logger.info("Training finished. Run folder: %s", run_dir)
    for index, summary in summaries.items():
        best = summary.get("best_dice_mean")
        score = "no validation"
        if best is not None:
            score = f"best mean Dice {best:.3f} at epoch {summary.get('best_epoch')}"
        logger.info("  fold %d: %s, checkpoint %s", index, score, Path(summary["fold_dir"]) / "checkpoint_best.pt")
    logger.info("Predict with: gmrseg predict -m %s -i IMAGES -o OUTPUT", run_dir)
