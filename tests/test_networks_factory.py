"""build_network names, arguments, errors and the size_divisor of every network."""

import pytest
import torch

from gmrseg.errors import InputError
from gmrseg.layers import GMRConv3d
from gmrseg.networks import NETWORK_NAMES, GMRUNet, build_network, is_equivariant, valid_arguments

SEGRESNET = {"init_filters": 4, "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "norm": ["group", {"num_groups": 2}]}
SMALL_ARGUMENTS = {
    "gmrunet": {"features": [2, 4, 8], "kernel_sizes": [5, 3, 3]},
    "unet": {"features": [2, 4, 8], "kernel_sizes": [5, 3, 3]},
    "dynunet": {"filters": [4, 8, 16]},
    "basicunet": {"features": [4, 4, 8, 8, 16, 4]},
    "segresnet": SEGRESNET,
    "converted:unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "converted:dynunet": {"filters": [4, 8, 16]},
    "converted:basicunet": {"features": [4, 4, 8, 8, 16, 4]},
    "converted:segresnet": SEGRESNET,
}
EXPECTED_DIVISOR = {
    "gmrunet": 4,
    "unet": 4,
    "dynunet": 4,
    "basicunet": 16,
    "segresnet": 4,
    "converted:unet": 4,
    "converted:dynunet": 4,
    "converted:basicunet": 16,
    "converted:segresnet": 4,
}


def test_every_name_covered():
    assert set(SMALL_ARGUMENTS) == set(NETWORK_NAMES)


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_build_every_network(name):
    model = build_network(name, 2, 3, **SMALL_ARGUMENTS[name]).eval()
    size = model.size_divisor * 2

    output = model(torch.randn(1, 2, size, size, size))

    assert model.size_divisor == EXPECTED_DIVISOR[name]
    assert output.shape == (1, 3, size, size, size)
    has_gmr = any(isinstance(module, GMRConv3d) for module in model.modules())
    assert has_gmr == is_equivariant(name)


def test_default_divisors():
    assert build_network("gmrunet", 1, 2).size_divisor == 16
    assert build_network("dynunet", 1, 2).size_divisor == 16
    assert build_network("segresnet", 1, 2).size_divisor == 8


def test_unet_is_dense_gmrunet():
    model = build_network("unet", 1, 2, **SMALL_ARGUMENTS["unet"])

    assert isinstance(model, GMRUNet)
    assert model.conv == "dense"


def test_gmrunet_2d():
    model = build_network("gmrunet", 1, 2, spatial_dims=2, features=[2, 4]).eval()

    assert model.kernel_sizes == (9, 7)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)


def test_dynunet_nnunet_defaults():
    model = build_network("dynunet", 1, 2)

    assert tuple(model.filters) == (32, 64, 128, 256, 320)
    assert model.strides == (1, 2, 2, 2, 2)
    norm = model.input_block.norm1
    assert isinstance(norm, torch.nn.InstanceNorm3d)
    assert norm.affine


def test_dynunet_deep_supervision_list():
    model = build_network("dynunet", 1, 2, filters=[4, 8, 16, 16], deep_supervision=True).train()

    outputs = model(torch.randn(2, 1, 16, 16, 16))

    assert isinstance(outputs, list)
    assert len(outputs) == 3
    assert all(output.shape == (2, 2, 16, 16, 16) for output in outputs)


def test_dynunet_anisotropic_strides_divisor():
    model = build_network(
        "dynunet", 1, 2, filters=[4, 8, 16], strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]], kernel_size=[3, 3, 3]
    )

    assert model.size_divisor == 4


def test_converted_network_has_report():
    model = build_network("converted:basicunet", 1, 2, **SMALL_ARGUMENTS["converted:basicunet"])

    assert model.conversion_report.replaced
    assert model.conversion_report.is_equivariant


def test_conversion_arguments():
    model = build_network("converted:dynunet", 1, 2, filters=[4, 8, 16], conversion={"kernel_size": 5})

    sizes = {module.kernel_size for module in model.modules() if isinstance(module, GMRConv3d)}
    assert sizes == {5}


def test_unknown_conversion_argument():
    with pytest.raises(InputError, match=r"unknown conversion argument\(s\) \['stride'\].*kernel_size"):
        build_network("converted:dynunet", 1, 2, conversion={"stride": 2})


def test_unknown_name_lists_valid_names():
    with pytest.raises(InputError, match="unknown network 'vnet'; valid names are gmrunet, unet, dynunet"):
        build_network("vnet", 1, 2)


def test_name_case_insensitive():
    assert is_equivariant(" GMRUNet ")


def test_unknown_argument_lists_valid_ones():
    with pytest.raises(InputError, match=r"unknown argument\(s\) \['kernel'\]; valid arguments are .*kernel_sizes"):
        build_network("gmrunet", 1, 2, kernel=3)


def test_unet_rejects_conv_argument():
    with pytest.raises(InputError, match=r"unknown argument\(s\) \['conv'\]"):
        build_network("unet", 1, 2, conv="gmr")


def test_monai_rejection_wrapped():
    with pytest.raises(InputError, match="MONAI rejected"):
        build_network("dynunet", 1, 2, filters=[4, 8], strides=[1, 2, 2])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 2.0}, "out_channels"),
        ({"spatial_dims": 4}, "spatial_dims"),
    ],
)
def test_invalid_channels_and_dims(arguments, message):
    call = {"in_channels": 1, "out_channels": 2, **arguments}

    with pytest.raises(InputError, match=message):
        build_network("gmrunet", **call)


def test_is_equivariant():
    assert is_equivariant("gmrunet")
    assert is_equivariant("converted:segresnet")
    assert not is_equivariant("unet")
    assert not is_equivariant("dynunet")
    with pytest.raises(InputError, match="valid names"):
        is_equivariant("gmr")


def test_valid_arguments():
    assert "kernel_sizes" in valid_arguments("gmrunet")
    assert "conv" not in valid_arguments("unet")
    assert "conversion" in valid_arguments("converted:segresnet")
    assert "in_channels" not in valid_arguments("dynunet")


def test_rebuild_from_run_folder_arguments():
    # A run folder stores the name and kwargs as JSON; lists must rebuild the same network.
    torch.manual_seed(0)
    source = build_network("gmrunet", 1, 2, features=[2, 4], kernel_sizes=[3, 3], norm=["instance", {"affine": True}])
    target = build_network("gmrunet", 1, 2, features=[2, 4], kernel_sizes=[3, 3], norm=["instance", {"affine": True}])

    target.load_state_dict(source.state_dict())

    x = torch.randn(1, 1, 4, 4, 4)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))
