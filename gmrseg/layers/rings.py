"""Ring functions: the radially symmetric basis that every GMR kernel is built from.

A GMR kernel of odd size ``k`` in ``D`` dimensions is ``K[o, i](x) = sum_l W[o, i, l] R_l(x)``.
Ring ``R_l`` depends only on the distance ``|x|`` (in voxels) from the kernel centre,
so the kernel is unchanged by any permutation or sign flip of the axes.

Two ring profiles exist:

- ``"gaussian"``: ``R_l(x) = w(|x|) exp(-(|x| - mu_l)^2 / (2 sigma_l^2))`` with ``mu_l``
  evenly spaced from 0 to ``k // 2`` voxels, a smooth radial window ``w`` that reaches
  zero before the cube's faces, and unit L2 norm. Each ring is then corrected so that
  its fourth moments are isotropic (``quartic_correction``), which removes the largest
  term of the sampled kernel's anisotropy.
- ``"binned"``: the rings of the GMR-Conv 1.0.3 reference package. Voxels are first
  binned by distance into ``n`` shells, then shell ``a`` contributes to ring ``l`` with
  the weight ``N(a; l, sigma_l)`` (a Gaussian across shell indices, not distances).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "RING_PROFILES",
    "default_num_rings",
    "kernel_distances",
    "ring_centres",
    "ring_window",
    "quartic_correction",
    "gaussian_rings",
    "reference_bins",
    "binned_rings",
    "initial_sigmas",
    "sigma_bounds",
]

RING_PROFILES = ("gaussian", "binned")

# The reference package scales each ring by 1 / (sigma * 2.5066); 2.5066 is its
# rounded sqrt(2 pi), kept so that converted reference weights give the same outputs.
_REFERENCE_SQRT_TWO_PI = 2.5066

# The reference initialises sigma to the shell width divided by 2.355 (FWHM / sigma).
_REFERENCE_FWHM_RATIO = 2.355


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


def ring_window(distances: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Return the smooth radial window of the gaussian profile, same shape as ``distances``.

    The window is 1 up to ``k // 2 - 2`` voxels from the centre and falls as a
    squared cosine to 0 at ``k // 2 + 1``. Every voxel nearer than ``k // 2 + 1``
    lies inside the ``k``-cube, so the windowed kernel has a ball-shaped support that
    any rotation maps onto itself, and its smooth edge keeps the sampled kernel close
    to band-limited. Measured as in ``benchmarks/kernel_rotation_error.py``, this taper
    brings the rotation error of a 9-cube kernel from about 3e-2 (Gaussian rings cut by
    the cube) to about 3e-4; tapers starting 1 or 1.5 voxels from the edge measured worse
    at k = 5, 7 and 9, and wider ones no better.
    """
    radius = kernel_size // 2
    start, end = radius - 2.0, radius + 1.0
    fraction = ((distances - start) / (end - start)).clamp(0.0, 1.0)
    return torch.cos(fraction * (math.pi / 2)) ** 2


def quartic_correction(distances: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Return the fixed tensors that make a sampled ring's fourth moments isotropic, shape ``(2, *S)``.

    A radial function sampled on a cubic grid keeps the grid's symmetry, so its second
    moments are isotropic, but its fourth moments are not: ``sum R x^4`` need not equal
    ``3 sum R x^2 y^2``. Convolving a smooth input with such a kernel differs between
    orientations through this fourth-order term first. Its size is the inner product of
    ``R`` with the cubic harmonic ``P4 = sum_i x_i^4 - 3 |x|^4 / (D + 2)``, which
    averages to zero over every sphere.

    Row 0 is the correction direction ``window * P4``; row 1 is the probe
    ``P4 / <window * P4, P4>``. ``R - <R, probe> * direction`` has no fourth-order
    anisotropy, keeps every symmetry of the cube and stays inside the window. Both rows
    are zero where the grid has no anisotropic fourth moment (``k = 1``, or one
    dimension). Measured as in ``benchmarks/kernel_rotation_error.py``, the correction
    lowers the rotation error of freshly initialised gaussian kernels about 5 times at
    k = 3 and 5, and 2 to 3 times at k = 7 and 9.

    Args:
        distances: distance of each kernel voxel from the centre, shape ``S = (k,) * D``, in voxels.
        window: radial window of the same shape.
    """
    spatial_dims = distances.dim()
    radius = distances.shape[0] // 2
    axis = torch.arange(-radius, radius + 1, device=distances.device, dtype=distances.dtype)
    grids = torch.meshgrid(*([axis] * spatial_dims), indexing="ij")
    harmonic = sum(grid**4 for grid in grids) - 3.0 / (spatial_dims + 2) * distances**4
    direction = window * harmonic
    scale = (direction * harmonic).sum()
    if scale.item() <= 1e-9:
        return torch.zeros((2, *distances.shape), device=distances.device, dtype=distances.dtype)
    return torch.stack([direction, harmonic / scale])


def gaussian_rings(
    distances: torch.Tensor,
    centres: torch.Tensor,
    sigmas: torch.Tensor,
    window: torch.Tensor | None = None,
    quartic: torch.Tensor | None = None,
) -> torch.Tensor:
    """Evaluate Gaussian rings of the continuous distance, each normalised to unit L2 norm.

    Args:
        distances: distance of each kernel voxel from the centre, any shape ``S``, in voxels.
        centres: ring radii ``mu_l``, shape ``(n,)``, in voxels.
        sigmas: ring widths ``sigma_l``, shape ``(n,)``, in voxels.
        window: optional radial window of shape ``S`` multiplied into every ring.
        quartic: optional ``(2, *S)`` tensors from ``quartic_correction``, applied after the window.

    Returns:
        Rings of shape ``(n, *S)``. Unit norm keeps a kernel's energy close to
        ``sum_l W_l**2``, so the weight initialisation can match ``nn.Conv3d``'s.
    """
    shape = (-1,) + (1,) * distances.dim()
    rings = torch.exp(-0.5 * ((distances.unsqueeze(0) - centres.view(shape)) / sigmas.view(shape)) ** 2)
    if window is not None:
        rings = rings * window
    if quartic is not None:
        anisotropy = (rings * quartic[1]).flatten(1).sum(dim=1)
        rings = rings - anisotropy.view(shape) * quartic[0]
    norms = rings.flatten(1).norm(dim=1).clamp_min(torch.finfo(rings.dtype).tiny)
    return rings / norms.view(shape)


def reference_bins(kernel_size: int, num_rings: int, spatial_dims: int, device=None, dtype=None) -> torch.Tensor:
    """Return the 0/1 distance shells of the reference package, shape ``(n, k, ..., k)``.

    Shell ``a`` contains the voxels whose distance ``d`` from the centre satisfies
    ``t_a <= d < t_(a+1)`` with ``t = linspace(0, k // 2 + 0.5, n + 1)``; voxels at or
    beyond ``k // 2 + 0.5`` (the cube's corners) belong to no shell. The thresholds
    are compared in float64, as the reference does with numpy.
    """
    distances = kernel_distances(kernel_size, spatial_dims, dtype=torch.float64)
    levels = torch.linspace(0.0, kernel_size // 2 + 0.5, num_rings + 1, dtype=torch.float64)
    shells = [(distances >= levels[a]) & (distances < levels[a + 1]) for a in range(num_rings)]
    return torch.stack(shells).to(device=device, dtype=dtype or torch.get_default_dtype())


def binned_rings(bins: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Smooth distance shells across shell indices into rings, as the reference package does.

    Args:
        bins: 0/1 shells from ``reference_bins``, shape ``(n, *S)``.
        sigmas: ring widths in shell indices (not voxels), shape ``(n,)``.

    Returns:
        Rings of shape ``(n, *S)``: ``R_l = sum_a exp(-(a - l)^2 / (2 sigma_l^2)) / (2.5066 sigma_l) * bins_a``.
    """
    num_rings = bins.shape[0]
    index = torch.arange(num_rings, device=bins.device, dtype=bins.dtype)
    offsets = (index.view(1, -1) - index.view(-1, 1)) / sigmas.view(-1, 1)
    mixing = torch.exp(-0.5 * offsets**2) / (sigmas.view(-1, 1) * _REFERENCE_SQRT_TWO_PI)
    return (mixing @ bins.flatten(1)).view_as(bins)


def initial_sigmas(profile: str, kernel_size: int, num_rings: int) -> float:
    """Return the initial ring width: voxels for ``"gaussian"``, shell indices for ``"binned"``.

    The gaussian profile starts at the ring spacing (1 voxel for the default ring
    count), the binned profile at the reference package's shell width / 2.355.
    """
    if profile == "binned":
        return kernel_size / (2 * max(num_rings - 1, 1)) / _REFERENCE_FWHM_RATIO
    spacing = (kernel_size // 2) / max(num_rings - 1, 1)
    return max(spacing, 0.5)


def sigma_bounds(profile: str, kernel_size: int, num_rings: int) -> tuple[float, float]:
    """Return the ``(min, max)`` clamp of the ring widths, in the units of ``initial_sigmas``.

    The gaussian profile keeps sigma within ``[0.5, k]`` voxels: a ring narrower than
    half a voxel is sampled by a few voxels only, which makes the kernel far from
    rotation invariant. The binned profile keeps the reference package's ``[0.01, 2 n]``.
    """
    if profile == "binned":
        return 0.01, 2.0 * num_rings
    return 0.5, float(kernel_size)
