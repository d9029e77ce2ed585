"""convert_to_gmr on MONAI networks and on hand-built edge cases."""

import pytest
import torch
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

from gmrseg.errors import InputError
from gmrseg.layers import GMRConv2d, GMRConv3d
from gmrseg.networks import convert_to_gmr
from gmrseg.networks.convert import find_symmetry_breaking_layers


def dense_convs(model):
    return [name for name, module in model.named_modules() if type(module) in (nn.Conv2d, nn.Conv3d)]


def large_dense_convs(model):
    return [
        name
        for name, module in model.named_modules()
        if type(module) in (nn.Conv2d, nn.Conv3d) and max(module.kernel_size) > 1
    ]


def monai_networks():
    return {
        "unet": UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        "basicunet": BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4)),
        "dynunet": DynUNet(
            3, 1, 2, kernel_size=(3, 3, 3), strides=(1, 2, 2), upsample_kernel_size=(2, 2), filters=(4, 8, 16)
        ),
        "segresnet": SegResNet(
            3, init_filters=4, in_channels=1, out_channels=2, blocks_down=(1, 1, 1), blocks_up=(1, 1),
            norm=("group", {"num_groups": 2}),
        ),
    }


@pytest.mark.parametrize("name", ["unet", "basicunet", "dynunet", "segresnet"])
def test_monai_network_converted(name):
    torch.manual_seed(0)
    model = monai_networks()[name].double().eval()
    before = large_dense_convs(model)
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64)
    shape_before = model(x).shape

    report = convert_to_gmr(model)

    assert before
    assert large_dense_convs(model) == []
    assert [layer.name for layer in report.replaced] == before
    assert report.skipped == []
    for name_replaced in before:
        layer = model.get_submodule(name_replaced)
        assert isinstance(layer, GMRConv3d)
        assert layer.weight.dtype == torch.float64
    assert model(x).shape == shape_before
    before_parameters, after_parameters = report.parameter_counts()
    assert after_parameters < before_parameters


def test_report_names_transposed_and_strided_layers():
    model = monai_networks()["dynunet"]

    report = convert_to_gmr(model)

    reasons = [note.reason for note in report.symmetry_breaking]
    assert any("transposed convolution with a free kernel 2x2x2" in reason for reason in reasons)
    assert any("stride 2" in reason for reason in reasons)
    assert not report.is_equivariant
    assert "break the grid symmetries" in report.summary()


def test_unet_report_lists_every_transposed_conv():
    model = monai_networks()["unet"]
    transposed = [name for name, module in model.named_modules() if isinstance(module, nn.ConvTranspose3d)]

    report = convert_to_gmr(model)

    listed = {note.name for note in report.symmetry_breaking if note.layer == "ConvTranspose3d"}
    assert listed == set(transposed)


def test_basicunet_with_interpolation_is_equivariant():
    torch.manual_seed(0)
    model = BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4), upsample="nontrainable").double().eval()
    report = convert_to_gmr(model)
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64)

    with torch.no_grad():
        reference = model(x)
        rotated = model(x.transpose(2, 3).flip(4))

    assert report.is_equivariant
    torch.testing.assert_close(rotated, reference.transpose(2, 3).flip(4), rtol=1e-8, atol=1e-10)


def test_device_and_dtype_kept():
    model = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1)).to(dtype=torch.float64)

    convert_to_gmr(model)

    assert model[0].weight.dtype == torch.float64
    assert model[0].weight.device == torch.device("cpu")


def test_bias_copied():
    conv = nn.Conv3d(2, 3, 3, padding=1)
    model = nn.Sequential(conv)

    convert_to_gmr(model)

    torch.testing.assert_close(model[0].bias, conv.bias)


def test_projection_recovers_radial_kernel():
    torch.manual_seed(0)
    reference = GMRConv3d(2, 3, 5, padding=2, dtype=torch.float64)
    conv = nn.Conv3d(2, 3, 5, padding=2, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(reference.kernel())
        conv.bias.copy_(reference.bias)
    model = nn.Sequential(conv)
    x = torch.randn(1, 2, 9, 9, 9, dtype=torch.float64)

    convert_to_gmr(model, weight_init="project")

    torch.testing.assert_close(model(x), reference(x))


def test_reset_keeps_fresh_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 3, 5, padding=2))
    fresh = GMRConv3d(2, 3, 5)

    convert_to_gmr(model)

    assert model[0].weight.shape == fresh.weight.shape
    assert model[0].weight.abs().max() <= 1.0 / (2 * fresh.num_rings) ** 0.5


def test_kernel_size_override_keeps_shape():
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Conv3d(2, 2, 3, stride=2, padding=1))
    x = torch.randn(1, 1, 9, 9, 9)
    shape = model(x).shape

    report = convert_to_gmr(model, kernel_size=7)

    assert [layer.kernel_size_after for layer in report.replaced] == [7, 7]
    assert model[0].kernel_size == 7
    assert model(x).shape == shape


def test_anisotropic_kernel_needs_kernel_size():
    model = nn.Sequential(nn.Conv3d(1, 2, (3, 3, 1), padding=(1, 1, 0)))

    report = convert_to_gmr(model)
    assert [note.name for note in report.skipped] == ["0"]
    assert "not cubic" in report.skipped[0].reason
    assert not report.is_equivariant

    report = convert_to_gmr(model, kernel_size=3)
    assert isinstance(model[0], GMRConv3d)
    assert model(torch.randn(1, 1, 6, 6, 6)).shape == (1, 2, 6, 6, 6)


def test_even_kernel_kept_dense():
    model = nn.Sequential(nn.Conv3d(1, 2, 2, stride=2))

    report = convert_to_gmr(model)
    assert "even" in report.skipped[0].reason

    report = convert_to_gmr(model, kernel_size=3)
    assert "odd amount" in report.skipped[0].reason
    assert type(model[0]) is nn.Conv3d


def test_anisotropic_stride_kept_dense():
    model = nn.Sequential(nn.Conv3d(1, 2, 3, stride=(2, 2, 1), padding=1))

    report = convert_to_gmr(model)

    assert "anisotropic stride" in report.skipped[0].reason


def test_conv2d_converted():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))

    report = convert_to_gmr(model)

    assert isinstance(model[0], GMRConv2d)
    assert type(model[2]) is nn.Conv2d
    assert len(report.replaced) == 1
    assert report.is_equivariant


def test_same_padding_string():
    model = nn.Sequential(nn.Conv3d(1, 2, 5, padding="same"))

    convert_to_gmr(model)

    assert model(torch.randn(1, 1, 7, 7, 7)).shape == (1, 2, 7, 7, 7)


def test_pooling_rules():
    model = nn.Sequential(
        nn.MaxPool3d(2), nn.MaxPool3d(3, stride=2), nn.AvgPool3d(3, stride=1, padding=1), nn.AvgPool3d(2, stride=1)
    )

    notes = find_symmetry_breaking_layers(model)

    assert [note.name for note in notes] == ["1", "3"]
    assert "1 + a multiple of 2" in notes[0].reason
    assert "off-centre" in notes[1].reason


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kernel_size": 4}, "odd positive int"),
        ({"kernel_size": 0}, "odd positive int"),
        ({"weight_init": "copy"}, "weight_init must be one of"),
        ({"stride": 2}, "taken from each convolution"),
        ({"ring_profile": "square"}, "rejected"),
    ],
)
def test_invalid_arguments(arguments, message):
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1))

    with pytest.raises(InputError, match=message):
        convert_to_gmr(model, **arguments)
