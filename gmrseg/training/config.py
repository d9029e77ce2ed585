"""Training configuration: YAML presets parsed into typed dataclasses.

A config file only needs the keys it changes; every other key takes the
default of the dataclasses below (which match ``configs/default.yaml``). An
unknown key, a value of the wrong type or an impossible value raises
``InputError`` naming the key path (for example ``optim.lr``) and the valid
choices, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gmrseg.errors import InputError
from gmrseg.utils.files import save_text_atomic

__all__ = [
    "AugmentationConfig",
    "Config",
    "DataConfig",
    "LossConfig",
    "NetworkConfig",
    "OptimConfig",
    "PRESETS_DIR",
    "PreprocessingConfig",
    "ScheduleConfig",
    "TrainingConfig",
    "ValidationConfig",
    "config_from_dict",
    "config_to_dict",
    "list_presets",
    "load_config",
    "save_config",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class NetworkConfig:
    """Network built by ``gmrseg.networks.build_network``.

    Attributes:
        name: factory name (gmrunet, unet, dynunet, basicunet, segresnet,
            converted:<monai name>).
        kwargs: keyword arguments passed to the factory; the factory checks them.
    """

    name: str = "gmrunet"
    kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "features": [32, 64, 128, 256, 320],
            "kernel_sizes": [5, 5, 5, 3, 3],
            "deep_supervision": True,
        }
    )


@dataclass
class DataConfig:
    """Patch sampling and data loading.

    Attributes:
        patch_size: training patch and sliding-window size in voxels (x, y, z)
            after preprocessing; each size must be a multiple of the network's
            ``size_divisor``. ``auto``: the dataset's median preprocessed shape
            rounded up to that multiple, capped at ``max_patch_size``.
        max_patch_size: upper bound of an ``auto`` patch size, in voxels.
        batch_size: patches per optimizer step (per process under torchrun).
        foreground_fraction: probability that a patch is centred on a
            foreground voxel rather than anywhere in the volume.
        num_workers: data loader worker processes (0 loads in the main process).
        cache_dir: folder for preprocessed cases, reused by later folds and
            runs with the same plan; ``null`` uses ``RUN_DIR/preprocessed``.
        label_pairs: ``[left_name, right_name]`` label pairs that mirror each
            other across the sagittal midline. A rotation-equivariant network
            cannot tell them apart, so each pair is merged into one network
            class and split by side at prediction. ``null`` finds pairs by name
            (kidney_left / kidney_right); ``[]`` disables merging. Dense
            networks never merge.
    """

    patch_size: list[int] | Literal["auto"] = "auto"
    max_patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    batch_size: int = 2
    foreground_fraction: float = 0.33
    num_workers: int = 4
    cache_dir: str | None = None
    label_pairs: list[list[str]] | None = None


@dataclass
class PreprocessingConfig:
    """Arguments of ``gmrseg.data.preprocessing.plan_preprocessing``.

    Attributes:
        isotropic: resample to one spacing on all axes (GMR rings live in
            physical space, so isotropic voxels keep them round).
        target_spacing: spacing in mm (x, y, z); ``null`` lets the planner pick
            it from the dataset (median spacing, made isotropic if requested).
        orientation: axis codes every case is reoriented to (e.g. RAS).
    """

    isotropic: bool = True
    target_spacing: list[float] | None = None
    orientation: str = "RAS"


@dataclass
class AugmentationConfig:
    """Random augmentation of training patches.

    Attributes:
        rotation: ``"auto"`` rotates only for networks that are not rotation
            equivariant (an equivariant network gains nothing from it), or
            ``true`` / ``false`` to force it.
        rotation_range_deg: maximum rotation about each axis, in degrees.
        flip: random flips along each axis.
        scale: random zoom; ``scale_range`` is the maximum relative change.
        scale_range: maximum relative zoom, e.g. 0.15 for 0.85-1.15.
        intensity: random noise, blur, brightness, contrast and gamma.
        field_of_view: show the edge of the data at random places. Patches
            may reach past the volume edge by up to half their size, and
            random oblique corners of 30% of the patches are blanked (image 0,
            label background), as outside the field of view of a scan stored at
            an angle. Without it, patches of tightly cropped volumes (such as
            the hippocampus crops) always end where the volume ends, and the
            network learns that coincidence instead of the anatomy. Needs
            ``zscore_nonzero`` normalization (0 = no data); ignored otherwise.
        probability: probability of applying each spatial augmentation.
    """

    rotation: Literal["auto"] | bool = "auto"
    rotation_range_deg: float = 180.0
    flip: bool = True
    scale: bool = True
    scale_range: float = 0.15
    intensity: bool = True
    field_of_view: bool = True
    probability: float = 0.2


@dataclass
class OptimConfig:
    """Optimizer.

    Attributes:
        name: ``adamw`` or ``sgd`` (SGD always uses Nesterov momentum).
        lr: peak learning rate, reached after the warm-up.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum (ignored by AdamW).
        betas: AdamW betas (ignored by SGD).
        grad_clip: maximum gradient norm; 0 disables clipping.
    """

    name: Literal["adamw", "sgd"] = "sgd"
    lr: float = 0.01
    weight_decay: float = 3e-5
    momentum: float = 0.99
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 12.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per iteration.

    Attributes:
        name: ``poly`` (lr * (1 - t)^power) or ``cosine`` (half cosine to min_lr).
        warmup_epochs: epochs of linear warm-up from ``warmup_start_factor * lr``.
        warmup_start_factor: fraction of the peak lr at the first iteration.
        power: exponent of the poly schedule.
        min_lr: final learning rate of the cosine schedule.
    """

    name: Literal["poly", "cosine"] = "poly"
    warmup_epochs: int = 0
    warmup_start_factor: float = 0.01
    power: float = 0.9
    min_lr: float = 0.0


@dataclass
class LossConfig:
    """MONAI ``DiceCELoss``, optionally summed over deep-supervision outputs.

    Attributes:
        dice_weight: weight of the soft Dice term.
        ce_weight: weight of the cross-entropy term.
        batch_dice: compute Dice over the whole batch instead of per patch.
        deep_supervision_weights: weight of each network output, full
            resolution first; ``null`` halves the weight at each coarser level
            (MONAI's "exp" mode). Only used when the network returns a list.
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    batch_dice: bool = True
    deep_supervision_weights: list[float] | None = None


@dataclass
class TrainingConfig:
    """Length and numerics of the training loop.

    Attributes:
        epochs: number of epochs.
        iterations_per_epoch: optimizer steps per epoch.
        amp: autocast dtype (``bfloat16``, ``float16`` with a gradient scaler, or
            ``none``). On the CPU only ``bfloat16`` applies, and only where the CPU
            computes it natively (AVX512-BF16 or AMX); otherwise the CPU trains in
            float32.
        seed: seed of weights, patch sampling and augmentation.
        deterministic: ask PyTorch for deterministic algorithms (CPU runs are
            reproducible either way; on CUDA this costs speed).
        checkpoint_interval: epochs between writes of checkpoint_last.pt.
        time_limit_minutes: wall-clock budget in minutes of the epochs and validations
            (preprocessing not included). After the first epoch, which is then always
            validated, ``epochs`` is lowered to the number of epochs that fit, estimated
            from the time of that epoch and its validation, and the learning-rate
            schedule ends at the new last epoch. Each later validation lowers it again if
            the epochs have slowed down, or, in the first half of the run, raises it (up
            to ``epochs``) if they sped up. ``null`` trains all ``epochs``.
    """

    epochs: int = 1000
    iterations_per_epoch: int = 250
    amp: Literal["bfloat16", "float16", "none"] = "bfloat16"
    seed: int = 12345
    deterministic: bool = False
    checkpoint_interval: int = 1
    time_limit_minutes: float | None = None


@dataclass
class ValidationConfig:
    """Validation on the fold's held-out cases.

    Attributes:
        interval: epochs between validations (the last epoch is always validated).
        overlap: sliding-window overlap fraction in [0, 1).
        sw_batch_size: windows per forward pass.
        max_cases: validate on at most this many cases (the first ones of the
            fold, in split order); ``null`` uses them all.
    """

    interval: int = 10
    overlap: float = 0.5
    sw_batch_size: int = 4
    max_cases: int | None = None


@dataclass
class Config:
    """Complete training configuration, one section per dataclass."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {_type_name(item)}"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a type annotation; return it in canonical form.

    Ints are accepted where floats are expected, never the reverse. Bools are
    rejected where ints are expected, although ``bool`` subclasses ``int``.
    """
    origin = typing.get_origin(annotation)

    if origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, str) and value in choices:
            return value
        raise InputError(f"config key {key}: invalid value {value!r}; valid choices: {', '.join(map(str, choices))}")

    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, key)
            except InputError as error:
                errors.append(error)
        raise InputError(f"config key {key}: expected {_type_name(annotation)}, got {value!r}")

    if annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, (list, tuple)):
            return [_coerce(entry, item, f"{key}[{index}]") for index, entry in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif annotation is Any:
        return value
    raise InputError(f"config key {key}: expected {_type_name(annotation)}, got {value!r}")


def _build_section(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"config key {prefix}: expected a mapping of keys, got {values!r}")

    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls)]
    unknown = [key for key in values if key not in names]
    if unknown:
        raise InputError(
            f"config key {prefix}.{unknown[0]}: unknown key; valid keys in {prefix}: {', '.join(names)}"
        )

    kwargs = {name: _coerce(value, hints[name], f"{prefix}.{name}") for name, value in values.items()}
    return cls(**kwargs)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise InputError(f"config key {key}: {message}")


def _check_values(config: Config) -> None:
    """Reject values that have the right type but cannot work."""
    data = config.data
    for key, sizes in (("data.patch_size", data.patch_size), ("data.max_patch_size", data.max_patch_size)):
        if sizes == "auto":
            continue
        _require(len(sizes) == 3, key, f"expected 3 sizes in voxels (x, y, z) or auto, got {sizes}")
        _require(all(size >= 1 for size in sizes), key, f"sizes must be >= 1, got {sizes}")
    _require(data.batch_size >= 1, "data.batch_size", f"must be >= 1, got {data.batch_size}")
    _require(0.0 <= data.foreground_fraction <= 1.0, "data.foreground_fraction",
             f"must be in [0, 1], got {data.foreground_fraction}")
    _require(data.num_workers >= 0, "data.num_workers", f"must be >= 0, got {data.num_workers}")
    for index, pair in enumerate(data.label_pairs or []):
        _require(len(pair) == 2 and pair[0] != pair[1], f"data.label_pairs[{index}]",
                 f"expected [left_name, right_name] with two different names, got {pair}")

    prep = config.preprocessing
    if prep.target_spacing is not None:
        _require(len(prep.target_spacing) == 3 and all(value > 0 for value in prep.target_spacing),
                 "preprocessing.target_spacing", f"expected 3 positive spacings in mm, got {prep.target_spacing}")
    codes = prep.orientation.upper()
    axes = ("LR", "PA", "IS")
    valid = len(codes) == 3 and all(sum(code in pair for code in codes) == 1 for pair in axes)
    _require(valid, "preprocessing.orientation",
             f"expected three axis codes, one of L/R, P/A and I/S each (e.g. RAS or LPS), got {prep.orientation!r}")

    aug = config.augmentation
    _require(0.0 <= aug.rotation_range_deg <= 180.0, "augmentation.rotation_range_deg",
             f"must be in [0, 180] degrees, got {aug.rotation_range_deg}")
    _require(0.0 <= aug.scale_range < 1.0, "augmentation.scale_range", f"must be in [0, 1), got {aug.scale_range}")
    _require(0.0 <= aug.probability <= 1.0, "augmentation.probability", f"must be in [0, 1], got {aug.probability}")

    optim = config.optim
    _require(optim.lr > 0, "optim.lr", f"must be > 0, got {optim.lr}")
    _require(optim.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {optim.weight_decay}")
    _require(0.0 <= optim.momentum < 1.0, "optim.momentum", f"must be in [0, 1), got {optim.momentum}")
    _require(len(optim.betas) == 2 and all(0.0 <= beta < 1.0 for beta in optim.betas), "optim.betas",
             f"expected two values in [0, 1), got {optim.betas}")
    _require(optim.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 disables clipping), got {optim.grad_clip}")

    schedule = config.schedule
    _require(schedule.warmup_epochs >= 0, "schedule.warmup_epochs", f"must be >= 0, got {schedule.warmup_epochs}")
    _require(0.0 < schedule.warmup_start_factor <= 1.0, "schedule.warmup_start_factor",
             f"must be in (0, 1], got {schedule.warmup_start_factor}")
    _require(schedule.power > 0, "schedule.power", f"must be > 0, got {schedule.power}")
    _require(0.0 <= schedule.min_lr <= optim.lr, "schedule.min_lr",
             f"must be in [0, optim.lr = {optim.lr}], got {schedule.min_lr}")

    loss = config.loss
    _require(loss.dice_weight >= 0 and loss.ce_weight >= 0 and loss.dice_weight + loss.ce_weight > 0,
             "loss.dice_weight", "dice_weight and ce_weight must be >= 0 and not both 0")
    if loss.deep_supervision_weights is not None:
        weights = loss.deep_supervision_weights
        _require(len(weights) >= 1 and all(value >= 0 for value in weights) and sum(weights) > 0,
                 "loss.deep_supervision_weights", f"expected non-negative weights, not all 0, got {weights}")

    training = config.training
    _require(training.epochs >= 1, "training.epochs", f"must be >= 1, got {training.epochs}")
    _require(training.iterations_per_epoch >= 1, "training.iterations_per_epoch",
             f"must be >= 1, got {training.iterations_per_epoch}")
    _require(training.checkpoint_interval >= 1, "training.checkpoint_interval",
             f"must be >= 1, got {training.checkpoint_interval}")
    if training.time_limit_minutes is not None:
        _require(training.time_limit_minutes > 0, "training.time_limit_minutes",
                 f"must be > 0, or null for no limit (what --time-limit 0 sets on the command line), "
                 f"got {training.time_limit_minutes}")
    _require(schedule.warmup_epochs < training.epochs or training.epochs == 1, "schedule.warmup_epochs",
             f"must be smaller than training.epochs ({training.epochs}), got {schedule.warmup_epochs}")

    validation = config.validation
    _require(validation.interval >= 1, "validation.interval", f"must be >= 1, got {validation.interval}")
    _require(0.0 <= validation.overlap < 1.0, "validation.overlap", f"must be in [0, 1), got {validation.overlap}")
    _require(validation.sw_batch_size >= 1, "validation.sw_batch_size", f"must be >= 1, got {validation.sw_batch_size}")
    if validation.max_cases is not None:
        _require(validation.max_cases >= 1, "validation.max_cases", f"must be >= 1 or null, got {validation.max_cases}")


def config_from_dict(values: dict[str, Any] | None) -> Config:
    """Build a ``Config`` from nested mappings, filling missing keys with defaults.

    Raises:
        InputError: for an unknown key, a wrong type or an impossible value; the
            message names the key path and the valid choices.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"config: expected a mapping of sections at the top level, got {values!r}")

    sections = {item.name: typing.get_type_hints(Config)[item.name] for item in dataclasses.fields(Config)}
    unknown = [key for key in values if key not in sections]
    if unknown:
        raise InputError(f"config key {unknown[0]}: unknown section; valid sections: {', '.join(sections)}")

    config = Config(**{name: _build_section(cls, values.get(name), name) for name, cls in sections.items()})
    config.preprocessing.orientation = config.preprocessing.orientation.upper()
    _check_values(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Return the config as plain nested dicts and lists (YAML and JSON safe)."""
    return dataclasses.asdict(config)


def list_presets() -> list[str]:
    """Return the names of the presets shipped in ``gmrseg/configs``."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def _resolve_source(source: str | Path) -> Path:
    """Return the YAML file for ``source``: an existing file, else a preset named by a bare name.

    A bare name is one path component with no suffix or a ``.yaml``/``.yml``
    suffix (``quick``, ``quick.yaml``), given as ``str`` or ``Path``. An
    existing file of that name in the working folder wins over the preset.
    """
    path = Path(source)
    if path.is_file():
        return path
    bare = len(path.parts) == 1 and path.suffix in ("", ".yaml", ".yml")
    if bare:
        preset = PRESETS_DIR / f"{path.stem if path.suffix else path.name}.yaml"
        if preset.is_file():
            return preset
        raise InputError(
            f"config {str(source)!r}: no such file and no such preset; presets: {', '.join(list_presets())}"
        )
    raise FileNotFoundError(
        f"config file {path} not found; give a YAML file or a preset name ({', '.join(list_presets())})"
    )


def load_config(source: str | Path | None = None) -> Config:
    """Load a config from a YAML file or a preset name.

    Args:
        source: ``None`` for the built-in defaults, a path to a YAML file, or
            the name of a preset in ``gmrseg/configs`` (``"quick"``,
            ``"default"``, ``"unet_baseline"``).

    Raises:
        FileNotFoundError: the path does not exist.
        InputError: the file is not valid YAML, or a key is unknown, has the
            wrong type or an impossible value.
    """
    if source is None:
        return Config()

    path = _resolve_source(source)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"config file {path}: invalid YAML: {error}") from error

    try:
        return config_from_dict(values)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomic), so a run records every value it used."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
    save_text_atomic(path, "# Resolved gmrseg training config: every key, defaults filled in.\n" + text)
