"""Segmentation networks: GMRUNet, conversion of MONAI networks to GMR layers, and the network factory."""

from gmrseg.networks.convert import ConversionReport, LayerNote, ReplacedLayer, convert_to_gmr
from gmrseg.networks.factory import NETWORK_NAMES, build_network, is_equivariant, valid_arguments
from gmrseg.networks.gmr_unet import GMRUNet, GradientMagnitude

__all__ = [
    "GMRUNet",
    "GradientMagnitude",
    "ConversionReport",
    "LayerNote",
    "ReplacedLayer",
    "convert_to_gmr",
    "NETWORK_NAMES",
    "build_network",
    "is_equivariant",
    "valid_arguments",
]
