"""Sliding-window logits on a window grid that every flip and axis permutation maps onto itself.

MONAI's ``sliding_window_inference`` starts windows at ``0, step, 2 * step, ...``
and pushes the last one back so that it ends at the image border. That grid is
not mirror-symmetric: a flipped volume is covered by other windows, so test-time
augmentation changes even an exactly equivariant network's output. This module
first pads the volume (zeros, split between both ends) to a size that the
windows tile exactly, ``padded = roi + (num_windows - 1) * step``, and applies
each test-time symmetry to the padded volume. MONAI's uniform grid on that size
maps onto itself under every flip (and under a permutation, when the window
shape and step are permuted with the axes), and the Gaussian weights are
symmetric too, so every symmetry uses the same windows.

The step never exceeds MONAI's ``int(roi * (1 - overlap))``, so the overlap is
at least the requested one, and the number of windows per axis equals MONAI's.
When the total padding on an axis is odd, the extra voxel goes at the end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from gmrseg.inference.tta import Symmetry

__all__ = ["WindowLayout", "pad_to_layout", "plan_window_layout", "sliding_window_logits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowLayout:
    """Padding and window step for one volume.

    Attributes:
        image_size: spatial size before padding (voxels).
        roi_size: window size (voxels).
        padded_size: ``roi_size + (num_windows - 1) * step`` on every axis.
        pad_before: voxels of padding before the image on each axis.
        pad_after: voxels of padding after the image (``pad_before`` or one more).
        step: distance between neighbouring window starts (voxels).
        num_windows: windows per axis.
    """

    image_size: tuple[int, ...]
    roi_size: tuple[int, ...]
    padded_size: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    step: tuple[int, ...]
    num_windows: tuple[int, ...]

    @property
    def total_windows(self) -> int:
        """Number of windows over the whole volume."""
        return math.prod(self.num_windows)

    def monai_overlap(self) -> tuple[float, ...]:
        """Return per-axis overlaps for which MONAI computes exactly :attr:`step`.

        MONAI's step is ``int(roi * (1 - overlap))``; aiming at ``step + 0.5``
        keeps float rounding from landing one voxel short.
        """
        overlaps = []
        for roi, step in zip(self.roi_size, self.step):
            overlaps.append(0.0 if step >= roi else 1.0 - (step + 0.5) / roi)
        return tuple(overlaps)


def plan_window_layout(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> WindowLayout:
    """Choose a padding and a window step so that the windows tile the padded volume exactly.

    Args:
        image_size: spatial size of the volume (voxels).
        roi_size: window size (voxels), the training patch size.
        overlap: requested fraction of overlap between neighbouring windows, in [0, 1).

    Returns:
        The layout. It has as many windows per axis as MONAI's sliding window
        would use on the unpadded volume (one for an axis no longer than the
        window), and the smallest padding that such a grid allows.

    Raises:
        ValueError: when the sizes disagree in length or are not positive, or
            the overlap is outside [0, 1).
    """
    image_size = tuple(int(size) for size in image_size)
    roi_size = tuple(int(size) for size in roi_size)
    if len(image_size) != len(roi_size):
        raise ValueError(f"image_size {image_size} and roi_size {roi_size} must have the same length")
    if min(image_size) < 1 or min(roi_size) < 1:
        raise ValueError(f"sizes must be positive, got image_size {image_size} and roi_size {roi_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")

    num_windows, steps, padded = [], [], []
    for size, roi in zip(image_size, roi_size):
        if size <= roi:
            count, step = 1, roi
        else:
            max_step = max(1, int(roi * (1.0 - overlap)))
            count = math.ceil((size - roi) / max_step) + 1
            step = math.ceil((size - roi) / (count - 1))
        num_windows.append(count)
        steps.append(step)
        padded.append(roi + (count - 1) * step)

    pad_before = tuple((padded_size - size) // 2 for padded_size, size in zip(padded, image_size))
    pad_after = tuple(
        padded_size - size - before for padded_size, size, before in zip(padded, image_size, pad_before)
    )
    return WindowLayout(
        image_size=image_size,
        roi_size=roi_size,
        padded_size=tuple(padded),
        pad_before=pad_before,
        pad_after=pad_after,
        step=tuple(steps),
        num_windows=tuple(num_windows),
    )


def pad_to_layout(image: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """Pad a ``(B, C, *spatial)`` tensor with zeros to ``layout.padded_size``."""
    padding: list[int] = []
    for before, after in zip(reversed(layout.pad_before), reversed(layout.pad_after)):
        padding.extend((before, after))
    return F.pad(image, padding, mode="constant", value=0.0) if any(padding) else image


def _crop_from_layout(tensor: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    crop = tuple(slice(before, before + size) for before, size in zip(layout.pad_before, layout.image_size))
    return tensor[(slice(None), slice(None)) + crop]


def sliding_window_logits(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    sw_device: torch.device | str = "cpu",
    device: torch.device | str = "cpu",
    amp: bool = False,
    symmetry: Symmetry | None = None,
    sigma_scale: float = 0.125,
    progress: bool = False,
) -> torch.Tensor:
    """Run ``network`` over ``image`` window by window and blend the logits with Gaussian weights.

    Args:
        network: module in eval mode; maps ``(B, C, *roi)`` to logits
            ``(B, K, *roi)`` (the first output when it returns a list).
        image: ``(1, C, *spatial)`` float tensor, on any device.
        roi_size: window size (voxels) in the frame of ``image``.
        overlap: requested overlap fraction in [0, 1) (default 0.5).
        sw_batch_size: windows per network call.
        sw_device: device where the network runs.
        device: device where the blended output is accumulated (the CPU for
            volumes too large for GPU memory).
        amp: run the network under float16 autocast.
        symmetry: test-time symmetry applied to the padded volume before the
            windows and undone on the logits; None for the identity.
        sigma_scale: Gaussian sigma as a fraction of the window size (MONAI's default, 0.125).
        progress: show a tqdm bar over window batches.

    Returns:
        ``(1, K, *spatial)`` float32 logits on ``device``, in the frame of
        ``image`` (the symmetry undone) and cropped back to its spatial size.
    """
    if image.ndim < 3 or image.shape[0] != 1:
        raise ValueError(f"image must have shape (1, C, *spatial), got {tuple(image.shape)}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive int, got {sw_batch_size}")

    sw_device = torch.device(sw_device)
    device = torch.device(device)
    layout = plan_window_layout(image.shape[2:], roi_size, overlap)
    padded = pad_to_layout(image.to(device), layout)
    window_shape, window_overlap = layout.roi_size, layout.monai_overlap()
    if symmetry is not None:
        # The window shape and step follow the axes, so the grid maps onto itself.
        padded = symmetry.apply(padded)
        window_shape = symmetry.apply_to_shape(window_shape)
        window_overlap = symmetry.apply_to_shape_values(window_overlap)

    def run_windows(windows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=sw_device.type, dtype=torch.float16, enabled=amp):
            logits = network(windows)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return logits.float()

    with torch.inference_mode():
        logits = sliding_window_inference(
            padded,
            roi_size=window_shape,
            sw_batch_size=sw_batch_size,
            predictor=run_windows,
            overlap=window_overlap,
            mode="gaussian",
            sigma_scale=sigma_scale,
            padding_mode="constant",
            cval=0.0,
            sw_device=sw_device,
            device=device,
            progress=progress,
        )
    logits = torch.as_tensor(logits)
    del padded

    if symmetry is not None:
        logits = symmetry.invert(logits)
    return _crop_from_layout(logits, layout).float()
