"""Choice of the forward strategy of a GMR layer from a cost model.

The model estimates the time of each strategy in seconds as a sum of terms
``multiply-adds (or FFT flops) / throughput`` plus a fixed overhead per call, with
throughputs per device type. The CPU throughputs were fitted to timings of
``benchmarks/bench_layer.py`` and component timings on a shared 2-core AMD EPYC
(PyTorch 2.13, oneDNN convolutions, C = 32, 48^3); only their ratios matter for the choice. The ring-decomposed strategy
is never chosen automatically: its depthwise convolution was slower than both
other strategies in every measured case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gmrseg.layers.functional import fft_shape

__all__ = ["STRATEGIES", "estimate_costs", "choose_strategy"]

STRATEGIES = ("auto", "dense", "rings", "spectral")

# Throughputs in operations per second of dense convolution multiply-adds, of the real
# matrix multiply-adds of the spectral channel mixing and of FFT flops (2.5 N log2 N per
# real transform of N points). Then a fixed cost per spectral call in seconds, and for
# each strategy the time of a forward+backward pass over that of a forward pass. On CPU the dense
# backward costs far more than its forward, so training favours the spectral path.
_THROUGHPUT = {
    "cpu": {
        "dense": 4.0e9, "mix": 3.7e8, "fft": 5.8e8, "overhead": 1e-3,
        "dense_train": 4.5, "spectral_train": 2.2,
    },
    # NOTE: estimates, not measured: cuDNN reaches a large share of the GPU's peak on
    # dense convolutions, while the spectral path is bound by memory traffic.
    "cuda": {
        "dense": 2.0e13, "mix": 2.0e12, "fft": 1.0e12, "overhead": 2e-4,
        "dense_train": 3.0, "spectral_train": 2.5,
    },
}

# NOTE: the model weighs time only. A spectral forward+backward pass peaked at 0.7x to 1.2x
# the live memory of nn.Conv3d's (C = 32, 48^3, k = 3 to 9, CPU) but has not been measured
# on CUDA; pass strategy="dense" where memory is tighter than time.
# "auto" takes the spectral path only when the model predicts it at most this fraction
# of the dense time, so that a wrong estimate near the break-even point costs little.
_MARGIN = 0.8


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
) -> dict[str, float]:
    """Return the modelled forward time in seconds of ``"dense"`` and ``"spectral"``.

    Args:
        input_shape: ``(B, C_in, *spatial)`` after any non-zero padding mode is applied.
        out_channels, kernel_size, num_rings, stride, dilation, groups: the layer's settings.
        padding: zero padding still to apply.
        device_type: ``"cpu"``, ``"cuda"`` or another torch device type (modelled as CPU).
        training: model a forward+backward pass instead of a forward pass.
    """
    throughput = _THROUGHPUT.get(device_type, _THROUGHPUT["cpu"])
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
    if training:
        dense *= throughput["dense_train"]
        spectral *= throughput["spectral_train"]
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
) -> str:
    """Return ``"dense"`` or ``"spectral"``, whichever the cost model predicts faster (see ``estimate_costs``)."""
    if kernel_size == 1:
        return "dense"
    costs = estimate_costs(
        input_shape, out_channels, kernel_size, num_rings, stride, padding, dilation, groups, device_type, training
    )
    return "spectral" if costs["spectral"] < _MARGIN * costs["dense"] else "dense"
