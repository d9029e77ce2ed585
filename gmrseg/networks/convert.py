"""Conversion of an existing network (MONAI UNet, BasicUNet, DynUNet, SegResNet, ...) to GMR convolutions.

``convert_to_gmr`` swaps every ``nn.Conv3d``/``nn.Conv2d`` with a kernel larger
than 1 for a GMR layer of the same shape, in place. It reports what it changed
and which layers still break the grid symmetries, because GMR layers alone do
not make a network equivariant: its down- and up-sampling must keep the symmetry too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from gmrseg.errors import InputError
from gmrseg.layers import GMRConv2d, GMRConv3d

__all__ = ["ConversionReport", "ReplacedLayer", "LayerNote", "convert_to_gmr", "find_symmetry_breaking_layers"]

logger = logging.getLogger(__name__)

WEIGHT_INIT_MODES = ("reset", "project")

_CONV_TYPES = {nn.Conv2d: GMRConv2d, nn.Conv3d: GMRConv3d}
_TRANSPOSED_TYPES = (nn.ConvTranspose2d, nn.ConvTranspose3d)
_POOL_TYPES = (nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)


@dataclass(frozen=True)
class ReplacedLayer:
    """One convolution that ``convert_to_gmr`` replaced.

    Attributes:
        name: qualified module name, as in ``model.named_modules()``.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size_before: kernel size of the dense convolution, per axis.
        kernel_size_after: odd kernel size of the GMR layer.
        stride: stride, kept from the dense convolution.
        num_rings: rings of the GMR layer.
        parameters_before: parameter count of the dense convolution.
        parameters_after: parameter count of the GMR layer (weights, ring widths, bias).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size_before: tuple[int, ...]
    kernel_size_after: int
    stride: int
    num_rings: int
    parameters_before: int
    parameters_after: int


@dataclass(frozen=True)
class LayerNote:
    """A layer named with the reason it was kept dense or breaks the grid symmetries."""

    name: str
    layer: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.layer}): {self.reason}"


@dataclass
class ConversionReport:
    """Record of the changes ``convert_to_gmr`` made to a network.

    Attributes:
        replaced: convolutions replaced by GMR layers.
        skipped: convolutions with a kernel larger than 1 left dense, with the reason.
        symmetry_breaking: layers of the converted network that break the
            symmetries of the grid, always or for some input sizes (see
            ``find_symmetry_breaking_layers``).
    """

    replaced: list[ReplacedLayer] = field(default_factory=list)
    skipped: list[LayerNote] = field(default_factory=list)
    symmetry_breaking: list[LayerNote] = field(default_factory=list)

    @property
    def is_equivariant(self) -> bool:
        """True when no layer is known to break the symmetries (for inputs whose sizes suit every stride)."""
        return not self.symmetry_breaking

    def parameter_counts(self) -> tuple[int, int]:
        """Return the parameters of the replaced layers ``(before, after)``."""
        before = sum(layer.parameters_before for layer in self.replaced)
        after = sum(layer.parameters_after for layer in self.replaced)
        return before, after

    def summary(self) -> str:
        """Return a multi-line, human-readable summary."""
        before, after = self.parameter_counts()
        lines = [f"replaced {len(self.replaced)} convolutions ({before} -> {after} parameters)"]
        lines += [
            f"  {layer.name}: {layer.in_channels}->{layer.out_channels}, kernel "
            f"{'x'.join(map(str, layer.kernel_size_before))} -> {layer.kernel_size_after}, "
            f"stride {layer.stride}, {layer.num_rings} rings"
            for layer in self.replaced
        ]
        if self.skipped:
            lines.append(f"kept dense ({len(self.skipped)}):")
            lines += [f"  {note}" for note in self.skipped]
        if self.symmetry_breaking:
            lines.append(f"layers that break the grid symmetries ({len(self.symmetry_breaking)}):")
            lines += [f"  {note}" for note in self.symmetry_breaking]
        else:
            lines.append("no layer known to break the grid symmetries")
        return "\n".join(lines)


def convert_to_gmr(
    model: nn.Module,
    kernel_size: int | None = None,
    *,
    weight_init: str = "reset",
    **gmr_kwargs,
) -> ConversionReport:
    """Replace, in place, every dense convolution with a kernel larger than 1 by a GMR layer.

    Each ``nn.Conv3d``/``nn.Conv2d`` whose kernel has a side larger than 1 becomes a
    ``GMRConv3d``/``GMRConv2d`` with the same channels, stride, dilation, groups,
    bias and padding mode, on the same device and with the same dtype. The bias
    is copied. Padding is chosen so the output shape does not change. Transposed
    convolutions, 1x1 convolutions and other layers are left as they are.

    A dense kernel cannot be copied into a GMR layer: the layer can only
    represent radially symmetric kernels. ``weight_init="reset"`` (default) keeps the GMR
    layer's own initialization, the right choice before training from scratch.
    ``weight_init="project"`` sets the ring weights to the least-squares
    projection of each dense kernel onto the layer's rings (at their initial
    widths), i.e. the radially symmetric kernel closest to the trained one. It
    is a starting point for fine-tuning a trained network. It only applies when
    the kernel size is kept, and on a freshly initialized network it shrinks
    the kernels because most of a random kernel's energy is not radial.

    Args:
        model: network to convert, modified in place.
        kernel_size: odd kernel size for every GMR layer, in voxels. ``None``
            keeps each convolution's own size, which must then be odd and the
            same along every axis.
        weight_init: ``"reset"`` or ``"project"``, as described above.
        **gmr_kwargs: passed to every GMR layer (``num_rings``, ``ring_profile``,
            ``strategy``); ``num_rings`` is best left to its per-size default
            when kernel sizes differ.

    Returns:
        A ``ConversionReport``: the replaced layers, the convolutions kept dense
        and why, and the layers of the converted network that break the symmetries.

    Raises:
        InputError: ``kernel_size`` is not an odd positive int, ``weight_init`` is
            unknown, or ``gmr_kwargs`` contains an argument the GMR layers reject.
    """
    if kernel_size is not None and (
        isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0
    ):
        raise InputError(f"convert_to_gmr: kernel_size must be None or an odd positive int, got {kernel_size!r}")
    if weight_init not in WEIGHT_INIT_MODES:
        raise InputError(f"convert_to_gmr: weight_init must be one of {WEIGHT_INIT_MODES}, got {weight_init!r}")
    for forbidden in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"):
        if forbidden in gmr_kwargs:
            raise InputError(f"convert_to_gmr: {forbidden!r} is taken from each convolution and cannot be set")

    report = ConversionReport()

    # Collect first, then replace, so that named_modules never walks a half-converted model.
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in _CONV_TYPES and max(module.kernel_size) > 1
    ]
    for name, conv in candidates:
        new_size, reason = _target_kernel_size(conv, kernel_size)
        if reason is None:
            reason = _unsupported_settings(conv, new_size)
        if reason is not None:
            report.skipped.append(LayerNote(name, type(conv).__name__, reason))
            continue

        layer = _build_gmr_layer(conv, new_size, gmr_kwargs)
        if weight_init == "project" and new_size == conv.kernel_size[0]:
            _project_dense_kernel(conv, layer)
        _set_submodule(model, name, layer)
        report.replaced.append(
            ReplacedLayer(
                name=name,
                in_channels=conv.in_channels,
                out_channels=conv.out_channels,
                kernel_size_before=tuple(conv.kernel_size),
                kernel_size_after=new_size,
                stride=conv.stride[0],
                num_rings=layer.num_rings,
                parameters_before=_count_parameters(conv),
                parameters_after=_count_parameters(layer),
            )
        )

    report.symmetry_breaking = find_symmetry_breaking_layers(model)
    logger.info("convert_to_gmr: %s", report.summary().replace("\n", "; "))
    return report


def find_symmetry_breaking_layers(model: nn.Module) -> list[LayerNote]:
    """List the layers of ``model`` that break the 48 cube symmetries (8 in 2D), always or for some sizes.

    The rules, from the way each layer samples the grid:

    - a dense convolution with a kernel larger than 1 has a free kernel;
    - a transposed convolution with a kernel larger than 1 has a free kernel, and
      one with stride > 1 and kernel 1 places its inputs on one corner of each cell;
    - a GMR layer or pooling window with an odd kernel and stride ``s > 1`` keeps
      the symmetry only when the input size is ``1 + a multiple of s`` (then the
      first and last windows are centred on the first and last voxels). The report
      names these so the caller can choose input sizes to suit. A pooling window
      equal to its stride (2x2x2 cells) needs sizes that are multiples of the
      stride, which ``size_divisor`` already states, so it is not listed.

    Args:
        model: any network.

    Returns:
        One ``LayerNote`` per layer, in ``named_modules`` order.
    """
    notes: list[LayerNote] = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if type(module) in _CONV_TYPES and max(module.kernel_size) > 1:
            notes.append(LayerNote(name, kind, f"dense kernel {_size_text(module.kernel_size)} is not symmetric"))
        elif isinstance(module, _TRANSPOSED_TYPES):
            if max(module.kernel_size) > 1:
                notes.append(
                    LayerNote(name, kind, f"transposed convolution with a free kernel {_size_text(module.kernel_size)}")
                )
            elif max(module.stride) > 1:
                notes.append(LayerNote(name, kind, "transposed convolution with stride > 1 fills one corner per cell"))
        elif isinstance(module, (GMRConv2d, GMRConv3d)) and _max_stride(module.stride) > 1:
            stride = _max_stride(module.stride)
            notes.append(
                LayerNote(
                    name,
                    kind,
                    f"stride {stride} with kernel {module.kernel_size}: symmetric only when the input size "
                    f"at this layer is 1 + a multiple of {stride}",
                )
            )
        elif isinstance(module, _POOL_TYPES):
            reason = _pooling_reason(module)
            if reason is not None:
                notes.append(LayerNote(name, kind, reason))
    return notes


def _pooling_reason(pool: nn.Module) -> str | None:
    """Return why a pooling layer breaks the symmetries, or None when its windows map onto each other."""
    window = _as_tuple(pool.kernel_size)
    stride = _as_tuple(pool.stride if pool.stride else pool.kernel_size)
    if len(set(window)) > 1 or len(set(stride)) > 1:
        return f"anisotropic pooling window {window} or stride {stride}"
    if window == stride:
        return None  # non-overlapping cells tile the grid when the size is a multiple of the stride
    if stride[0] == 1:
        return None if window[0] % 2 == 1 else f"even pooling window {window[0]} with stride 1 is off-centre"
    if window[0] % 2 == 0:
        return f"even pooling window {window[0]} with stride {stride[0]} is off-centre"
    return (
        f"pooling window {window[0]} with stride {stride[0]}: "
        f"symmetric only when the input size is 1 + a multiple of {stride[0]}"
    )


def _target_kernel_size(conv: nn.Module, kernel_size: int | None) -> tuple[int, str | None]:
    """Return the GMR kernel size for ``conv``, or a reason to keep it dense."""
    sides = tuple(conv.kernel_size)
    if kernel_size is None:
        if len(set(sides)) != 1:
            return 0, f"kernel {_size_text(sides)} is not cubic; pass kernel_size to convert it"
        if sides[0] % 2 == 0:
            return 0, f"kernel {_size_text(sides)} is even and has no centre voxel; pass an odd kernel_size"
        return sides[0], None
    if any((kernel_size - side) % 2 for side in sides):
        return 0, f"kernel {_size_text(sides)} differs from {kernel_size} by an odd amount, so the output would shift"
    return kernel_size, None


def _unsupported_settings(conv: nn.Module, new_size: int) -> str | None:
    """Return why ``conv`` cannot become one GMR layer with an isotropic stride, dilation and padding, or None."""
    if isinstance(conv.padding, str):
        if conv.padding == "same" and max(conv.stride) == 1:
            return None
        return f"padding {conv.padding!r} is not supported with stride {tuple(conv.stride)}"
    for setting in ("stride", "dilation"):
        if len(set(getattr(conv, setting))) != 1:
            return f"anisotropic {setting} {tuple(getattr(conv, setting))}"
    paddings = {
        pad + dilation * (new_size - side) // 2
        for pad, dilation, side in zip(conv.padding, conv.dilation, conv.kernel_size)
    }
    if len(paddings) != 1:
        return f"padding {tuple(conv.padding)} would differ between axes"
    return None


def _build_gmr_layer(conv: nn.Module, new_size: int, gmr_kwargs: dict) -> nn.Module:
    if isinstance(conv.padding, str):
        padding: int | str = "same"
    else:
        padding = conv.padding[0] + conv.dilation[0] * (new_size - conv.kernel_size[0]) // 2
    layer_type = _CONV_TYPES[type(conv)]
    try:
        layer = layer_type(
            conv.in_channels,
            conv.out_channels,
            new_size,
            stride=conv.stride[0],
            padding=padding,
            dilation=conv.dilation[0],
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **gmr_kwargs,
        )
    except (TypeError, ValueError) as error:
        raise InputError(f"convert_to_gmr: the GMR layer rejected {sorted(gmr_kwargs)}: {error}") from error
    if conv.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(conv.bias)
    return layer


@torch.no_grad()
def _project_dense_kernel(conv: nn.Module, layer: nn.Module) -> None:
    """Set ``layer.weight`` to the least-squares fit of ``conv.weight`` by the layer's rings."""
    rings = layer.rings().flatten(1).to(torch.float64)  # (num_rings, k**D)
    dense = conv.weight.flatten(2).to(torch.float64)  # (C_out, C_in / groups, k**D)
    solution = torch.linalg.lstsq(rings.T, dense.reshape(-1, rings.shape[1]).T).solution  # (num_rings, C_out * C_in)
    layer.weight.copy_(solution.T.reshape(layer.weight.shape).to(layer.weight.dtype))


def _set_submodule(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, layer)


def _count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _max_stride(stride) -> int:
    return max(_as_tuple(stride))


def _as_tuple(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _size_text(sides) -> str:
    return "x".join(str(side) for side in sides)
