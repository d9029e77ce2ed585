"""Test-time augmentation: the flips and axis permutations of the voxel grid.

A symmetry of the cube is an axis permutation followed by flips of some axes.
Test-time augmentation runs the whole preprocessed volume through the sliding
window once per symmetry and maps each result back before averaging.

Window shape: a permutation also permutes the window (``roi``) shape, so the
windows laid over the transformed volume are exactly the images of the
windows laid over the original volume. For a cubic patch this changes nothing.
For a non-cubic patch (for example 128 x 128 x 64) every window still has the
training patch's sizes, in permuted order. This works because the networks
built by gmrseg are fully convolutional and the sizes stay multiples of
``size_divisor``. This keeps
every permutation usable and makes the result of an equivariant network
independent of the symmetry up to float rounding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["TTA_MODES", "Symmetry", "tta_symmetries"]

TTA_MODES = ("none", "flip", "full")


@dataclass(frozen=True)
class Symmetry:
    """One symmetry of the voxel grid: permute the spatial axes, then flip some of them.

    Attributes:
        permutation: new spatial axis ``i`` is old spatial axis ``permutation[i]``.
        flips: spatial axes (after the permutation) that are reversed.
    """

    permutation: tuple[int, ...]
    flips: tuple[int, ...] = ()

    @property
    def is_identity(self) -> bool:
        """True when the symmetry leaves every voxel in place."""
        return self.permutation == tuple(range(len(self.permutation))) and not self.flips

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """Transform a ``(B, C, *spatial)`` tensor."""
        lead = tensor.ndim - len(self.permutation)
        order = list(range(lead)) + [lead + axis for axis in self.permutation]
        tensor = tensor.permute(order)
        if self.flips:
            tensor = torch.flip(tensor, [lead + axis for axis in self.flips])
        return tensor

    def invert(self, tensor: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply` on a ``(B, C, *spatial)`` tensor."""
        lead = tensor.ndim - len(self.permutation)
        if self.flips:
            tensor = torch.flip(tensor, [lead + axis for axis in self.flips])
        inverse = [0] * len(self.permutation)
        for new_axis, old_axis in enumerate(self.permutation):
            inverse[old_axis] = new_axis
        order = list(range(lead)) + [lead + axis for axis in inverse]
        return tensor.permute(order)

    def apply_to_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Return the spatial shape after the symmetry (flips keep it, permutations reorder it)."""
        return tuple(int(shape[axis]) for axis in self.permutation)

    def apply_to_shape_values(self, values: Sequence[float]) -> tuple[float, ...]:
        """Reorder per-axis values (window overlaps, spacings) like the axes."""
        return tuple(float(values[axis]) for axis in self.permutation)


def tta_symmetries(mode: str, spatial_dims: int = 3) -> list[Symmetry]:
    """List the symmetries of a test-time augmentation mode, identity first.

    Args:
        mode: ``"none"`` (identity only), ``"flip"`` (every subset of axes
            flipped: 8 in 3D, 4 in 2D) or ``"full"`` (every axis permutation
            times every flip: the 48 symmetries of the cube, 8 of the square).
        spatial_dims: 2 or 3.

    Raises:
        ValueError: for an unknown mode or number of spatial dimensions.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")

    identity = tuple(range(spatial_dims))
    flip_sets = [
        flips for count in range(spatial_dims + 1) for flips in itertools.combinations(range(spatial_dims), count)
    ]
    if mode == "none":
        return [Symmetry(identity)]
    if mode == "flip":
        return [Symmetry(identity, flips) for flips in flip_sets]
    return [
        Symmetry(permutation, flips)
        for permutation in itertools.permutations(range(spatial_dims))
        for flips in flip_sets
    ]
