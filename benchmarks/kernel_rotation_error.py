"""How far GMR kernels are from rotation invariance, measured without resampling any data.

The input is a smooth analytic function ``f`` (a sum of random Gaussian blobs, widths
1.5 to 3 voxels). A layer applied to ``f`` sampled on the voxel grid computes, at a
point ``p``, ``sum_m K[m] f(p - m)`` over the kernel offsets ``m``. Sampling ``f`` on a
grid rotated by ``R`` instead and convolving gives ``sum_m K[m] f(p - R m)`` at the same
physical point. For an exactly rotation-invariant kernel both agree. The script reports
``||difference|| / ||grid output||`` over points ``p`` inside a central ball of radius 6
voxels. Each entry averages over blob sets and over the 16 output channels of a freshly
initialised layer with one input channel, in float64. Rotations: 30 and 45 degrees about one axis, and
one random 3D rotation. Rows: both GMR ring profiles at initialisation and nn.Conv3d
with its default random kernel.

Usage:
    python benchmarks/kernel_rotation_error.py [--kernels 3 5 7 9] [--points 400] [--blob-sets 3]
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from gmrseg.layers import GMRConv3d


def random_blobs(generator: torch.Generator, count: int = 24, extent: float = 12.0):
    """Return ``(centres (count, 3), widths (count,), amplitudes (count,))`` of a blob sum, in voxels."""
    centres = (torch.rand(count, 3, generator=generator, dtype=torch.float64) * 2 - 1) * extent
    widths = 1.5 + 1.5 * torch.rand(count, generator=generator, dtype=torch.float64)
    amplitudes = torch.randn(count, generator=generator, dtype=torch.float64)
    return centres, widths, amplitudes


def evaluate_blobs(points: torch.Tensor, blobs) -> torch.Tensor:
    """Evaluate the blob sum at ``points`` of shape ``(..., 3)``."""
    centres, widths, amplitudes = blobs
    squared = ((points[..., None, :] - centres) ** 2).sum(-1)
    return (amplitudes * torch.exp(-0.5 * squared / widths**2)).sum(-1)


def axis_rotation(degrees: float) -> torch.Tensor:
    """Return the rotation by ``degrees`` about the last axis."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    return torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    """Return a uniformly random rotation from a random unit quaternion."""
    w, x, y, z = torch.nn.functional.normalize(torch.randn(4, generator=generator, dtype=torch.float64), dim=0)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)]),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)]),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]),
    ])


def kernel_offsets(kernel_size: int) -> torch.Tensor:
    """Return the voxel offsets of a cubic kernel, shape ``(k^3, 3)``, in the kernel's memory order."""
    radius = kernel_size // 2
    axis = torch.arange(-radius, radius + 1, dtype=torch.float64)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def rotation_error(kernels: torch.Tensor, rotation: torch.Tensor, blobs, points: torch.Tensor) -> float:
    """Return the mean over kernels of the relative difference between grid and rotated-grid outputs.

    Args:
        kernels: ``(C, k, k, k)`` float64 kernels.
        rotation: ``(3, 3)`` rotation matrix.
        blobs: blob sum from ``random_blobs``.
        points: ``(P, 3)`` evaluation points, in voxels from the volume centre.
    """
    offsets = kernel_offsets(kernels.shape[-1])
    flat = kernels.reshape(kernels.shape[0], -1)
    on_grid = evaluate_blobs(points[:, None, :] - offsets, blobs) @ flat.T
    on_rotated_grid = evaluate_blobs(points[:, None, :] - offsets @ rotation.T, blobs) @ flat.T
    relative = (on_rotated_grid - on_grid).norm(dim=0) / on_grid.norm(dim=0)
    return relative.mean().item()


def ball_points(generator: torch.Generator, count: int, radius: float = 6.0) -> torch.Tensor:
    """Return ``count`` uniform random points inside the central ball of ``radius`` voxels."""
    points = (torch.rand(count * 3, 3, generator=generator, dtype=torch.float64) * 2 - 1) * radius
    return points[points.norm(dim=1) < radius][:count]


def layer_kernels(name: str, kernel_size: int) -> torch.Tensor:
    """Return the ``(16, k, k, k)`` float64 kernels of a freshly initialised layer."""
    if name == "nn.Conv3d":
        return nn.Conv3d(1, 16, kernel_size, dtype=torch.float64).weight.detach()[:, 0]
    layer = GMRConv3d(1, 16, kernel_size, ring_profile=name, dtype=torch.float64)
    with torch.no_grad():
        return layer.kernel()[:, 0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7, 9], help="kernel sizes")
    parser.add_argument("--points", type=int, default=400, help="evaluation points inside the central ball")
    parser.add_argument("--blob-sets", type=int, default=3, help="random blob sums averaged per entry")
    parser.add_argument("--seed", type=int, default=0, help="seed of blobs, points, rotation and kernels")
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    rotations = {"30° axis": axis_rotation(30), "45° axis": axis_rotation(45), "random": random_rotation(generator)}
    blob_sets = [random_blobs(generator) for _ in range(args.blob_sets)]
    points = ball_points(generator, args.points)

    print("| kernel | k | " + " | ".join(rotations) + " |")
    print("|---|---|" + "---|" * len(rotations))
    for kernel_size in args.kernels:
        for name in ("gaussian", "binned", "nn.Conv3d"):
            kernels = layer_kernels(name, kernel_size)
            errors = []
            for rotation in rotations.values():
                total = sum(rotation_error(kernels, rotation, blobs, points) for blobs in blob_sets)
                errors.append(total / len(blob_sets))
            print(f"| {name} | {kernel_size} | " + " | ".join(f"{error:.1e}" for error in errors) + " |", flush=True)


if __name__ == "__main__":
    main()
