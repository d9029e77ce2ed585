"""Cross-validation splits: five deterministic folds, stored in ``splits.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from gmrseg.errors import InputError
from gmrseg.utils.files import save_json_atomic

__all__ = ["NUM_FOLDS", "check_splits", "load_or_create_splits", "make_splits"]

logger = logging.getLogger(__name__)

NUM_FOLDS = 5


def make_splits(case_ids: Sequence[str], seed: int, num_folds: int = NUM_FOLDS) -> list[dict[str, list[str]]]:
    """Shuffle the case ids with ``seed`` and cut them into ``num_folds`` folds.

    Each fold validates on one part and trains on the others. With fewer cases
    than folds there is one fold that trains and validates on every case, and
    a warning is logged because its Dice then measures fit, not generalization.

    Returns:
        ``[{"train": [...], "val": [...]}, ...]`` with sorted ids in each list.
    """
    ids = sorted(str(case_id) for case_id in case_ids)
    if not ids:
        raise InputError("the dataset has no training cases to split")
    if len(set(ids)) != len(ids):
        raise InputError("case ids must be unique to split them into folds")

    if len(ids) < num_folds:
        logger.warning("Only %d training cases (fewer than %d folds): training one fold on every case and "
                       "validating on the same cases, so its Dice measures fit, not generalization",
                       len(ids), num_folds)
        return [{"train": list(ids), "val": list(ids)}]

    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, num_folds)
    splits = []
    for fold, part in enumerate(parts):
        val = sorted(ids[index] for index in part)
        train = sorted(ids[index] for other, piece in enumerate(parts) if other != fold for index in piece)
        splits.append({"train": train, "val": val})
    return splits


def check_splits(splits: object, case_ids: Sequence[str], path: Path) -> list[dict[str, list[str]]]:
    """Check a ``splits.json`` read from disk against the dataset's case ids."""
    if not isinstance(splits, list) or not splits or not all(
        isinstance(fold, dict) and isinstance(fold.get("train"), list) and isinstance(fold.get("val"), list)
        for fold in splits
    ):
        raise InputError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} folds; "
                         "delete it to create new splits")
    known = set(case_ids)
    for index, fold in enumerate(splits):
        missing = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if missing:
            raise InputError(f"{path}: fold {index} lists case(s) not in the dataset: {', '.join(missing[:5])}; "
                             "use the run folder with the dataset it was created for, or delete splits.json")
        if not fold["train"]:
            raise InputError(f"{path}: fold {index} has no training cases")
    return splits


def load_or_create_splits(path: Path, case_ids: Sequence[str], seed: int, *, write: bool = True) -> list[dict]:
    """Return the splits stored at ``path``, creating the file when it does not exist.

    Args:
        path: ``RUN_DIR/splits.json``.
        case_ids: training case ids of the dataset.
        seed: shuffling seed used when the file is created.
        write: False on torchrun ranks other than 0 (they compute the same
            splits without writing).
    """
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: invalid JSON ({error}); delete it to create new splits") from error
        logger.info("Using the cross-validation splits in %s", path)
        return check_splits(stored, case_ids, path)

    splits = make_splits(case_ids, seed)
    if write:
        save_json_atomic(path, splits)
    return splits
