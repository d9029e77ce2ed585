"""Read a training run folder: plans.json, the folds present and their checkpoints.

Layout read here (written by ``gmrseg train``)::

    RUN_DIR/plans.json                  preprocessing plan, labels, patch size, network
    RUN_DIR/fold_N/checkpoint_best.pt   {"model": state_dict, ...}
    RUN_DIR/fold_N/checkpoint_last.pt

Checkpoints are read with ``torch.load(weights_only=True)``, so a checkpoint
cannot run code.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from gmrseg.errors import InputError

__all__ = ["CHECKPOINT_NAMES", "find_folds", "load_fold_network", "load_plans"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("best", "last")
_REQUIRED_PLAN_KEYS = ("preprocessing", "network", "in_channels", "network_labels", "patch_size")
_FOLD_PATTERN = re.compile(r"^fold_(\d+)$")


def load_plans(run_dir: str | Path) -> dict[str, Any]:
    """Read and check ``RUN_DIR/plans.json``.

    Fills ``labels`` from ``network_labels`` and ``label_pairs`` with an empty
    list when they are missing, and ``equivariant`` from the network name.

    Raises:
        FileNotFoundError: when the folder or plans.json does not exist.
        InputError: when plans.json is not valid JSON or lacks a required key.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found; pass the folder that 'gmrseg train -o' wrote")
    path = run_dir / "plans.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {run_dir} is not a gmrseg run folder (train writes plans.json)")

    try:
        plans = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}); retrain or restore the file") from error
    if not isinstance(plans, dict):
        raise InputError(f"{path} must contain a JSON object, got {type(plans).__name__}")

    missing = [key for key in _REQUIRED_PLAN_KEYS if key not in plans]
    if missing:
        raise InputError(f"{path} lacks the key(s) {', '.join(missing)}; it was not written by gmrseg train")
    network = plans["network"]
    if not isinstance(network, dict) or "name" not in network:
        raise InputError(f"{path}: 'network' must be an object with 'name' and 'kwargs', got {network!r}")
    patch_size = plans["patch_size"]
    if not isinstance(patch_size, list) or len(patch_size) != 3 or not all(
        isinstance(size, int) and size > 0 for size in patch_size
    ):
        raise InputError(f"{path}: 'patch_size' must be a list of 3 positive integers, got {patch_size!r}")
    network_labels = plans["network_labels"]
    if not isinstance(network_labels, dict) or len(network_labels) < 2:
        raise InputError(f"{path}: 'network_labels' must map at least 2 class names to values, got {network_labels!r}")
    values = sorted(int(value) for value in network_labels.values())
    if values != list(range(len(values))):
        raise InputError(f"{path}: 'network_labels' values must be 0..{len(values) - 1}, got {values}")

    plans.setdefault("labels", dict(network_labels))
    plans.setdefault("label_pairs", [])
    network.setdefault("kwargs", {})
    if "equivariant" not in plans:
        from gmrseg.networks.factory import is_equivariant

        plans["equivariant"] = bool(is_equivariant(network["name"]))
    return plans


def find_folds(run_dir: str | Path, folds: Sequence[int | str] | None, checkpoint: str) -> list[tuple[int, Path]]:
    """Return ``(fold, checkpoint path)`` for the requested folds, or every fold present.

    Args:
        run_dir: run folder.
        folds: fold numbers (ints or strings such as ``"0"``); None or ``["all"]``
            takes every ``fold_N`` folder that has the checkpoint.
        checkpoint: ``"best"`` or ``"last"``.

    Raises:
        InputError: for an invalid fold or checkpoint name, a requested fold
            without the checkpoint, or a run folder with no checkpoint at all.
    """
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINT_NAMES:
        raise InputError(f"checkpoint must be one of {', '.join(CHECKPOINT_NAMES)}, got {checkpoint!r}")
    file_name = f"checkpoint_{checkpoint}.pt"

    present = {}
    for child in sorted(run_dir.iterdir()):
        match = _FOLD_PATTERN.match(child.name)
        if match and child.is_dir() and (child / file_name).is_file():
            present[int(match.group(1))] = child / file_name

    if folds is None or [str(fold) for fold in folds] == ["all"]:
        if not present:
            raise InputError(
                f"no fold_N/{file_name} in {run_dir}; train at least one fold first"
                + ("" if checkpoint == "last" else ", or pass --checkpoint last")
            )
        return sorted(present.items())

    selected = []
    for fold in folds:
        try:
            number = int(fold)
        except (TypeError, ValueError) as error:
            raise InputError(f"fold must be an integer or 'all', got {fold!r}") from error
        if number not in present:
            available = ", ".join(str(key) for key in sorted(present)) or "none"
            raise InputError(
                f"fold {number} has no {file_name} in {run_dir} (folds with that checkpoint: {available})"
            )
        if number not in dict(selected):
            selected.append((number, present[number]))
    return selected


def _build_network(name: str, in_channels: int, out_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    """Build a network with the factory (the single place where plans.json names become modules)."""
    from gmrseg.networks.factory import build_network

    return build_network(name, in_channels, out_channels, **kwargs)


def load_fold_network(plans: dict[str, Any], checkpoint_path: Path, device: torch.device) -> nn.Module:
    """Build the network described in ``plans`` and load one fold's weights, in eval mode on ``device``.

    Raises:
        InputError: when the checkpoint cannot be read or its weights do not
            fit the network described in plans.json.
    """
    network = _build_network(
        plans["network"]["name"], int(plans["in_channels"]), len(plans["network_labels"]), plans["network"]["kwargs"]
    )

    try:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise InputError(f"cannot read checkpoint {checkpoint_path}: {error}") from error
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {checkpoint_path} contains no state_dict under the key 'model'")

    # Weights saved from a DistributedDataParallel wrapper carry a "module." prefix.
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(
            f"checkpoint {checkpoint_path} does not fit the network in plans.json "
            f"({plans['network']['name']}): {error}"
        ) from error

    network.to(device)
    network.eval()
    return network
