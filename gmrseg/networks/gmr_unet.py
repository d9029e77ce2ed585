"""GMRUNet: a UNet whose every operation commutes with the rotations and reflections of the voxel grid.

The network follows the shape of MONAI's DynUNet and nnU-Net's default 3D UNet:
per-level kernel sizes, instance norm, LeakyReLU, optional residual blocks and
deep supervision. Three changes keep the 48 symmetries of the cube (8 of the
square in 2D):

- every convolution with a kernel larger than 1 is a GMR convolution, whose
  kernel is a mix of radially symmetric rings (``conv="dense"`` swaps in
  ``nn.Conv3d`` of the same size and gives the plain UNet baseline);
- down-sampling is 2x2x2 max or average pooling, or a blur pool (a fixed
  4-tap binomial low-pass taken at stride 2, centred on the same cells). All
  three map pooling cells onto pooling cells under any flip or axis permutation
  as long as every level's size is even (a stride-2 convolution with an odd
  kernel only does so on odd sizes). The blur pool also removes most of the
  aliasing that makes a grid-sampled network sensitive to shifts and to
  rotations off the 90-degree grid;
- up-sampling is nearest or linear interpolation by 2 after a 1x1x1 convolution
  at the coarse level. This equals a transposed convolution whose kernel is
  constant over each 2x2x2 cell. A GMR convolution block follows it.

Optionally (``gradient_magnitude=True``) every block also adds a learned mix of
its features' gradient magnitudes, an edge strength that ring kernels cannot
compute and that every grid symmetry leaves unchanged.

Equivariance holds when each spatial size of the input is a multiple of
``size_divisor``. Other sizes are padded (or rejected) as ``input_padding`` says.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import ADN, UpSample
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from gmrseg.errors import InputError
from gmrseg.layers import GMRConv2d, GMRConv3d

__all__ = [
    "GMRUNet",
    "GradientMagnitude",
    "make_conv",
    "CONV_TYPES",
    "POOLING_TYPES",
    "UPSAMPLE_MODES",
    "INPUT_PADDING_MODES",
]

logger = logging.getLogger(__name__)

CONV_TYPES = ("gmr", "dense")
POOLING_TYPES = ("max", "avg", "blur")
UPSAMPLE_MODES = ("linear", "nearest")
INPUT_PADDING_MODES = ("symmetric", "error")

_DEFAULT_KERNEL_SIZES = (9, 7, 5, 5, 3)
_DEFAULT_NORM = ("instance", {"affine": True})
_DEFAULT_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
_GRADIENT_EPS = 1e-4


def make_conv(
    spatial_dims: int,
    conv: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    bias: bool = True,
    padding_mode: str = "zeros",
    gmr_kwargs: dict | None = None,
) -> nn.Module:
    """Build one stride-1 convolution with "same" padding: a GMR layer or its dense counterpart.

    Args:
        spatial_dims: 2 or 3.
        conv: ``"gmr"`` for ``GMRConv3d``/``GMRConv2d``, ``"dense"`` for ``nn.Conv3d``/``nn.Conv2d``.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size in voxels, the same along every axis.
        bias: add a learned bias per output channel.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        gmr_kwargs: extra keyword arguments for the GMR layer (``num_rings``,
            ``ring_profile``, ``strategy``, ...); ignored for kernel size 1 and dense convs.

    Returns:
        A module mapping ``(B, in_channels, *S)`` to ``(B, out_channels, *S)``.
        A kernel of size 1 is always a dense ``nn.ConvNd``: a single voxel is
        already symmetric, so a ring basis would add nothing.
    """
    if conv == "gmr" and kernel_size > 1:
        layer_type = GMRConv3d if spatial_dims == 3 else GMRConv2d
        return layer_type(
            in_channels,
            out_channels,
            kernel_size,
            padding="same",
            bias=bias,
            padding_mode=padding_mode,
            **(gmr_kwargs or {}),
        )
    layer_type = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return layer_type(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, padding_mode=padding_mode
    )


class _ConvNormAct(nn.Sequential):
    """Convolution, then normalization, dropout and activation (MONAI ``ADN`` with ordering ``"NDA"``)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, options: dict) -> None:
        super().__init__()
        self.add_module("conv", _conv_from_options(spatial_dims, in_channels, out_channels, kernel_size, options))
        self.add_module(
            "adn",
            ADN(
                ordering="NDA",
                in_channels=out_channels,
                act=options["act"],
                norm=options["norm"],
                norm_dim=spatial_dims,
                dropout=options["dropout"] or None,
                dropout_dim=1,
            ),
        )


class GradientMagnitude(nn.Module):
    """Add a learned mix of each channel's gradient magnitude to the features: ``x + W |grad x|``.

    ``|grad x|`` is the Euclidean norm of the central differences
    ``(x[i + 1] - x[i - 1]) / 2`` along every spatial axis, in feature units per
    voxel. The difference along an axis is 0 on the axis's first and last plane,
    and everywhere when the axis is shorter than 3 voxels. The layer returns
    ``sqrt(|grad x|^2 + 1e-4)``, so flat features give 0.01 instead of 0 and the
    square root keeps a finite gradient. ``W`` is a bias-free 1x1 convolution,
    initialised to zero so that a new block starts out as one without this layer.

    Ring kernels are radially symmetric, so a stack of them and pointwise
    activations has no direct way to measure how steeply a feature changes
    regardless of direction. The magnitude supplies that edge strength. It is
    unchanged by the grid's flips and axis permutations, which only permute the
    differences and change their signs, so the layer keeps the network's 48
    symmetries exactly. Under other rotations the magnitude stays the same up to
    the error of central differences.

    Args:
        spatial_dims: 3 for volumes, 2 for slices.
        channels: feature channels in and out.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.mix = make_conv(spatial_dims, "dense", channels, channels, 1, bias=False)
        nn.init.zeros_(self.mix.weight)

    def magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``sqrt(|grad x|^2 + 1e-4)`` with the shape of ``x`` (``(B, C, *spatial)``)."""
        squared = None
        for axis in range(2, 2 + self.spatial_dims):
            size = x.shape[axis]
            if size < 3:
                continue
            difference = torch.zeros_like(x)
            difference.narrow(axis, 1, size - 2).copy_(x.narrow(axis, 2, size - 2) - x.narrow(axis, 0, size - 2))
            squared = difference * difference if squared is None else squared + difference * difference
        if squared is None:
            squared = torch.zeros_like(x)

        return torch.sqrt(squared * 0.25 + _GRADIENT_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.magnitude(x))


class _PlainBlock(nn.Sequential):
    """Two convolution-norm-activation layers with the same kernel size."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, options: dict) -> None:
        layers = [_ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, options)]
        if options["gradient_magnitude"]:
            layers.append(GradientMagnitude(spatial_dims, out_channels))
        layers.append(_ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, options))
        super().__init__(*layers)


class _ResidualBlock(nn.Module):
    """Conv-norm-act-conv-norm plus a skip path, then the activation (the layout of MONAI's ``UnetResBlock``).

    The skip path is the identity when the channel count is kept, else a 1x1
    convolution and a normalization layer. Both commute with the grid symmetries.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, options: dict) -> None:
        super().__init__()
        self.conv1 = _ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, options)
        self.gradient = GradientMagnitude(spatial_dims, out_channels) if options["gradient_magnitude"] else nn.Identity()
        self.conv2 = _conv_from_options(spatial_dims, out_channels, out_channels, kernel_size, options)
        self.norm2 = _norm_or_identity(options["norm"], spatial_dims, out_channels)
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Sequential(
                make_conv(spatial_dims, "dense", in_channels, out_channels, 1, bias=options["bias"]),
                _norm_or_identity(options["norm"], spatial_dims, out_channels),
            )
        self.act = get_act_layer(options["act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.gradient(self.conv1(x))))
        return self.act(out + self.skip(x))


def _norm_or_identity(norm, spatial_dims: int, channels: int) -> nn.Module:
    if norm is None:
        return nn.Identity()
    return get_norm_layer(norm, spatial_dims=spatial_dims, channels=channels)


def _conv_from_options(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, options: dict):
    return make_conv(
        spatial_dims,
        options["conv"],
        in_channels,
        out_channels,
        kernel_size,
        bias=options["bias"],
        padding_mode=options["padding_mode"],
        gmr_kwargs=options["gmr_kwargs"],
    )


class GMRUNet(nn.Module):
    """UNet of GMR convolutions, equivariant to the 48 cube symmetries (8 square symmetries in 2D).

    Level ``i`` (0 = full resolution) has ``features[i]`` channels and uses
    kernels of ``kernel_sizes[i]`` voxels. The encoder runs ``encoder_blocks[i]``
    blocks of two convolutions at level ``i`` and pools by 2 between levels. The decoder
    up-samples by 2 (1x1 convolution to ``features[i]`` channels, then
    interpolation), concatenates the skip connection, and runs a block with the
    level's kernel size. A 1x1 convolution maps the full-resolution features to
    ``out_channels`` logits.

    Args:
        spatial_dims: 3 for volumes, 2 for slices.
        in_channels: number of input channels (image modalities).
        out_channels: number of output channels (classes, background included).
        features: channels per level, at least two levels. The default is the
            nnU-Net 3D width capped at 320 over five levels.
        kernel_sizes: odd kernel size per level, in voxels, or one int for all
            levels. ``None`` means ``(9, 7, 5, 5, 3)``, cut to the number of levels
            (and extended with 3 for more than five). Large kernels at fine levels are cheap in parameters for GMR
            (a 9x9x9 kernel has 5 weights per channel pair) but not in compute:
            the default dense forward strategy still costs ``k**3`` multiply-adds
            per voxel and channel pair, so small machines may prefer smaller sizes.
        conv: ``"gmr"`` (GMR layers) or ``"dense"`` (``nn.Conv3d``/``nn.Conv2d`` of
            the same sizes, the plain UNet baseline).
        residual: use residual blocks instead of two plain convolutions per level.
        encoder_blocks: blocks per encoder level, one int for all levels or one
            per level (default 1). Extra blocks deepen the encoder only, as in
            residual-encoder UNets; the decoder keeps one block per level.
        deep_supervision: add 1x1 heads on the coarser decoder levels. In training
            mode ``forward`` then returns a list of logits
            ``[full_res, half_res, quarter_res, ...]``; head ``j`` has spatial size
            ``input_size / 2**j``. In eval mode it returns the full-resolution logits.
        num_deep_supervision_heads: number of coarser heads; default (None) is one
            per decoder level below full resolution, ``len(features) - 2``.
        dropout: dropout probability after each convolution's normalization (0 = off).
        pooling: ``"max"`` or ``"avg"`` (2x2x2 window, stride 2), or ``"blur"``:
            a separable binomial filter ``[1, 3, 3, 1] / 8`` per axis at stride 2,
            so each output voxel is centred on the same 2x2x2 cell as average
            pooling but reads a 4x4x4 neighbourhood with smoothly falling weights.
        upsample: interpolation used to double the size: ``"linear"`` (trilinear in
            3D, bilinear in 2D, ``align_corners=False``) or ``"nearest"``.
        norm: MONAI normalization name or ``(name, kwargs)``; ``None`` disables it.
        act: MONAI activation name or ``(name, kwargs)``.
        padding_mode: padding of every convolution: ``"zeros"``, ``"reflect"``,
            ``"replicate"`` or ``"circular"``.
        input_padding: what happens when an input size is not a multiple of
            ``size_divisor``. ``"symmetric"`` (default) pads the input with zeros
            to the next multiple, ``pad // 2`` voxels before and the rest after,
            and crops the logits back to the input size. When the padding along an
            axis is odd, a flip of that axis moves the extra voxel to the other
            side. The pooling cells then fall one voxel apart, so equivariance to that
            flip is lost, not merely approximate (a relative error of 0.3 to 1.0 on
            untrained networks). Pad to a multiple yourself when the symmetry matters.
            ``"error"`` raises ``InputError`` instead.
        gmr_kwargs: extra keyword arguments for every GMR layer (``num_rings``,
            ``ring_profile``, ``strategy``). Only valid with ``conv="gmr"``.
        gradient_magnitude: insert a ``GradientMagnitude`` layer between the two
            convolutions of every block, so that each block also receives how
            steeply its features change. It keeps the grid symmetries exactly and adds
            ``features[i] ** 2`` parameters per block; on a CPU it made a training
            step of the quick preset about a fifth slower.

    Attributes:
        size_divisor: ``2 ** (len(features) - 1)``; inputs whose spatial sizes are
            multiples of it need no padding and keep the symmetry exactly.

    Raises:
        InputError: an argument is out of range or of the wrong kind.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        kernel_sizes: Sequence[int] | int | None = None,
        conv: str = "gmr",
        residual: bool = False,
        encoder_blocks: Sequence[int] | int = 1,
        deep_supervision: bool = False,
        num_deep_supervision_heads: int | None = None,
        dropout: float = 0.0,
        pooling: str = "max",
        upsample: str = "linear",
        norm: str | tuple | None = _DEFAULT_NORM,
        act: str | tuple = _DEFAULT_ACT,
        padding_mode: str = "zeros",
        input_padding: str = "symmetric",
        gmr_kwargs: dict | None = None,
        gradient_magnitude: bool = False,
    ) -> None:
        super().__init__()
        features, kernel_sizes = _validate_levels(features, kernel_sizes)
        encoder_blocks = _validate_encoder_blocks(encoder_blocks, len(features))
        _validate_choices(spatial_dims, in_channels, out_channels, conv, pooling, upsample, input_padding)
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise InputError(f"GMRUNet: dropout must be a probability in [0, 1), got {dropout!r}")
        if not isinstance(gradient_magnitude, bool):
            raise InputError(f"GMRUNet: gradient_magnitude must be a bool (true or false in a YAML config), "
                             f"got {gradient_magnitude!r}")
        if gmr_kwargs and conv != "gmr":
            raise InputError(f"GMRUNet: gmr_kwargs {sorted(gmr_kwargs)} only apply to conv='gmr', got conv={conv!r}")
        num_levels = len(features)
        if num_deep_supervision_heads is None:
            num_deep_supervision_heads = num_levels - 2 if deep_supervision else 0
        if not deep_supervision and num_deep_supervision_heads:
            raise InputError("GMRUNet: num_deep_supervision_heads needs deep_supervision=True")
        if not isinstance(num_deep_supervision_heads, int) or not 0 <= num_deep_supervision_heads <= num_levels - 2:
            raise InputError(
                f"GMRUNet: num_deep_supervision_heads must be an int in [0, {num_levels - 2}] "
                f"(decoder levels below full resolution), got {num_deep_supervision_heads!r}"
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.kernel_sizes = kernel_sizes
        self.conv = conv
        self.residual = bool(residual)
        self.encoder_blocks = encoder_blocks
        self.deep_supervision = bool(deep_supervision)
        self.num_deep_supervision_heads = num_deep_supervision_heads
        self.pooling = pooling
        self.upsample = upsample
        self.input_padding = input_padding
        self.size_divisor = 2 ** (num_levels - 1)
        self.has_norm = norm is not None

        options = {
            "conv": conv,
            "norm": norm,
            "act": act,
            "dropout": float(dropout),
            "bias": norm is None,  # a bias before an affine normalization only shifts the mean it removes
            "padding_mode": padding_mode,
            "gmr_kwargs": dict(gmr_kwargs or {}),
            "gradient_magnitude": bool(gradient_magnitude),
        }
        block_type = _ResidualBlock if residual else _PlainBlock

        # Encoder: encoder_blocks[level] blocks per level. Pooling between levels happens in forward.
        # A single block stays unwrapped, so its parameter names do not depend on this option.
        self.encoders = nn.ModuleList()
        channels = in_channels
        for level in range(num_levels):
            blocks = [block_type(spatial_dims, channels, features[level], kernel_sizes[level], options)]
            blocks += [
                block_type(spatial_dims, features[level], features[level], kernel_sizes[level], options)
                for _ in range(encoder_blocks[level] - 1)
            ]
            self.encoders.append(blocks[0] if len(blocks) == 1 else nn.Sequential(*blocks))
            channels = features[level]
        if pooling == "blur":
            self.pool = BlurPool(spatial_dims)
        else:
            pool_type = {"max": (nn.MaxPool2d, nn.MaxPool3d), "avg": (nn.AvgPool2d, nn.AvgPool3d)}[pooling]
            self.pool = pool_type[spatial_dims - 2](kernel_size=2, stride=2)

        # Decoder: entry i brings level i + 1 up to level i and merges it with the skip connection.
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(num_levels - 1):
            self.upsamplers.append(
                UpSample(
                    spatial_dims,
                    in_channels=features[level + 1],
                    out_channels=features[level],
                    scale_factor=2,
                    mode="nontrainable",
                    pre_conv="default",
                    interp_mode=upsample,
                    align_corners=False if upsample == "linear" else None,
                )
            )
            self.decoders.append(
                block_type(spatial_dims, 2 * features[level], features[level], kernel_sizes[level], options)
            )

        # Heads: 1x1 convolutions, where heads[j] reads decoder level j.
        self.heads = nn.ModuleList(
            make_conv(spatial_dims, "dense", features[level], out_channels, 1)
            for level in range(num_deep_supervision_heads + 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Compute logits.

        Args:
            x: input of shape ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, out_channels, *spatial)`` logits; in training mode with deep
            supervision, the list of ``forward_heads``.
        """
        if self.training and self.deep_supervision:
            return self.forward_heads(x)
        return self._forward(x, num_heads=1)[0]

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the logits of every head, whatever the mode.

        Args:
            x: input of shape ``(B, in_channels, *spatial)``; with coarser heads
                its spatial sizes must be multiples of ``size_divisor``.

        Returns:
            ``[full_res, half_res, ...]``: ``1 + num_deep_supervision_heads`` tensors,
            head ``j`` of shape ``(B, out_channels, *(spatial / 2**j))``.
        """
        return self._forward(x, num_heads=len(self.heads))

    def _forward(self, x: torch.Tensor, num_heads: int) -> list[torch.Tensor]:
        padding = self._check_input(x, allow_padding=num_heads == 1)
        sizes = x.shape[2:]
        if any(before or after for before, after in padding):
            x = F.pad(x, [side for axis in reversed(padding) for side in axis])

        # Encoder: keep each level's output for the skip connections.
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)

        # Decoder: from the coarsest level up, collecting head inputs on the way.
        head_inputs: dict[int, torch.Tensor] = {}
        for level in reversed(range(len(self.decoders))):
            x = self.upsamplers[level](x)
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1))
            if level < num_heads:
                head_inputs[level] = x

        outputs = [self.heads[level](head_inputs[level]) for level in range(num_heads)]
        if any(before or after for before, after in padding):
            crop = tuple(slice(before, before + size) for (before, _), size in zip(padding, sizes))
            outputs[0] = outputs[0][(slice(None), slice(None)) + crop]
        return outputs

    def _check_input(self, x: torch.Tensor, allow_padding: bool) -> list[tuple[int, int]]:
        """Validate the input shape and return the ``(before, after)`` zero padding per spatial axis."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise InputError(
                f"GMRUNet expects input of shape (B, {self.in_channels}, "
                f"{', '.join(['size'] * self.spatial_dims)}), got {tuple(x.shape)}"
            )
        sizes = list(x.shape[2:])
        missing = [(-size) % self.size_divisor for size in sizes]
        coarsest = [(size + extra) // self.size_divisor for size, extra in zip(sizes, missing)]
        if self.has_norm and all(size == 1 for size in coarsest):
            # Normalizing a single voxel per channel erases it (torch rejects it for instance norm).
            raise InputError(
                f"GMRUNet: spatial size {tuple(sizes)} leaves one voxel at the coarsest level "
                f"(size_divisor={self.size_divisor}); use at least {2 * self.size_divisor} voxels along one axis "
                f"or fewer levels"
            )
        if not any(missing):
            return [(0, 0)] * self.spatial_dims
        if self.input_padding == "error" or not allow_padding:
            reason = (
                "input_padding='error'" if self.input_padding == "error" else "the deep supervision heads are requested"
            )
            raise InputError(
                f"GMRUNet: spatial size {tuple(sizes)} is not a multiple of size_divisor={self.size_divisor} "
                f"(2 ** (levels - 1)) and {reason}; crop or pad the input to multiples of {self.size_divisor}, "
                f"e.g. {tuple(size + extra for size, extra in zip(sizes, missing))}"
            )
        return [(extra // 2, extra - extra // 2) for extra in missing]

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, conv={self.conv!r}, features={self.features}, "
            f"kernel_sizes={self.kernel_sizes}, residual={self.residual}, encoder_blocks={self.encoder_blocks}, "
            f"deep_supervision_heads={self.num_deep_supervision_heads}, size_divisor={self.size_divisor}"
        )


def _validate_levels(features, kernel_sizes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check ``features`` and ``kernel_sizes`` and return them as tuples of equal length."""
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise InputError(f"GMRUNet: features must be a sequence of channel counts, got {features!r}")
    features = tuple(features)
    if len(features) < 2 or not all(isinstance(value, int) and value > 0 for value in features):
        raise InputError(f"GMRUNet: features must hold at least two positive ints (one per level), got {features!r}")
    if kernel_sizes is None:
        kernel_sizes = (_DEFAULT_KERNEL_SIZES + (3,) * len(features))[: len(features)]
    if isinstance(kernel_sizes, int):
        kernel_sizes = (kernel_sizes,) * len(features)
    if isinstance(kernel_sizes, (str, bytes)) or not isinstance(kernel_sizes, Sequence):
        raise InputError(f"GMRUNet: kernel_sizes must be an int or a sequence, got {kernel_sizes!r}")
    kernel_sizes = tuple(kernel_sizes)
    if len(kernel_sizes) != len(features):
        raise InputError(
            f"GMRUNet: kernel_sizes needs one entry per level ({len(features)} levels from features={features}), "
            f"got {kernel_sizes!r}"
        )
    if not all(isinstance(value, int) and value > 0 and value % 2 == 1 for value in kernel_sizes):
        raise InputError(
            f"GMRUNet: every kernel size must be an odd positive int so the kernel has a centre voxel, "
            f"got {kernel_sizes!r}"
        )
    return features, kernel_sizes


def _validate_encoder_blocks(encoder_blocks, num_levels: int) -> tuple[int, ...]:
    """Check ``encoder_blocks`` and return one positive block count per level."""
    requested = encoder_blocks
    if isinstance(encoder_blocks, int) and not isinstance(encoder_blocks, bool):
        encoder_blocks = (encoder_blocks,) * num_levels
    if isinstance(encoder_blocks, (str, bytes)) or not isinstance(encoder_blocks, Sequence):
        raise InputError(f"GMRUNet: encoder_blocks must be an int or a sequence of ints, got {requested!r}")
    encoder_blocks = tuple(encoder_blocks)
    if len(encoder_blocks) != num_levels or not all(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1 for value in encoder_blocks
    ):
        raise InputError(
            f"GMRUNet: encoder_blocks needs one int >= 1, or one per level ({num_levels} levels, one per entry "
            f"of features), got {requested!r}"
        )
    return encoder_blocks


class BlurPool(nn.Module):
    """Halve each spatial size with a fixed binomial low-pass filter: anti-aliased down-sampling.

    Output voxel ``j`` is ``sum_t b[t] x[2 j - 1 + t]`` along each axis, with
    ``b = [1, 3, 3, 1] / 8`` and one voxel of zero padding on each side. Its
    centre, ``2 j + 0.5``, is that of the 2x2 cell ``{2 j, 2 j + 1}`` of average
    pooling, and ``b`` is symmetric, so on even sizes the operation commutes with
    flips and axis permutations exactly as average pooling does. The filter
    is separable, has no parameters and is the same for every channel.

    Args:
        spatial_dims: 2 or 3.
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8.0
        self.spatial_dims = spatial_dims
        self.register_buffer("taps", taps, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        taps = self.taps.to(dtype=x.dtype)

        # One pass per axis: a (4, 1, 1) filter at stride (2, 1, 1), then the next axis.
        for axis in range(self.spatial_dims):
            shape = [1] * self.spatial_dims
            shape[axis] = 4
            stride = [1] * self.spatial_dims
            stride[axis] = 2
            padding = [0] * self.spatial_dims
            padding[axis] = 1
            weight = taps.reshape(1, 1, *shape).expand(channels, 1, *shape)
            x = conv(x, weight, stride=stride, padding=padding, groups=channels)
        return x


def _validate_choices(spatial_dims, in_channels, out_channels, conv, pooling, upsample, input_padding) -> None:
    if spatial_dims not in (2, 3):
        raise InputError(f"GMRUNet: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"GMRUNet: {name} must be a positive int, got {value!r}")
    for name, value, choices in (
        ("conv", conv, CONV_TYPES),
        ("pooling", pooling, POOLING_TYPES),
        ("upsample", upsample, UPSAMPLE_MODES),
        ("input_padding", input_padding, INPUT_PADDING_MODES),
    ):
        if value not in choices:
            raise InputError(f"GMRUNet: {name} must be one of {choices}, got {value!r}")
