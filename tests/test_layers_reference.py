"""Weights of the GMR-Conv 1.0.3 reference package load into ring_profile="binned" with the same outputs."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from gmrseg.layers import GMRConv2d, GMRConv3d, convert_reference_state_dict


def _reference_shells(kernel_size: int, num_rings: int, spatial_dims: int) -> torch.Tensor:
    """Build the reference's 0/1 shells its own way: Euclidean distance transform, then thresholds."""
    ones = np.ones((kernel_size,) * spatial_dims)
    ones[(kernel_size // 2,) * spatial_dims] = 0
    distance = ndimage.distance_transform_edt(ones)
    levels = np.linspace(distance.min(), kernel_size // 2 + 0.5, num=num_rings + 1)
    shells = [((distance >= levels[i]) & (distance < levels[i + 1])).reshape(-1) for i in range(num_rings)]
    return torch.tensor(np.stack(shells), dtype=torch.float32)


def _reference_state_dict(kernel_size, in_channels, out_channels, spatial_dims=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    num_rings = kernel_size // 2 + 1
    shells = _reference_shells(kernel_size, num_rings, spatial_dims)[None, None]
    band_width = kernel_size / (2 * (num_rings - 1))
    log_sigmas = torch.log(torch.full((num_rings,), band_width / 2.355)) + 0.3 * torch.randn(num_rings, generator=generator)
    return {
        "weight": torch.randn(out_channels, in_channels, num_rings, generator=generator),
        "bias": torch.randn(out_channels, generator=generator),
        "default_weight_index_mat": shells.clone(),
        "weight_index_mat": shells.clone(),
        "mus": torch.arange(num_rings, dtype=torch.float32),
        "log_sigmas": log_sigmas,
    }


def _reference_kernel(state_dict, kernel_size, spatial_dims):
    """Rebuild the reference kernel: Gaussian across shell indices, density-scaled by 1 / (2.5066 sigma)."""
    num_rings = state_dict["mus"].numel()
    sigmas = state_dict["log_sigmas"].exp().clamp(1e-2, 2 * num_rings)
    location = torch.arange(num_rings, dtype=torch.float32)[:, None].repeat(1, num_rings)
    probability = torch.exp(-0.5 * ((location - state_dict["mus"][None, :]) / sigmas) ** 2) / (sigmas * 2.5066)
    shells = probability.permute(1, 0) @ state_dict["weight_index_mat"][0, 0]
    kernel = torch.einsum("kw,oik->oiw", shells, state_dict["weight"])
    return kernel.reshape(*state_dict["weight"].shape[:2], *(kernel_size,) * spatial_dims)


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
def test_converted_layer_matches_reference_conv3d(kernel_size):
    state_dict = _reference_state_dict(kernel_size, 3, 4)
    converted, kwargs = convert_reference_state_dict(state_dict)
    assert kwargs["ring_profile"] == "binned"
    assert kwargs["kernel_size"] == kernel_size
    layer = GMRConv3d(**kwargs, padding=kernel_size // 2, strategy="dense")
    layer.load_state_dict(converted)
    x = torch.randn(2, 3, 11, 11, 11)
    expected = torch.nn.functional.conv3d(
        x, _reference_kernel(state_dict, kernel_size, 3), state_dict["bias"], padding=kernel_size // 2
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.strategy = "spectral"
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_converted_layer_matches_reference_conv2d():
    state_dict = _reference_state_dict(7, 2, 3, spatial_dims=2)
    converted, kwargs = convert_reference_state_dict(state_dict, spatial_dims=2)
    layer = GMRConv2d(**kwargs, padding=3)
    layer.load_state_dict(converted)
    x = torch.randn(1, 2, 15, 15)
    expected = torch.nn.functional.conv2d(x, _reference_kernel(state_dict, 7, 2), state_dict["bias"], padding=3)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_conversion_with_groups_and_no_bias():
    state_dict = _reference_state_dict(5, 2, 4)
    state_dict.pop("bias")
    converted, kwargs = convert_reference_state_dict(state_dict, groups=2)
    assert kwargs["in_channels"] == 4
    assert kwargs["groups"] == 2
    assert kwargs["bias"] is False
    layer = GMRConv3d(**kwargs)
    layer.load_state_dict(converted)


def test_conversion_rejects_trained_index_matrix():
    state_dict = _reference_state_dict(5, 2, 2)
    state_dict["weight_index_mat"] = state_dict["weight_index_mat"] + 0.05
    with pytest.raises(ValueError, match="train_index_mat=True"):
        convert_reference_state_dict(state_dict)


def test_conversion_rejects_missing_keys_and_bad_mus():
    state_dict = _reference_state_dict(5, 2, 2)
    with pytest.raises(ValueError, match="missing \\['log_sigmas'\\]"):
        convert_reference_state_dict({k: v for k, v in state_dict.items() if k != "log_sigmas"})
    state_dict["mus"] = state_dict["mus"] * 2
    with pytest.raises(ValueError, match="mus must be"):
        convert_reference_state_dict(state_dict)


def test_conversion_rejects_wrong_spatial_dims():
    state_dict = _reference_state_dict(5, 2, 2)
    with pytest.raises(ValueError, match="2D cubic kernel"):
        convert_reference_state_dict(state_dict, spatial_dims=2)
