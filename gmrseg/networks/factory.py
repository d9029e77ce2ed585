"""Network factory: one place that turns a config's network name and arguments into a module.

Training and inference both call ``build_network``; a run folder stores the name
and keyword arguments so a checkpoint can be rebuilt exactly. Names:

- ``"gmrunet"``: ``GMRUNet`` with GMR convolutions.
- ``"unet"``: the same UNet with dense convolutions (``GMRUNet(conv="dense")``),
  the baseline with an identical layout.
- ``"dynunet"``: MONAI ``DynUNet`` with nnU-Net-like defaults (5 levels,
  filters 32..320, 3x3x3 kernels, instance norm, LeakyReLU 0.01).
- ``"basicunet"``, ``"segresnet"``: MONAI ``BasicUNet`` and ``SegResNet``.
- ``"converted:<monai name>"``: one of MONAI's ``unet``, ``basicunet``,
  ``dynunet`` or ``segresnet`` passed through ``convert_to_gmr``.

Every network returned has an int attribute ``size_divisor``: spatial input
sizes that are multiples of it pass through every down-sampling step evenly.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

from gmrseg.errors import InputError
from gmrseg.networks.convert import convert_to_gmr
from gmrseg.networks.gmr_unet import GMRUNet

__all__ = ["NETWORK_NAMES", "MONAI_NETWORKS", "build_network", "is_equivariant", "valid_arguments"]

logger = logging.getLogger(__name__)

MONAI_NETWORKS = ("unet", "basicunet", "dynunet", "segresnet")
NETWORK_NAMES = ("gmrunet", "unet", "dynunet", "basicunet", "segresnet") + tuple(
    f"converted:{name}" for name in MONAI_NETWORKS
)

# Keyword arguments of convert_to_gmr accepted under the "conversion" key of a converted network.
CONVERSION_ARGUMENTS = ("kernel_size", "weight_init", "num_rings", "ring_profile", "strategy")

# Arguments every builder receives from build_network itself, never through **kwargs.
_POSITIONAL = ("spatial_dims", "in_channels", "out_channels")

_NNUNET_FEATURES = (32, 64, 128, 256, 320)
_NNUNET_NORM = ("instance", {"affine": True})
_NNUNET_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class _DynUNet(DynUNet):
    """MONAI ``DynUNet`` whose deep supervision output is a list, like ``GMRUNet``'s.

    In training mode with deep supervision MONAI stacks the heads along dim 1,
    each up-sampled to full resolution. This class returns them as a list
    ``[full_res, head_1, ...]`` of ``(B, C, *spatial)`` tensors instead. The
    state dict is MONAI's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        output = super().forward(x)
        if self.training and self.deep_supervision:
            return list(torch.unbind(output, dim=1))
        return output


_MONAI_TYPES: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "basicunet": BasicUNet,
    "dynunet": _DynUNet,
    "segresnet": SegResNet,
}


def valid_arguments(name: str) -> tuple[str, ...]:
    """Return the keyword arguments ``build_network(name, ...)`` accepts, sorted.

    Raises:
        InputError: ``name`` is not in ``NETWORK_NAMES``.
    """
    name = _check_name(name)
    if name == "gmrunet":
        return _signature_arguments(GMRUNet)
    if name == "unet":
        return tuple(argument for argument in _signature_arguments(GMRUNet) if argument not in ("conv", "gmr_kwargs"))
    arguments = _signature_arguments(_MONAI_TYPES[name.removeprefix("converted:")])
    if name.startswith("converted:"):
        arguments = tuple(sorted(arguments + ("conversion",)))
    return arguments


def is_equivariant(name: str) -> bool:
    """Return True for networks built from GMR layers: ``"gmrunet"`` and every ``"converted:*"`` name.

    Note:
        A converted MONAI network keeps its own down- and up-sampling, and some of
        those layers break the symmetry (stride-2 convolutions on even sizes,
        transposed convolutions). The network's ``conversion_report`` lists them;
        ``"gmrunet"`` is the network whose full equivariance is tested.

    Raises:
        InputError: ``name`` is not in ``NETWORK_NAMES``.
    """
    name = _check_name(name)
    return name == "gmrunet" or name.startswith("converted:")


def build_network(name: str, in_channels: int, out_channels: int, spatial_dims: int = 3, **kwargs) -> nn.Module:
    """Build a segmentation network by name.

    Args:
        name: one of ``NETWORK_NAMES``.
        in_channels: input channels (image modalities).
        out_channels: output channels (classes including background).
        spatial_dims: 3 for volumes, 2 for slices.
        **kwargs: the network's own constructor arguments (see ``valid_arguments``);
            YAML lists are accepted where tuples are expected. Converted networks
            also take ``conversion``, a dict of ``convert_to_gmr`` arguments
            (``kernel_size``, ``weight_init``, ``num_rings``, ``ring_profile``, ``strategy``).

    Returns:
        The network, with an int attribute ``size_divisor``. Converted networks
        also carry ``conversion_report`` (a ``ConversionReport``).

    Raises:
        InputError: unknown name, unknown argument (the message lists the valid
            ones), or an argument value the network rejects.
    """
    name = _check_name(name)
    for argument, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"build_network({name!r}): {argument} must be a positive int, got {value!r}")
    if spatial_dims not in (2, 3):
        raise InputError(f"build_network({name!r}): spatial_dims must be 2 or 3, got {spatial_dims!r}")
    allowed = valid_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InputError(
            f"build_network({name!r}): unknown argument(s) {unknown}; valid arguments are {', '.join(allowed)}"
        )
    kwargs = {key: _tuples_from_lists(key, value) for key, value in kwargs.items()}

    if name in ("gmrunet", "unet"):
        conv = {"conv": "dense"} if name == "unet" else {}
        return GMRUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **conv, **kwargs)

    monai_name = name.removeprefix("converted:")
    conversion = kwargs.pop("conversion", None) or {}
    model = _build_monai(name, monai_name, spatial_dims, in_channels, out_channels, kwargs)
    if name.startswith("converted:"):
        model.conversion_report = _convert(name, model, conversion)
    return model


def _check_name(name) -> str:
    if not isinstance(name, str) or name.strip().lower() not in NETWORK_NAMES:
        raise InputError(f"unknown network {name!r}; valid names are {', '.join(NETWORK_NAMES)}")
    return name.strip().lower()


def _signature_arguments(network_type: type) -> tuple[str, ...]:
    parameters = inspect.signature(network_type.__init__).parameters
    return tuple(sorted(argument for argument in parameters if argument not in ("self",) + _POSITIONAL))


def _tuples_from_lists(key: str, value):
    """Turn YAML lists into tuples where MONAI expects ``(name, kwargs)`` pairs or sequences."""
    if isinstance(value, list):
        return tuple(_tuples_from_lists(key, item) for item in value)
    return value


def _monai_defaults(monai_name: str, converted: bool, kwargs: dict) -> dict:
    """Return default arguments for a MONAI network, filled in where ``kwargs`` is silent."""
    if monai_name == "dynunet":
        filters = tuple(kwargs.get("filters", _NNUNET_FEATURES))
        num_levels = len(kwargs.get("strides", filters))
        defaults = {
            "filters": filters,
            "kernel_size": (3,) * num_levels,
            "strides": (1,) + (2,) * (num_levels - 1),
            "upsample_kernel_size": (2,) * (num_levels - 1),
            "norm_name": _NNUNET_NORM,
            "act_name": _NNUNET_ACT,
        }
        if kwargs.get("deep_supervision"):
            # One head per decoder level below full resolution, as GMRUNet does.
            defaults["deep_supr_num"] = max(num_levels - 2, 1)
        return defaults
    if monai_name == "unet":
        return {"channels": _NNUNET_FEATURES, "strides": (2,) * (len(_NNUNET_FEATURES) - 1), "num_res_units": 2}
    if monai_name == "basicunet" and converted:
        # Interpolation instead of the default transposed convolution, so the
        # converted BasicUNet keeps the symmetry end to end.
        return {"upsample": "nontrainable"}
    return {}


def _build_monai(name: str, monai_name: str, spatial_dims: int, in_channels: int, out_channels: int, kwargs: dict):
    arguments = {**_monai_defaults(monai_name, name.startswith("converted:"), kwargs), **kwargs}
    try:
        model = _MONAI_TYPES[monai_name](
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **arguments
        )
    except (TypeError, ValueError, AssertionError, KeyError) as error:
        raise InputError(f"build_network({name!r}): MONAI rejected the arguments {arguments}: {error}") from error
    model.size_divisor = _size_divisor(monai_name, arguments, spatial_dims)
    return model


def _size_divisor(monai_name: str, arguments: dict, spatial_dims: int) -> int:
    """Return the smallest int that every axis's total down-sampling factor divides."""
    if monai_name == "basicunet":
        return 16  # four 2x2x2 max-pooling steps
    if monai_name == "segresnet":
        return 2 ** (len(arguments.get("blocks_down", (1, 2, 2, 4))) - 1)
    factors = [1] * spatial_dims
    for stride in arguments["strides"]:
        per_axis = stride if isinstance(stride, Sequence) else (stride,) * spatial_dims
        factors = [factor * int(step) for factor, step in zip(factors, per_axis)]
    return math.lcm(*factors)


def _convert(name: str, model: nn.Module, conversion: dict):
    if not isinstance(conversion, dict):
        raise InputError(f"build_network({name!r}): conversion must be a mapping, got {conversion!r}")
    unknown = sorted(set(conversion) - set(CONVERSION_ARGUMENTS))
    if unknown:
        raise InputError(
            f"build_network({name!r}): unknown conversion argument(s) {unknown}; "
            f"valid ones are {', '.join(CONVERSION_ARGUMENTS)}"
        )
    report = convert_to_gmr(model, **conversion)
    if report.symmetry_breaking:
        logger.warning(
            "%s: %d layer(s) still break the grid symmetries: %s",
            name,
            len(report.symmetry_breaking),
            "; ".join(str(note) for note in report.symmetry_breaking),
        )
    return report
