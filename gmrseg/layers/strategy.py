"""Choice of the forward strategy of a GMR layer from a cost model.

The model estimates the time of each strategy in seconds as a sum of terms
``multiply-adds (or FFT flops) / throughput`` plus a fixed overhead per call, with
throughputs per device and per mode (forward, or forward+backward). Only their ratios
matter for the choice. On a CPU where PyTorch dispatches AVX-512 kernels, dense
convolutions measured 3 to 5 times faster than on an earlier 2-core CPU, while FFTs
gained less. So CPUs have two profiles, chosen by
``torch.backends.cpu.get_cpu_capability()``. The ring-decomposed strategy is never
chosen automatically: its depthwise convolution was slower than both other strategies
in every measured case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gmrseg.layers.functional import fft_shape

__all__ = ["STRATEGIES", "estimate_costs", "choose_strategy", "cost_profile"]

STRATEGIES = ("auto", "dense", "rings", "spectral")

# Each profile has one entry per mode. Throughputs are operations per second: dense
# convolution multiply-adds, FFT flops (2.5 N log2 N per real transform of N points) and
# the real multiply-adds of the spectral channel mixing. "overhead" is a fixed cost in
# seconds per spectral call.
_PROFILES = {
    # Fitted by benchmarks/fit_cost_model.py (its default grid: batch 2, C = 8 to 64, 24^3
    # to 64^3, k = 3 and 5) on a 2-core AMD EPYC with AVX-512, PyTorch 2.13 and oneDNN. The fit underrates the spectral path at C = 8 in
    # training (measured 0.5x to 0.7x of dense where it predicts 1.4x to 2x), so "auto"
    # misses that speed-up there. Elsewhere in the fitted set its choice was never more
    # than 1.2x slower than the other strategy.
    "cpu-avx512": {
        "eval": {"dense": 1.05e11, "fft": 1.16e10, "mix": 6.83e10, "overhead": 4.5e-3},
        "train": {"dense": 3.33e10, "fft": 2.96e9, "mix": 1.29e10, "overhead": 1.4e-2},
    },
    # Fitted earlier to benchmarks/bench_layer.py and component timings on a 2-core AMD
    # EPYC whose dense convolutions ran 3 to 5 times slower than on the AVX-512 machine
    # (C = 32, 48^3). Training throughputs are the forward ones divided by the measured
    # ratio of forward+backward to forward time (4.5 dense, 2.2 spectral).
    "cpu": {
        "eval": {"dense": 4.0e9, "fft": 5.8e8, "mix": 3.7e8, "overhead": 1e-3},
        "train": {"dense": 4.0e9 / 4.5, "fft": 5.8e8 / 2.2, "mix": 3.7e8 / 2.2, "overhead": 2.2e-3},
    },
    # NOTE: estimates, not measured: cuDNN reaches a large share of the GPU's peak on
    # dense convolutions, while the spectral path is bound by memory traffic.
    "cuda": {
        "eval": {"dense": 2.0e13, "fft": 1.0e12, "mix": 2.0e12, "overhead": 2e-4},
        "train": {"dense": 2.0e13 / 3.0, "fft": 1.0e12 / 2.5, "mix": 2.0e12 / 2.5, "overhead": 5e-4},
    },
}

# NOTE: the model weighs time only. A spectral forward+backward pass peaked at 0.7x to 1.2x
# the live memory of nn.Conv3d's (C = 16 to 64, 48^3 and 64^3, k = 3 to 9, CPU). It has not
# been measured on CUDA, so pass strategy="dense" where memory is tighter than time.
# "auto" takes the spectral path only when the model predicts it at most this fraction
# of the dense time, so that a wrong estimate near the break-even point costs little.
_MARGIN = 0.8

# Read once: PyTorch fixes its CPU kernels when it starts, and a constant keeps the call
# out of traced and compiled graphs.
_CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()


def cost_profile(device_type: str = "cpu", cpu_capability: str | None = None) -> str:
    """Return the name of the cost profile for ``device_type``: ``"cuda"``, ``"cpu-avx512"`` or ``"cpu"``.

    ``cpu_capability`` is the value of ``torch.backends.cpu.get_cpu_capability()`` (for
    example ``"AVX2"`` or ``"AVX512"``); ``None`` reads it from this process. Device
    types other than CUDA are modelled as CPUs.
    """
    if device_type == "cuda":
        return "cuda"
    if cpu_capability is None:
        cpu_capability = _CPU_CAPABILITY
    return "cpu-avx512" if cpu_capability.upper().startswith("AVX512") else "cpu"


def estimate_costs(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: int,
    num_rings: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    device_type: str = "cpu",
    training: bool = False,
    cpu_capability: str | None = None,
) -> dict[str, float]:
    """Return the modelled forward time in seconds of ``"dense"`` and ``"spectral"``.

    Args:
        input_shape: ``(B, C_in, *spatial)`` after any non-zero padding mode is applied.
        out_channels, kernel_size, num_rings, stride, dilation, groups: the layer's settings.
        padding: zero padding still to apply.
        device_type: ``"cpu"``, ``"cuda"`` or another torch device type (modelled as CPU).
        training: model a forward+backward pass instead of a forward pass.
        cpu_capability: see ``cost_profile``; ``None`` reads this process's.
    """
    profile = _PROFILES[cost_profile(device_type, cpu_capability)]
    throughput = profile["train" if training else "eval"]
    batch, in_channels = int(input_shape[0]), int(input_shape[1])
    spatial = [int(size) for size in input_shape[2:]]
    spatial_dims = len(spatial)
    reach = dilation * (kernel_size // 2)
    out_voxels = math.prod((size + 2 * padding - 2 * reach - 1) // stride + 1 for size in spatial)
    pairs = out_channels * in_channels // groups

    dense = batch * pairs * kernel_size**spatial_dims * out_voxels / throughput["dense"]

    grid = math.prod(fft_shape(tuple(spatial), padding, reach))
    fft_flops = 2.5 * grid * math.log2(max(grid, 2)) * batch * (in_channels + out_channels)
    mix = batch * pairs * num_rings * grid / throughput["mix"]
    spectral = fft_flops / throughput["fft"] + mix + throughput["overhead"]
    return {"dense": dense, "spectral": spectral}


def choose_strategy(
    input_shape: Sequence[int],
    out_channels: int,
    kernel_size: int,
    num_rings: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    device_type: str = "cpu",
    training: bool = False,
    cpu_capability: str | None = None,
) -> str:
    """Return ``"dense"`` or ``"spectral"``, whichever the cost model predicts faster (see ``estimate_costs``)."""
    if kernel_size == 1:
        return "dense"
    costs = estimate_costs(
        input_shape,
        out_channels,
        kernel_size,
        num_rings,
        stride,
        padding,
        dilation,
        groups,
        device_type,
        training,
        cpu_capability,
    )
    return "spectral" if costs["spectral"] < _MARGIN * costs["dense"] else "dense"
