"""GMRConv3d / GMRConv2d as modules: arguments, parameters, eval cache, copies, precision, export."""

import copy

import pytest
import torch
from torch import nn

from gmrseg.layers import GMRConv2d, GMRConv3d


def test_parameter_count_matches_docstring():
    layer = GMRConv3d(32, 32, 9)
    dense = nn.Conv3d(32, 32, 9)
    assert layer.weight.shape == (32, 32, 5)
    assert layer.log_sigma.shape == (5,)
    count = sum(p.numel() for p in layer.parameters())
    assert count == 32 * 32 * 5 + 5 + 32
    dense_count = sum(p.numel() for p in dense.parameters())
    assert 140 < dense_count / count < 150
    assert layer.weight.numel() * 146 == pytest.approx(dense.weight.numel(), rel=0.01)


def test_parameter_count_with_groups_and_no_bias():
    layer = GMRConv3d(8, 12, 5, groups=4, bias=False, num_rings=2)
    assert sum(p.numel() for p in layer.parameters()) == 12 * 2 * 2 + 2
    assert set(layer.state_dict()) == {"weight", "log_sigma"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": (3, 5, 3)}, "same along every axis"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"stride": 0}, "stride"),
        ({"dilation": 1.5}, "dilation"),
        ({"groups": 3}, "divisible by groups"),
        ({"padding": -1}, "padding"),
        ({"padding": "full"}, "'same' or 'valid'"),
        ({"padding_mode": "mirror"}, "padding_mode"),
        ({"num_rings": 0}, "num_rings"),
        ({"num_rings": 9}, "at most kernel_size"),
        ({"ring_profile": "bessel"}, "ring_profile"),
        ({"strategy": "fft"}, "strategy"),
        ({"bias": "yes"}, "bias"),
        ({"in_channels": True}, "in_channels"),
    ],
)
def test_constructor_rejects_invalid_arguments(kwargs, message):
    arguments = {"in_channels": 4, "out_channels": 4, "kernel_size": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        GMRConv3d(**arguments)


def test_constructor_accepts_conv3d_style_tuples():
    layer = GMRConv3d(2, 2, (5, 5, 5), stride=(1, 1, 1), padding=(2, 2, 2), dilation=(1, 1, 1))
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == (5, 1, 2, 1)


def test_padding_same_and_valid_output_sizes():
    x = torch.randn(1, 2, 10, 11, 12)
    assert GMRConv3d(2, 3, 5)(x).shape == (1, 3, 10, 11, 12)
    assert GMRConv3d(2, 3, 5, padding="valid")(x).shape == (1, 3, 6, 7, 8)
    assert GMRConv3d(2, 3, 5, dilation=2)(x).shape == (1, 3, 10, 11, 12)
    assert GMRConv3d(2, 3, 5, stride=2)(x).shape == (1, 3, 5, 6, 6)


def test_output_matches_conv3d_with_built_kernel():
    torch.manual_seed(0)
    layer = GMRConv3d(3, 4, 5, stride=2, padding=1, dilation=2, groups=1, padding_mode="replicate")
    x = torch.randn(2, 3, 14, 13, 12)
    padded = nn.functional.pad(x, (1,) * 6, mode="replicate")
    expected = nn.functional.conv3d(padded, layer.kernel(), layer.bias, 2, 0, 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_extra_repr_shows_settings():
    text = repr(GMRConv3d(4, 8, 7, stride=2, groups=2, bias=False, padding_mode="reflect", ring_profile="binned"))
    for part in ("4, 8, kernel_size=7", "stride=2", "groups=2", "bias=False", "padding_mode='reflect'",
                 "num_rings=4", "ring_profile='binned'", "strategy='auto'", "padding='same'"):
        assert part in text


def test_unbatched_input_and_input_errors():
    layer = GMRConv3d(2, 3, 3)
    assert layer(torch.randn(2, 6, 6, 6)).shape == (3, 6, 6, 6)
    with pytest.raises(ValueError, match="expects 2 input channels, got 5"):
        layer(torch.randn(1, 5, 6, 6, 6))
    with pytest.raises(ValueError, match="expects input of shape"):
        layer(torch.randn(6, 6))
    with pytest.raises(ValueError, match="too small"):
        GMRConv3d(2, 3, 9, padding="valid")(torch.randn(1, 2, 6, 9, 9))


def test_initial_kernel_energy_close_to_conv3d():
    torch.manual_seed(0)
    gmr = GMRConv3d(64, 64, 7)
    dense = nn.Conv3d(64, 64, 7)
    ratio = gmr.kernel().pow(2).sum() / dense.weight.pow(2).sum()
    assert 0.5 < ratio.item() < 2.0
    binned = GMRConv3d(64, 64, 7, ring_profile="binned")
    assert 0.3 < (binned.kernel().pow(2).sum() / dense.weight.pow(2).sum()).item() < 3.0


# --------------------------------------------------------------------- eval cache


@pytest.mark.parametrize("strategy", ["dense", "rings", "spectral"])
def test_eval_cache_reused_and_invalidated_by_optimizer_step(strategy):
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 5, strategy=strategy)
    x = torch.randn(1, 2, 8, 8, 8)
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        cached = dict(layer._cache)
        layer(x)
    assert cached and all(layer._cache[key][1] is value[1] for key, value in cached.items())

    layer.train()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).square().sum().backward()
    optimizer.step()
    layer.eval()
    with torch.no_grad():
        after = layer(x)
        fresh = GMRConv3d(2, 2, 5, strategy=strategy)
        fresh.load_state_dict(layer.state_dict())
        expected = fresh.eval()(x)
    assert not torch.allclose(first, after)
    torch.testing.assert_close(after, expected)


def test_eval_cache_after_load_state_dict():
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 5, strategy="spectral").eval()
    other = GMRConv3d(2, 2, 5, strategy="spectral").eval()
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x))
        layer.log_sigma.add_(0.5)
        other.log_sigma.add_(0.5)
        torch.testing.assert_close(layer(x), other(x))


def test_eval_cache_follows_dtype_and_device_changes():
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 5, strategy="dense").eval()
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        out32 = layer(x)
        layer.double()
        out64 = layer(x.double())
        assert out64.dtype == torch.float64
        layer.to("cpu", torch.float32)
        torch.testing.assert_close(layer(x), out32)
    torch.testing.assert_close(out64.float(), out32, rtol=1e-5, atol=1e-6)


def test_eval_without_no_grad_still_gives_parameter_gradients():
    layer = GMRConv3d(2, 2, 3, strategy="spectral").eval()
    x = torch.randn(1, 2, 6, 6, 6)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.log_sigma.grad is not None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_deepcopy_in_train_and_eval(mode):
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 5, strategy="spectral").train(mode == "train")
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        expected = layer(x)
    duplicate = copy.deepcopy(layer)
    with torch.no_grad():
        torch.testing.assert_close(duplicate(x), expected)
        duplicate.weight.mul_(2)
        torch.testing.assert_close(layer(x), expected)


# --------------------------------------------------------------------- precision and export


@pytest.mark.parametrize("strategy", ["dense", "spectral"])
def test_bfloat16_autocast_on_cpu(strategy):
    torch.manual_seed(0)
    layer = GMRConv3d(2, 3, 5, strategy=strategy)
    x = torch.randn(1, 2, 8, 8, 8)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert ((out.float() - expected).norm() / expected.norm()).item() < 2e-2
    assert layer.weight.grad is not None


def test_bfloat16_parameters_on_cpu():
    layer = GMRConv3d(2, 3, 3, strategy="spectral", dtype=torch.bfloat16)
    out = layer(torch.randn(1, 2, 6, 6, 6, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("strategy", ["dense", "spectral"])
def test_jit_trace_of_eval_network(strategy):
    torch.manual_seed(0)
    network = nn.Sequential(
        GMRConv3d(1, 4, 5, strategy=strategy), nn.ReLU(), GMRConv3d(4, 2, 3, strategy=strategy)
    ).eval()
    x = torch.randn(1, 1, 10, 10, 10)
    with torch.no_grad():
        expected = network(x)
        traced = torch.jit.trace(network, x)
        torch.testing.assert_close(traced(x), expected)
        network[0].weight.mul_(0.5)
        torch.testing.assert_close(traced(x), network(x))


def test_torch_export_of_eval_network():
    torch.manual_seed(0)
    network = nn.Sequential(GMRConv3d(1, 2, 5, strategy="spectral"), nn.ReLU()).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    exported = torch.export.export(network, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), network(x))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["dense", "spectral"])
def test_torch_compile_runs(strategy):
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 5, strategy=strategy)
    x = torch.randn(1, 2, 8, 8, 8)
    compiled = torch.compile(layer)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, layer(x), rtol=1e-4, atol=1e-5)


def test_gmr_conv2d_binned_profile_runs():
    layer = GMRConv2d(2, 3, 5, ring_profile="binned")
    assert layer(torch.randn(1, 2, 9, 9)).shape == (1, 3, 9, 9)
