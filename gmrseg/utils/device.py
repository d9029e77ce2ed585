"""Turn a user's ``--device`` value into a ``torch.device``."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Resolve ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` to a device.

    ``"auto"`` (or ``None``) picks the first CUDA device when one is visible and
    the CPU otherwise.

    Raises:
        ValueError: for an unknown name, or a CUDA device that is not available.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"invalid device {name!r}: use auto, cpu, cuda or cuda:N") from error

    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"invalid device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device
