"""GMR layers commute with the 48 symmetries of the cube (8 of the square); nn.Conv3d does not."""

import pytest
import torch
from torch import nn

from gmrseg.layers import GMRConv2d, GMRConv3d

STRATEGIES = ("dense", "rings", "spectral")


def _symmetries(spatial_dims: int) -> list[list[tuple]]:
    """Return every distinct composition of quarter turns and flips of the spatial axes.

    Each symmetry is a list of ("rot", dims) / ("flip", dim) steps on a (B, C, *spatial)
    tensor, found by closing the generators over a probe volume with distinct values.
    """
    axes = list(range(2, spatial_dims + 2))
    generators = [("flip", axes[0])] + [("rot", (a, b)) for i, a in enumerate(axes) for b in axes[i + 1 :]]
    probe = torch.arange(3**spatial_dims).reshape((1, 1) + (3,) * spatial_dims)
    found = {tuple(probe.flatten().tolist()): []}
    frontier = [[]]
    while frontier:
        next_frontier = []
        for steps in frontier:
            for generator in generators:
                candidate = steps + [generator]
                key = tuple(_apply(probe, candidate).flatten().tolist())
                if key not in found:
                    found[key] = candidate
                    next_frontier.append(candidate)
        frontier = next_frontier
    return list(found.values())


def _apply(x: torch.Tensor, steps: list[tuple]) -> torch.Tensor:
    for kind, dims in steps:
        x = torch.rot90(x, 1, dims) if kind == "rot" else torch.flip(x, (dims,))
    return x


def _max_equivariance_error(layer: nn.Module, x: torch.Tensor, symmetries) -> float:
    """Return max over symmetries g of ||f(g x) - g f(x)|| / ||f(x)||."""
    with torch.no_grad():
        reference = layer(x)
        moved_inputs = torch.cat([_apply(x, steps) for steps in symmetries])
        moved_outputs = layer(moved_inputs)
    errors = []
    for index, steps in enumerate(symmetries):
        expected = _apply(reference, steps)
        errors.append(((moved_outputs[index : index + 1] - expected).norm() / expected.norm()).item())
    return max(errors)


def test_symmetry_counts():
    assert len(_symmetries(3)) == 48
    assert len(_symmetries(2)) == 8


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gmr_conv3d_cube_equivariance(strategy, kernel_size, dtype, tolerance):
    torch.manual_seed(kernel_size)
    layer = GMRConv3d(2, 3, kernel_size, strategy=strategy, dtype=dtype).eval()
    with torch.no_grad():
        layer.log_sigma.add_(0.3 * torch.randn_like(layer.log_sigma))
    x = torch.randn(1, 2, 11, 11, 11, dtype=dtype)
    assert _max_equivariance_error(layer, x, _symmetries(3)) < tolerance


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_binned_profile_cube_equivariance(strategy):
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 5, ring_profile="binned", strategy=strategy, dtype=torch.float64).eval()
    x = torch.randn(1, 2, 9, 9, 9, dtype=torch.float64)
    assert _max_equivariance_error(layer, x, _symmetries(3)) < 1e-10


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_equivariance_with_padding_modes(padding_mode):
    torch.manual_seed(0)
    layer = GMRConv3d(2, 2, 5, padding_mode=padding_mode, strategy="spectral", dtype=torch.float64).eval()
    x = torch.randn(1, 2, 10, 10, 10, dtype=torch.float64)
    assert _max_equivariance_error(layer, x, _symmetries(3)) < 1e-10


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_dense_conv3d_is_not_equivariant(kernel_size):
    torch.manual_seed(0)
    layer = nn.Conv3d(2, 3, kernel_size, padding=kernel_size // 2).double()
    x = torch.randn(1, 2, 11, 11, 11, dtype=torch.float64)
    assert _max_equivariance_error(layer, x, _symmetries(3)) > 0.1


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
def test_gmr_conv2d_square_equivariance(strategy, kernel_size):
    torch.manual_seed(kernel_size)
    layer = GMRConv2d(2, 3, kernel_size, strategy=strategy, dtype=torch.float64).eval()
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    assert _max_equivariance_error(layer, x, _symmetries(2)) < 1e-10


def test_dense_conv2d_is_not_equivariant():
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 5, padding=2).double()
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    assert _max_equivariance_error(layer, x, _symmetries(2)) > 0.1


def _rotation_error_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_rotation_error.py"
    spec = importlib.util.spec_from_file_location("kernel_rotation_error", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
def test_gaussian_rings_nearer_rotation_invariance(kernel_size):
    measure = _rotation_error_module()
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    blobs = measure.random_blobs(generator)
    points = measure.ball_points(generator, 150)
    rotation = measure.random_rotation(generator)
    errors = {
        name: measure.rotation_error(measure.layer_kernels(name, kernel_size), rotation, blobs, points)
        for name in ("gaussian", "binned", "nn.Conv3d")
    }
    assert errors["gaussian"] < 0.5 * errors["binned"]
    assert errors["gaussian"] < 5e-4
    assert errors["binned"] < 0.05
    assert errors["nn.Conv3d"] > 0.1


def _fourth_moments(kernel: torch.Tensor) -> tuple[float, float]:
    """Return ``(sum K x^4, sum K x^2 y^2)`` of a kernel on its centred voxel grid."""
    radius = kernel.shape[-1] // 2
    axis = torch.arange(-radius, radius + 1, dtype=kernel.dtype)
    grids = torch.meshgrid(*([axis] * kernel.dim()), indexing="ij")
    return (kernel * grids[0] ** 4).sum().item(), (kernel * grids[0] ** 2 * grids[1] ** 2).sum().item()


@pytest.mark.parametrize("layer_class", [GMRConv3d, GMRConv2d])
@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
def test_gaussian_rings_have_isotropic_fourth_moments(layer_class, kernel_size):
    layer = layer_class(1, 1, kernel_size, num_rings=3, dtype=torch.float64)
    with torch.no_grad():
        layer.log_sigma.copy_(torch.tensor([0.6, 1.3, 0.9], dtype=torch.float64).log())
        rings = layer.rings()

    for ring in rings:
        quartic, mixed = _fourth_moments(ring)
        assert abs(quartic - 3 * mixed) < 1e-9 * max(abs(quartic), 1e-3)


def test_uncorrected_gaussian_ring_has_anisotropic_fourth_moments():
    from gmrseg.layers.rings import gaussian_rings, kernel_distances, ring_window

    distances = kernel_distances(5, 3, dtype=torch.float64)
    ring = gaussian_rings(
        distances, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), ring_window(distances, 5)
    )[0]
    quartic, mixed = _fourth_moments(ring)
    assert abs(quartic - 3 * mixed) > 1e-3 * abs(quartic)
