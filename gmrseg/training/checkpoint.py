"""Training checkpoints: atomic writes and ``weights_only`` loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` can read it and a checkpoint can never
run code (``gmrseg.training.rng`` stores random states in that form).
The file is written to a temporary name next to the target and renamed, so a
crash or a kill during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from gmrseg.errors import InputError
from gmrseg.utils.files import atomic_write_path

__all__ = ["load_checkpoint", "remove_stale_temporaries", "save_checkpoint"]

# Called with the temporary path after the data is written and before the
# rename. Tests set it to simulate a crash in the middle of a write.
_before_rename: Callable[[Path], None] | None = None


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    with atomic_write_path(path) as temporary:
        torch.save(checkpoint, temporary)
        if _before_rename is not None:
            _before_rename(temporary)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputError: the file is not a readable checkpoint (truncated, or
            written by something other than gmrseg).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise InputError(f"checkpoint {path} cannot be read ({error}); delete it or train without --resume") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise InputError(f"checkpoint {path} is not a gmrseg checkpoint (no 'model' entry)")
    return checkpoint


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary checkpoint files left by a killed write; return their paths."""
    removed = []
    for temporary in Path(folder).glob(".checkpoint_*.pt.*.tmp.pt"):
        temporary.unlink(missing_ok=True)
        removed.append(temporary)
    return removed
