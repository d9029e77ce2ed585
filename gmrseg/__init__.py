"""gmrseg: rotation-robust 3D medical image segmentation with GMR convolutions.

GMR-Conv layers build each convolution kernel from a few Gaussian-weighted
rings around the kernel centre, so every layer commutes with the 48 rotations
and reflections of the voxel grid and approximately with any rotation.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
