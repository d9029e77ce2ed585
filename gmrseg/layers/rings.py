"""Ring functions: the radially symmetric basis that every GMR kernel is built from.

A GMR kernel of odd size ``k`` in ``D`` dimensions is ``K[o, i](x) = sum_l W[o, i, l] R_l(x)``
where ring ``R_l`` depends only on the distance ``|x|`` (in voxels) from the kernel
centre, so the kernel is unchanged by any permutation or sign flip of the axes.
"""

from __future__ import annotations

import torch

__all__ = ["kernel_distances", "default_num_rings", "ring_centres", "gaussian_rings"]


def default_num_rings(kernel_size: int) -> int:
    """Return the default ring count ``k // 2 + 1``: one ring per integer radius."""
    return kernel_size // 2 + 1


def kernel_distances(kernel_size: int, spatial_dims: int, device=None, dtype=None) -> torch.Tensor:
    """Return the distance of every kernel voxel from the centre, shape ``(k,) * spatial_dims``, in voxels."""
    radius = kernel_size // 2
    axis = torch.arange(-radius, radius + 1, device=device, dtype=dtype or torch.get_default_dtype())
    grids = torch.meshgrid(*([axis] * spatial_dims), indexing="ij")
    return torch.sqrt(sum(grid**2 for grid in grids))


def ring_centres(kernel_size: int, num_rings: int, device=None, dtype=None) -> torch.Tensor:
    """Return ring radii ``mu_l`` evenly spaced from 0 to ``k // 2`` voxels, shape ``(num_rings,)``."""
    radius = kernel_size // 2
    if num_rings == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.linspace(0.0, float(radius), num_rings, device=device, dtype=dtype)


def gaussian_rings(distances: torch.Tensor, centres: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Evaluate Gaussian rings of the continuous distance, each normalised to unit L2 norm.

    Args:
        distances: distance of each kernel voxel from the centre, any shape ``S``.
        centres: ring radii ``mu_l``, shape ``(n,)``.
        sigmas: ring widths ``sigma_l`` in voxels, shape ``(n,)``.

    Returns:
        Rings of shape ``(n, *S)``. Unit norm keeps a kernel's energy close to
        ``sum_l W_l**2`` so the weight initialisation can match ``nn.Conv3d``.
    """
    shape = (-1,) + (1,) * distances.dim()
    rings = torch.exp(-0.5 * ((distances.unsqueeze(0) - centres.view(shape)) / sigmas.view(shape)) ** 2)
    norms = rings.flatten(1).norm(dim=1).clamp_min(torch.finfo(rings.dtype).tiny)
    return rings / norms.view(shape)
