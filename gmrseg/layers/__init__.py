"""GMR convolution layers and the ring basis they are built from."""

from gmrseg.layers.convert import convert_reference_state_dict
from gmrseg.layers.gmr_conv import GMRConv2d, GMRConv3d

__all__ = ["GMRConv2d", "GMRConv3d", "convert_reference_state_dict"]
