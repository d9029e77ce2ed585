"""Random states: seeding a run, and saving and restoring the generators.

States are returned as plain data (tensors, ints, floats, lists, dicts) so
they fit in a checkpoint that ``torch.load(..., weights_only=True)`` reads.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Return the torch, CUDA, NumPy and Python random states as plain data."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(python_version), "internal": list(python_internal), "gauss_next": python_gauss},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore random states captured by ``capture_rng_state``.

    CUDA states are restored only when the same number of CUDA devices is
    visible. Otherwise they are skipped with a warning: the run stays valid
    but is no longer bit-identical on the GPU.
    """
    torch.set_rng_state(state["torch"].cpu())

    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["position"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))

    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))

    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([item.cpu() for item in cuda_states])
        else:
            logger.warning("checkpoint contains %d CUDA random states but %d devices are visible; skipped restoring them",
                           len(cuda_states), torch.cuda.device_count())
