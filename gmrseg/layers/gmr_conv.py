"""GMR convolution layers: ``GMRConv3d`` and ``GMRConv2d``.

Each kernel is a learned mix of a few radially symmetric rings (see
``gmrseg.layers.rings``), so a layer with stride 1 and symmetric padding commutes
exactly with the 48 rotations and reflections of the cube (8 of the square in 2D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gmrseg.layers.rings import default_num_rings, gaussian_rings, kernel_distances, ring_centres

__all__ = ["GMRConv2d", "GMRConv3d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _GMRConvNd(nn.Module):
    """Shared implementation of the 2D and 3D GMR convolutions."""

    spatial_dims: int = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = "same",
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        num_rings: int | None = None,
        ring_profile: str = "gaussian",
        strategy: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if padding == "same":
            padding = dilation * (kernel_size // 2)
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int or 'same', got {padding!r}")
        if num_rings is None:
            num_rings = default_num_rings(kernel_size)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self.num_rings = num_rings
        self.ring_profile = ring_profile
        self.strategy = strategy

        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, num_rings, **factory))
        spacing = (kernel_size // 2) / max(num_rings - 1, 1)
        self.log_sigma = nn.Parameter(torch.full((num_rings,), math.log(max(spacing, 0.5)), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.register_buffer("ring_centres", ring_centres(kernel_size, num_rings, **factory), persistent=False)
        self.register_buffer(
            "distances", kernel_distances(kernel_size, self.spatial_dims, **factory), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``weight`` and ``bias`` with the fan-in of ``C_in / groups * num_rings``."""
        fan_in = self.weight.shape[1] * self.num_rings
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def sigmas(self) -> torch.Tensor:
        """Return ring widths in voxels, clamped to [0.25, k] for a well-conditioned basis."""
        return self.log_sigma.exp().clamp(0.25, float(self.kernel_size))

    def rings(self) -> torch.Tensor:
        """Return the ring basis, shape ``(num_rings, k, ..., k)``."""
        return gaussian_rings(self.distances, self.ring_centres, self.sigmas())

    def kernel(self) -> torch.Tensor:
        """Return the dense kernel, shape ``(C_out, C_in / groups, k, ..., k)``."""
        return torch.einsum("oil,l...->oi...", self.weight, self.rings())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        padding = self.padding
        if self.padding_mode != "zeros" and padding:
            x = F.pad(x, (padding,) * (2 * self.spatial_dims), mode=self.padding_mode)
            padding = 0
        return conv(x, self.kernel(), self.bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, num_rings={self.num_rings}"
        if self.stride != 1:
            text += f", stride={self.stride}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


class GMRConv3d(_GMRConvNd):
    """3D GMR convolution with the constructor surface of ``nn.Conv3d``."""

    spatial_dims = 3


class GMRConv2d(_GMRConvNd):
    """2D GMR convolution with the constructor surface of ``nn.Conv2d``."""

    spatial_dims = 2
