"""GMRUNet commutes with the 48 cube symmetries (8 square symmetries in 2D); the dense UNet does not."""

import itertools

import pytest
import torch

from gmrseg.networks import GMRUNet, GradientMagnitude

# float64 convolutions on the CPU take torch's slow unfold path (about 15x the
# float32 time), so the float64 checks use the narrowest network with three levels.
TINY = {"features": (2, 4, 8), "kernel_sizes": 3}
SMALL = {"features": (4, 8, 16), "kernel_sizes": (5, 3, 3)}


def grid_symmetries(spatial_dims):
    """Yield every axis permutation combined with every set of flipped axes (48 in 3D, 8 in 2D)."""
    for permutation in itertools.permutations(range(spatial_dims)):
        for flips in itertools.product((False, True), repeat=spatial_dims):
            yield permutation, flips


def apply_symmetry(tensor, permutation, flips):
    """Permute then flip the spatial axes of a ``(B, C, *spatial)`` tensor."""
    tensor = tensor.permute(0, 1, *(axis + 2 for axis in permutation))
    flipped = [axis + 2 for axis, flip in enumerate(flips) if flip]
    return tensor.flip(flipped) if flipped else tensor


def max_relative_error(outputs_of, x, spatial_dims, stop_above=None, chunk=8):
    """Return the largest ``max|f(g x) - g f(x)| / max|g f(x)|`` over all symmetries g and all outputs of f.

    ``x`` is one sample. The transformed copies run through f in batches of
    ``chunk``. With ``stop_above`` the search ends at the first error above it.
    """
    references = outputs_of(x)
    symmetries = list(grid_symmetries(spatial_dims))
    worst = 0.0
    for start in range(0, len(symmetries), chunk):
        group = symmetries[start : start + chunk]
        batch = torch.cat([apply_symmetry(x, *symmetry) for symmetry in group])
        outputs = outputs_of(batch)
        assert len(outputs) == len(references)
        for index, symmetry in enumerate(group):
            for reference, output in zip(references, outputs):
                expected = apply_symmetry(reference, *symmetry)
                error = (output[index : index + 1] - expected).abs().max() / expected.abs().max()
                worst = max(worst, error.item())
        if stop_above is not None and worst > stop_above:
            break
    return worst


def heads_of(model):
    @torch.no_grad()
    def outputs_of(x):
        return model.forward_heads(x)

    return outputs_of


def test_symmetry_count():
    assert len(list(grid_symmetries(3))) == 48
    assert len(list(grid_symmetries(2))) == 8


@pytest.mark.parametrize(
    ("in_channels", "residual", "encoder_blocks"),
    [(1, False, 1), (2, True, (1, 2, 2))],
    ids=["1ch-plain", "2ch-residual-deeper-encoder"],
)
def test_gmrunet_equivariant_float64(in_channels, residual, encoder_blocks):
    torch.manual_seed(0)
    model = GMRUNet(in_channels=in_channels, out_channels=3, residual=residual, encoder_blocks=encoder_blocks,
                    deep_supervision=True, **TINY)
    model = model.double().eval()
    x = torch.randn(1, in_channels, 32, 32, 32, dtype=torch.float64)

    heads = model.forward_heads(x)
    assert len(heads) == 2
    assert heads[1].shape == (1, 3, 16, 16, 16)
    assert max_relative_error(heads_of(model), x, 3) < 1e-8


def test_gmrunet_equivariant_float32():
    torch.manual_seed(1)
    model = GMRUNet(in_channels=2, residual=True, deep_supervision=True, **SMALL).eval()
    x = torch.randn(1, 2, 32, 32, 32)

    assert max_relative_error(heads_of(model), x, 3) < 1e-4


def test_gmrunet_equivariant_gradient_magnitude():
    torch.manual_seed(4)
    model = GMRUNet(in_channels=2, residual=True, gradient_magnitude=True, deep_supervision=True, **TINY)
    for layer in model.modules():
        if isinstance(layer, GradientMagnitude):
            torch.nn.init.normal_(layer.mix.weight)  # the mix starts at zero, which would hide the layer
    model = model.double().eval()
    x = torch.randn(1, 2, 32, 32, 32, dtype=torch.float64)

    assert max_relative_error(heads_of(model), x, 3) < 1e-8


def test_gmrunet_equivariant_avg_pool_nearest():
    # The other tests use the defaults, max pooling and linear up-sampling.
    torch.manual_seed(1)
    model = GMRUNet(pooling="avg", upsample="nearest", deep_supervision=True, **TINY).eval()
    x = torch.randn(1, 1, 32, 32, 32)

    assert max_relative_error(heads_of(model), x, 3) < 1e-4


def test_gmrunet_equivariant_blur_pool():
    torch.manual_seed(3)
    model = GMRUNet(pooling="blur", deep_supervision=True, **TINY).eval()
    x = torch.randn(1, 1, 32, 32, 32)

    assert max_relative_error(heads_of(model), x, 3) < 1e-4


def test_blur_pool_halves_and_keeps_constants_inside():
    from gmrseg.networks.gmr_unet import BlurPool

    pooled = BlurPool(3)(torch.ones(1, 2, 8, 6, 10))
    assert pooled.shape == (1, 2, 4, 3, 5)

    # Away from the zero padding the binomial taps sum to 1; at the border 1/8 falls outside.
    assert torch.allclose(pooled[:, :, 1:-1, 1:-1, 1:-1], torch.ones(1))
    assert pooled[0, 0, 0, 1, 1].item() == pytest.approx(7 / 8)


def test_blur_pool_removes_the_highest_frequency():
    from gmrseg.networks.gmr_unet import BlurPool

    # 2x sub-sampling aliases a +-1 checkerboard along x to a constant. Max pooling passes it
    # through as 1 everywhere, but the binomial filter is zero at Nyquist and removes it.
    x = torch.ones(1, 1, 16, 8, 8)
    x[:, :, 1::2] = -1
    pooled = BlurPool(3)(x)
    assert pooled[:, :, 1:-1, 1:-1, 1:-1].abs().max() < 1e-6
    assert torch.nn.MaxPool3d(2)(x).min() == 1


def test_gmrunet_eval_forward_matches_first_head():
    torch.manual_seed(2)
    model = GMRUNet(deep_supervision=True, **SMALL).eval()
    x = torch.randn(2, 1, 16, 16, 16)

    assert torch.equal(model(x), model.forward_heads(x)[0])


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_dense_unet_not_equivariant(residual):
    torch.manual_seed(0)
    model = GMRUNet(conv="dense", residual=residual, deep_supervision=True, **TINY).double().eval()
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64)

    assert max_relative_error(heads_of(model), x, 3, stop_above=1e-2) > 1e-2


def test_gmrunet_2d_equivariant():
    torch.manual_seed(3)
    model = GMRUNet(spatial_dims=2, in_channels=2, residual=True, deep_supervision=True, **SMALL).double().eval()
    x = torch.randn(1, 2, 32, 32, dtype=torch.float64)

    assert max_relative_error(heads_of(model), x, 2) < 1e-8


def test_dense_unet_2d_not_equivariant():
    torch.manual_seed(3)
    model = GMRUNet(spatial_dims=2, conv="dense", **SMALL).double().eval()
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64)

    assert max_relative_error(heads_of(model), x, 2, stop_above=1e-2) > 1e-2


def test_even_padding_keeps_equivariance():
    # 26 is 2 short of the next multiple of size_divisor 4, padded 1 + 1: flips stay exact.
    torch.manual_seed(4)
    model = GMRUNet(**TINY, input_padding="symmetric").eval()
    x = torch.randn(1, 1, 26, 26, 26)

    assert model(x).shape == (1, 2, 26, 26, 26)
    assert max_relative_error(heads_of(model), x, 3) < 1e-4


@pytest.mark.slow
def test_gmrunet_default_features_equivariant():
    torch.manual_seed(5)
    model = GMRUNet(in_channels=2, residual=True, deep_supervision=True).double().eval()
    x = torch.randn(1, 2, 32, 32, 32, dtype=torch.float64)

    heads = model.forward_heads(x)
    assert len(heads) == 4
    assert max_relative_error(heads_of(model), x, 3) < 1e-8
