"""Conversion of weights saved by the GMR-Conv 1.0.3 reference package.

The reference ``GMR_Conv3d`` / ``GMR_Conv2d`` state dict contains ``weight``
``(C_out, C_in / groups, n)``, ``bias``, ``log_sigmas`` ``(n,)``, ``mus`` (always
``0 .. n-1``), ``weight_index_mat`` and ``default_weight_index_mat`` (both
``(1, 1, n, k^D)``, the 0/1 distance shells). With ``ring_profile="binned"`` this
package computes the same rings from ``log_sigma``, so only the shells need checking.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gmrseg.layers.rings import reference_bins

__all__ = ["convert_reference_state_dict"]

_REQUIRED_KEYS = ("weight", "log_sigmas", "mus", "weight_index_mat")


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], spatial_dims: int = 3, groups: int = 1
) -> tuple[dict[str, torch.Tensor], dict]:
    """Convert one reference GMR convolution's state dict for ``GMRConv3d`` / ``GMRConv2d``.

    Args:
        state_dict: the layer's own state dict (keys without a module prefix).
        spatial_dims: 3 for ``GMR_Conv3d`` (the default), 2 for ``GMR_Conv2d``. It cannot
            be inferred, because ``k^D`` is ambiguous (9^3 = 27^2).
        groups: the reference layer's ``groups``, which its state dict does not record.

    Returns:
        ``(state_dict, kwargs)``: load the state dict into
        ``GMRConv3d(**kwargs, stride=..., padding=..., dilation=...)``. ``kwargs`` contains the
        channel counts, ``kernel_size``, ``num_rings``, ``groups``, ``bias`` and
        ``ring_profile="binned"``. Stride, padding (the reference's default is 0, this
        package's is "same"), dilation and padding mode are not in the state dict.

    Raises:
        ValueError: a key is missing, a shape does not fit, the index matrix was trained
            (``train_index_mat=True``), or the shells differ from the reference's binning.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    missing = [key for key in _REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise ValueError(
            f"not a GMR-Conv reference state dict: missing {missing} (found {sorted(state_dict)}); "
            "layers built with gaussian_mixture_ring=False have no ring widths and cannot be converted"
        )

    weight = state_dict["weight"]
    log_sigmas = state_dict["log_sigmas"]
    index_matrix = state_dict["weight_index_mat"]
    if weight.dim() != 3:
        raise ValueError(f"reference weight must have shape (C_out, C_in / groups, n), got {tuple(weight.shape)}")
    out_channels, in_per_group, num_rings = weight.shape
    if not isinstance(groups, int) or groups < 1 or out_channels % groups:
        raise ValueError(f"groups must be a positive int dividing the {out_channels} output channels, got {groups!r}")
    if log_sigmas.shape != (num_rings,):
        raise ValueError(f"log_sigmas must have shape ({num_rings},) to match weight, got {tuple(log_sigmas.shape)}")
    if not torch.equal(state_dict["mus"].float().cpu(), torch.arange(num_rings, dtype=torch.float32)):
        raise ValueError(f"mus must be 0 .. {num_rings - 1} as the reference package sets them, got {state_dict['mus']}")

    # The kernel size follows from the flattened shells: k^D voxels.
    voxels = index_matrix.shape[-1]
    kernel_size = round(voxels ** (1.0 / spatial_dims))
    if kernel_size**spatial_dims != voxels or index_matrix.shape[-2] != num_rings:
        raise ValueError(
            f"weight_index_mat of shape {tuple(index_matrix.shape)} does not hold {num_rings} shells "
            f"of a {spatial_dims}D cubic kernel"
        )
    shells = index_matrix.reshape(-1, num_rings, voxels)[0].float().cpu()
    default = state_dict.get("default_weight_index_mat")
    if default is not None and not torch.equal(shells, default.reshape(-1, num_rings, voxels)[0].float().cpu()):
        raise ValueError(
            "weight_index_mat differs from default_weight_index_mat: the reference layer was trained with "
            "train_index_mat=True, whose free-form shells no ring profile here can represent"
        )
    expected = reference_bins(kernel_size, num_rings, spatial_dims, dtype=torch.float32).flatten(1)
    if not torch.equal(shells, expected):
        raise ValueError(
            "weight_index_mat does not match the reference binning of a "
            f"{kernel_size}^{spatial_dims} kernel into {num_rings} shells (force_circular=False is not supported)"
        )

    converted = {"weight": weight.clone(), "log_sigma": log_sigmas.clone()}
    has_bias = state_dict.get("bias") is not None
    if has_bias:
        converted["bias"] = state_dict["bias"].clone()
    kwargs = {
        "in_channels": in_per_group * groups,
        "out_channels": out_channels,
        "kernel_size": kernel_size,
        "groups": groups,
        "bias": has_bias,
        "num_rings": num_rings,
        "ring_profile": "binned",
    }
    return converted, kwargs
