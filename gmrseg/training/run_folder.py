"""Write the shared files of a run folder: config.yaml, dataset.json, plans.json.

Layout (``gmrseg predict -m RUN_DIR`` reads nothing else)::

    RUN_DIR/config.yaml     resolved training config
    RUN_DIR/dataset.json    copy of the dataset's dataset.json
    RUN_DIR/plans.json      preprocessing plan, fingerprint, label maps, network
    RUN_DIR/splits.json     five cross-validation folds
    RUN_DIR/fold_N/         checkpoints, metrics.csv, train.log, progress.png

Folds trained one after the other into the same folder must share these
files, so a second call with a different config or dataset is rejected
instead of silently mixing two setups.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from gmrseg.errors import InputError
from gmrseg.training.config import Config, config_to_dict, save_config
from gmrseg.utils.files import atomic_write_path, save_json_atomic

__all__ = ["build_plans", "check_config_matches", "read_plans", "write_run_files"]

logger = logging.getLogger(__name__)

# Keys that may differ between calls on one run folder (a longer run on resume).
_FREE_KEYS = {"training.epochs", "training.time_limit_minutes"}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key != "kwargs":
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def check_config_matches(run_dir: Path, config: Config) -> None:
    """Raise ``InputError`` when ``run_dir/config.yaml`` contains a config other than ``config``.

    Only ``training.epochs`` and ``training.time_limit_minutes`` may differ (to train
    longer on resume). The
    stored config has ``data.patch_size`` resolved, so ``auto`` matches any
    stored size (the size is then recomputed from the same plans).
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: invalid YAML ({error}); use a new run folder") from error

    old = _flatten(stored or {})
    new = _flatten(config_to_dict(config))
    if new.get("data.patch_size") == "auto":
        new["data.patch_size"] = old.get("data.patch_size")
    changed = [key for key in sorted(set(old) | set(new)) if key not in _FREE_KEYS and old.get(key) != new.get(key)]
    if changed:
        details = "; ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in changed[:5])
        raise InputError(
            f"run folder {run_dir} was created with another config ({details}); every fold of a run must use the "
            "same config, so pass the config of that run or choose a new run folder with -o"
        )


def build_plans(
    *,
    plan_dict: dict[str, Any],
    fingerprint: dict[str, Any],
    label_map: dict[str, Any],
    in_channels: int,
    channel_names: dict[int, str],
    file_ending: str,
    patch_size: list[int],
    network_name: str,
    network_kwargs: dict[str, Any],
    equivariant: bool,
    window_margin: list[int] | None = None,
) -> dict[str, Any]:
    """Assemble plans.json: everything the predictor needs besides the weights.

    ``label_map`` is ``LateralLabelMap.to_dict()``: ``labels`` (the dataset's),
    ``network_labels`` (the classes the network predicts) and
    ``label_pairs`` (``[left, right, merged]`` per merged pair).
    ``window_margin`` is the zero margin, in voxels per axis, that the
    predictor adds around a preprocessed scan before the sliding windows
    (None: no margin).
    """
    return {
        "preprocessing": plan_dict,
        "fingerprint": fingerprint,
        "labels": label_map["labels"],
        "network_labels": label_map["network_labels"],
        "label_pairs": label_map["label_pairs"],
        "in_channels": int(in_channels),
        "channel_names": {str(key): value for key, value in channel_names.items()},
        "file_ending": file_ending,
        "patch_size": [int(size) for size in patch_size],
        "network": {"name": network_name, "kwargs": network_kwargs},
        "equivariant": bool(equivariant),
        "window_margin": [int(size) for size in (window_margin or [0] * len(patch_size))],
    }


def read_plans(run_dir: Path) -> dict[str, Any] | None:
    """Return ``run_dir/plans.json``, or ``None`` when it does not exist."""
    path = run_dir / "plans.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: invalid JSON ({error}); use a new run folder") from error


def write_run_files(run_dir: Path, config: Config, dataset_json: Path, plans: dict[str, Any]) -> None:
    """Write config.yaml, dataset.json and plans.json atomically into ``run_dir``.

    An existing plans.json must describe the same labels, channels and
    network; it is then kept (folds share one preprocessing plan).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read_plans(run_dir)
    if existing is not None:
        for key in ("labels", "network_labels", "in_channels", "network", "patch_size"):
            if existing.get(key) != plans.get(key):
                raise InputError(
                    f"{run_dir / 'plans.json'} has {key} {existing.get(key)!r} but this dataset and config give "
                    f"{plans.get(key)!r}; train into a new run folder"
                )
    else:
        save_json_atomic(run_dir / "plans.json", plans)

    save_config(config, run_dir / "config.yaml")
    with atomic_write_path(run_dir / "dataset.json") as temporary:
        shutil.copyfile(dataset_json, temporary)
