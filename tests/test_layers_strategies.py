"""The rings and spectral strategies agree with the dense one in outputs and gradients."""

import pytest
import torch

from gmrseg.layers import GMRConv2d, GMRConv3d
from gmrseg.layers.strategy import choose_strategy, cost_profile, estimate_costs

CASES = [
    {},
    {"stride": 2},
    {"dilation": 2},
    {"groups": 2},
    {"padding": 0},
    {"padding": 6},
    {"bias": False},
    {"padding_mode": "reflect"},
    {"padding_mode": "replicate"},
    {"padding_mode": "circular"},
    {"ring_profile": "binned"},
    {"num_rings": 2},
]


def _outputs_and_grads(layer, x, grad_out=None):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    params = [layer.weight, layer.log_sigma] + ([layer.bias] if layer.bias is not None else [])
    grads = torch.autograd.grad(y, [x] + params, grad_out)
    return [y.detach()] + list(grads), grad_out


def _relative(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("strategy", ["rings", "spectral"])
@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_strategy_matches_dense_float32(strategy, options):
    torch.manual_seed(0)
    layer = GMRConv3d(4, 6, 5, strategy="dense", **options)
    with torch.no_grad():
        layer.log_sigma.add_(0.2 * torch.randn_like(layer.log_sigma))
    x = torch.randn(2, 4, 12, 11, 13)
    expected, grad_out = _outputs_and_grads(layer, x)
    layer.strategy = strategy
    actual, _ = _outputs_and_grads(layer, x, grad_out)
    names = ["output", "input grad", "weight grad", "log_sigma grad", "bias grad"]
    for name, a, b in zip(names, actual, expected):
        assert a.shape == b.shape, name
        assert _relative(a, b) < 1e-5, name


@pytest.mark.parametrize("strategy", ["rings", "spectral"])
def test_strategy_matches_dense_2d(strategy):
    torch.manual_seed(0)
    layer = GMRConv2d(3, 5, 7, strategy="dense", stride=2, dtype=torch.float64)
    x = torch.randn(2, 3, 20, 17, dtype=torch.float64)
    expected, grad_out = _outputs_and_grads(layer, x)
    layer.strategy = strategy
    actual, _ = _outputs_and_grads(layer, x, grad_out)
    for a, b in zip(actual, expected):
        assert _relative(a, b) < 1e-12


def test_spectral_gradcheck_float64():
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 3, strategy="spectral", groups=2, dtype=torch.float64)
    x = torch.randn(1, 2, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    inputs = (x, layer.weight, layer.log_sigma)
    assert torch.autograd.gradcheck(lambda inp, w, s: _call_with(layer, inp, w, s), inputs, fast_mode=True)


def _call_with(layer, x, weight, log_sigma):
    # gradcheck perturbs the tensors it is given in place, which the layer reads directly.
    del weight, log_sigma
    return layer(x)


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_auto_choice_by_kernel_size_and_mode(capability):
    shape = (2, 32, 48, 48, 48)
    assert choose_strategy(shape, 32, 9, 5, padding=4, cpu_capability=capability) == "spectral"
    assert choose_strategy(shape, 32, 9, 5, padding=4, training=True, cpu_capability=capability) == "spectral"
    assert choose_strategy(shape, 32, 5, 3, padding=2, training=True, cpu_capability=capability) == "spectral"
    assert choose_strategy(shape, 32, 3, 2, padding=1, training=False, cpu_capability=capability) == "dense"
    assert choose_strategy(shape, 32, 1, 1, cpu_capability=capability) == "dense"
    assert choose_strategy((1, 1, 8, 8, 8), 1, 3, 2, padding=1, cpu_capability=capability) == "dense"


def test_avx512_profile_prefers_dense_at_k3():
    # Measured on an AVX-512 CPU: a spectral 3x3x3 training step at C = 32, 48^3 took 1.5x
    # the dense one. The generic CPU profile predicts a gain there.
    shape = (2, 32, 48, 48, 48)
    assert choose_strategy(shape, 32, 3, 2, padding=1, training=True, cpu_capability="AVX512") == "dense"
    assert choose_strategy(shape, 32, 3, 2, padding=1, training=True, cpu_capability="AVX2") == "spectral"
    assert cost_profile("cpu", "AVX512") == "cpu-avx512"
    assert cost_profile("cpu", "DEFAULT") == "cpu"
    assert cost_profile("cuda", "AVX512") == "cuda"


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_cost_model_grows_with_kernel_only_for_dense(capability):
    shape = (2, 16, 32, 32, 32)
    small = estimate_costs(shape, 16, 3, 2, padding=1, cpu_capability=capability)
    large = estimate_costs(shape, 16, 9, 2, padding=4, cpu_capability=capability)
    assert large["dense"] == pytest.approx(small["dense"] * 27)
    assert large["spectral"] < 1.5 * small["spectral"]


def test_auto_result_matches_dense():
    torch.manual_seed(0)
    layer = GMRConv3d(3, 3, 9, strategy="auto")
    x = torch.randn(1, 3, 16, 16, 16)
    chosen = layer.resolve_strategy(x.shape)
    out_auto = layer(x)
    layer.strategy = "dense"
    assert chosen in ("dense", "spectral")
    assert _relative(out_auto, layer(x)) < 1e-5


def test_spectral_backward_saves_only_inputs():
    layer = GMRConv3d(4, 6, 5, strategy="spectral")
    x = torch.randn(1, 4, 10, 10, 10, requires_grad=True)

    y = layer(x)
    saved = y.grad_fn.saved_tensors

    assert len(saved) == 3
    assert saved[0].data_ptr() == x.data_ptr()
    assert saved[2].data_ptr() == layer.weight.data_ptr()
    assert sum(tensor.numel() for tensor in saved) < 2 * x.numel()
