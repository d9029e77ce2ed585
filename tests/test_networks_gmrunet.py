"""GMRUNet shapes, arguments, deep supervision, input padding and training step."""

import pytest
import torch

from gmrseg.errors import InputError
from gmrseg.layers import GMRConv2d, GMRConv3d
from gmrseg.networks import GMRUNet, GradientMagnitude

TINY = {"features": (2, 4, 8), "kernel_sizes": (5, 3, 3)}


def test_output_shape_3d():
    model = GMRUNet(in_channels=2, out_channels=4, **TINY).eval()

    output = model(torch.randn(2, 2, 16, 24, 8))

    assert output.shape == (2, 4, 16, 24, 8)
    assert model.size_divisor == 4


def test_output_shape_2d():
    model = GMRUNet(spatial_dims=2, out_channels=3, **TINY).eval()

    assert model(torch.randn(1, 1, 20, 12)).shape == (1, 3, 20, 12)
    assert any(isinstance(module, GMRConv2d) for module in model.modules())


def test_default_layout():
    model = GMRUNet()

    assert model.features == (32, 64, 128, 256, 320)
    assert model.kernel_sizes == (9, 7, 5, 5, 3)
    assert model.size_divisor == 16
    sizes = sorted({module.kernel_size for module in model.modules() if isinstance(module, GMRConv3d)})
    assert sizes == [3, 5, 7, 9]


def test_default_kernel_sizes_follow_depth():
    assert GMRUNet(features=(2, 4, 8)).kernel_sizes == (9, 7, 5)
    assert GMRUNet(features=(2,) * 6).kernel_sizes == (9, 7, 5, 5, 3, 3)


def test_dense_variant_has_no_gmr_layers():
    model = GMRUNet(conv="dense", **TINY)

    assert not any(isinstance(module, (GMRConv2d, GMRConv3d)) for module in model.modules())
    kernels = sorted({module.kernel_size[0] for module in model.modules() if isinstance(module, torch.nn.Conv3d)})
    assert kernels == [1, 3, 5]


def test_gmr_has_fewer_parameters_than_dense():
    gmr = sum(parameter.numel() for parameter in GMRUNet(**TINY).parameters())
    dense = sum(parameter.numel() for parameter in GMRUNet(conv="dense", **TINY).parameters())

    assert gmr < dense


def test_deep_supervision_train_returns_list():
    model = GMRUNet(out_channels=3, deep_supervision=True, features=(2, 4, 8, 8), kernel_sizes=3).train()

    outputs = model(torch.randn(2, 1, 16, 16, 16))

    assert isinstance(outputs, list)
    assert [tuple(output.shape) for output in outputs] == [(2, 3, 16, 16, 16), (2, 3, 8, 8, 8), (2, 3, 4, 4, 4)]


def test_deep_supervision_eval_returns_tensor():
    model = GMRUNet(deep_supervision=True, **TINY).eval()

    output = model(torch.randn(1, 1, 16, 16, 16))

    assert isinstance(output, torch.Tensor)
    assert output.shape == (1, 2, 16, 16, 16)


def test_deep_supervision_head_count():
    model = GMRUNet(deep_supervision=True, num_deep_supervision_heads=1, features=(2, 4, 8, 8), kernel_sizes=3)

    assert len(model.train()(torch.randn(1, 1, 16, 16, 16))) == 2


def test_without_deep_supervision_train_returns_tensor():
    model = GMRUNet(**TINY).train()

    assert isinstance(model(torch.randn(1, 1, 8, 8, 8)), torch.Tensor)


def test_padding_crops_back_to_input_size():
    torch.manual_seed(0)
    model = GMRUNet(**TINY).eval()
    x = torch.randn(1, 1, 13, 16, 10)

    output = model(x)
    padded = torch.nn.functional.pad(x, (1, 1, 0, 0, 1, 2))  # 13 -> 16 (1 + 2), 10 -> 12 (1 + 1)
    expected = model(padded)[:, :, 1:14, :, 1:11]

    assert output.shape == (1, 2, 13, 16, 10)
    torch.testing.assert_close(output, expected)


def test_padding_error_mode_names_size_and_divisor():
    model = GMRUNet(input_padding="error", **TINY).eval()

    with pytest.raises(InputError, match=r"\(13, 16, 10\).*size_divisor=4.*\(16, 16, 12\)"):
        model(torch.randn(1, 1, 13, 16, 10))


def test_deep_supervision_rejects_indivisible_size():
    model = GMRUNet(deep_supervision=True, **TINY).train()

    with pytest.raises(InputError, match="deep supervision"):
        model(torch.randn(1, 1, 14, 16, 16))


def test_single_voxel_bottleneck_is_rejected():
    model = GMRUNet(**TINY).eval()

    with pytest.raises(InputError, match=r"\(4, 3, 2\) leaves one voxel.*at least 8"):
        model(torch.randn(1, 1, 4, 3, 2))
    assert model(torch.randn(1, 1, 4, 8, 4)).shape == (1, 2, 4, 8, 4)


def test_wrong_channel_count_is_rejected():
    model = GMRUNet(in_channels=2, **TINY)

    with pytest.raises(InputError, match=r"\(B, 2, size, size, size\).*\(1, 1, 8, 8, 8\)"):
        model(torch.randn(1, 1, 8, 8, 8))


def test_wrong_dimension_is_rejected():
    model = GMRUNet(**TINY)

    with pytest.raises(InputError, match="expects input of shape"):
        model(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"features": (8,)}, "at least two"),
        ({"features": (8, 0)}, "at least two positive"),
        ({"features": 8}, "sequence"),
        ({"features": (4, 8), "kernel_sizes": (3,)}, "one entry per level"),
        ({"features": (4, 8), "kernel_sizes": (3, 4)}, "odd positive"),
        ({"conv": "sparse"}, "conv must be one of"),
        ({"pooling": "stride"}, "pooling must be one of"),
        ({"upsample": "deconv"}, "upsample must be one of"),
        ({"input_padding": "reflect"}, "input_padding must be one of"),
        ({"dropout": 1.0}, "dropout"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"in_channels": 0}, "in_channels"),
        ({"deep_supervision": True, "num_deep_supervision_heads": 4}, r"\[0, 3\]"),
        ({"num_deep_supervision_heads": 1}, "needs deep_supervision"),
        ({"conv": "dense", "gmr_kwargs": {"num_rings": 2}}, "only apply to conv='gmr'"),
        ({"features": (4, 8), "encoder_blocks": (1, 0)}, r"one per level \(2 levels, one per entry of features\)"),
        ({"features": (4, 8), "encoder_blocks": (1, 2, 2)}, r"one int >= 1, or one per level.*got \(1, 2, 2\)"),
        ({"features": (4, 8), "encoder_blocks": 0}, r"got 0$"),
        ({"encoder_blocks": "2"}, "int or a sequence"),
        ({"gradient_magnitude": "false"}, r"gradient_magnitude must be a bool \(true or false in a YAML config\), got 'false'"),
    ],
)
def test_invalid_arguments(arguments, message):
    with pytest.raises(InputError, match=message):
        GMRUNet(**arguments)


def test_gmr_kwargs_reach_layers():
    model = GMRUNet(gmr_kwargs={"ring_profile": "binned"}, **TINY)

    profiles = {module.ring_profile for module in model.modules() if isinstance(module, GMRConv3d)}
    assert profiles == {"binned"}


def test_residual_blocks_have_skip_projection():
    model = GMRUNet(residual=True, **TINY)

    assert any(name.endswith("skip.0") for name, _ in model.named_modules())
    assert model.eval()(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_encoder_blocks_deepen_encoder_only():
    single = GMRUNet(residual=True, **TINY)
    deeper = GMRUNet(residual=True, encoder_blocks=(1, 2, 3), **TINY)

    assert deeper.encoder_blocks == (1, 2, 3)
    assert [len(level) if isinstance(level, torch.nn.Sequential) else 1 for level in deeper.encoders] == [1, 2, 3]
    assert len(deeper.decoders) == len(single.decoders)
    # One block per level keeps the parameter names of earlier checkpoints.
    assert GMRUNet(residual=True, encoder_blocks=1, **TINY).state_dict().keys() == single.state_dict().keys()
    assert deeper.eval()(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)


def test_dropout_active_in_train_only():
    torch.manual_seed(0)
    model = GMRUNet(dropout=0.5, **TINY)
    x = torch.randn(1, 1, 8, 8, 8)

    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = GMRUNet(residual=True, deep_supervision=True, **TINY).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 1, 8, 8, 8)
    target = (x > 0).long()[:, 0]

    losses = []
    for _ in range(5):
        outputs = model(x)
        loss = torch.nn.functional.cross_entropy(outputs[0], target)
        loss = loss + 0.5 * torch.nn.functional.cross_entropy(outputs[1], target[:, ::2, ::2, ::2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < losses[0]
    gmr_layer = next(module for module in model.modules() if isinstance(module, GMRConv3d))
    assert gmr_layer.weight.grad is not None


def test_state_dict_round_trip():
    torch.manual_seed(0)
    source = GMRUNet(residual=True, **TINY).eval()
    target = GMRUNet(residual=True, **TINY).eval()
    x = torch.randn(1, 1, 8, 8, 8)

    target.load_state_dict(source.state_dict())

    torch.testing.assert_close(target(x), source(x))


def _ramp(gradient, size=9):
    """A linear field ``gradient . (z, y, x)`` in voxels, shape ``(1, 1, size, size, size)``."""
    axes = torch.meshgrid(*(torch.arange(size, dtype=torch.float64),) * 3, indexing="ij")
    return sum(component * axis for component, axis in zip(gradient, axes)).view(1, 1, size, size, size)


def test_gradient_magnitude_ramp_slope_any_direction():
    layer = GradientMagnitude(3, 1).double()
    # Three directions, one of them oblique to every axis, all with slope 1.3 per voxel.
    for gradient in [(1.3, 0.0, 0.0), (0.0, -1.3, 0.0), (0.3, -0.4, 1.2)]:
        magnitude = layer.magnitude(_ramp(gradient))

        interior = magnitude[0, 0, 1:-1, 1:-1, 1:-1]
        torch.testing.assert_close(interior, torch.full_like(interior, (1.3**2 + 1e-4) ** 0.5))


def test_gradient_magnitude_border_and_short_axes():
    layer = GradientMagnitude(3, 1).double()

    magnitude = layer.magnitude(_ramp((0.0, 0.0, 2.0)))
    assert magnitude[0, 0, 4, 4, 0].item() == pytest.approx(1e-2)  # first plane along x: no difference
    assert magnitude[0, 0, 0, 4, 4].item() == pytest.approx(2.0, abs=1e-4)  # border along z, interior along x

    short = layer.magnitude(_ramp((1.0, 1.0, 1.0))[:, :, :2, :1, :])
    assert short.shape == (1, 1, 2, 1, 9)
    assert short[0, 0, 0, 0, 4].item() == pytest.approx(1.0, abs=1e-4)  # only x is 3 voxels or longer


def test_gradient_magnitude_starts_as_plain_network():
    torch.manual_seed(0)
    plain = GMRUNet(residual=True, **TINY).eval()
    with_gradient = GMRUNet(residual=True, gradient_magnitude=True, **TINY).eval()
    x = torch.randn(1, 1, 8, 8, 8)

    missing, unexpected = with_gradient.load_state_dict(plain.state_dict(), strict=False)

    assert not unexpected
    assert missing and all(name.endswith("gradient.mix.weight") for name in missing)
    torch.testing.assert_close(with_gradient(x), plain(x))


def test_gradient_magnitude_every_block_kind():
    for kwargs in [{"spatial_dims": 2}, {"conv": "dense"}, {"residual": True}]:
        model = GMRUNet(gradient_magnitude=True, **TINY, **kwargs)
        layers = [module for module in model.modules() if isinstance(module, GradientMagnitude)]
        size = (8, 8) if kwargs.get("spatial_dims") == 2 else (8, 8, 8)

        assert len(layers) == 5  # one per block: three encoder levels, two decoder levels
        assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)
