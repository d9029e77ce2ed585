"""Fit the throughputs of the GMR layer's cost model to timings on this machine.

"auto" in GMRConv3d picks the dense or the spectral strategy from a cost model with one
profile of throughputs per device and CPU instruction set (``_PROFILES`` in
``gmrseg/layers/strategy.py``). This script times both strategies of GMRConv3d over a grid
of channels C (C_in = C_out), cubic volume sizes S and kernel sizes k, in eval mode
(forward under ``no_grad``) and in train mode (forward+backward with the input gradient),
and fits each mode's throughputs by least squares on relative error:

    dense time    = multiply-adds / dense
    spectral time = FFT flops / fft + mixing multiply-adds / mix + overhead

It prints one profile entry to paste into ``_PROFILES``, then, for every grid point and
mode, the measured spectral / dense time ratio next to the fitted one and the strategy
the fitted profile would choose. Each time is the minimum over ``--repeats`` runs.

Usage:
    python benchmarks/fit_cost_model.py                          # C=8..64, S=24..64, k=3,5
    python benchmarks/fit_cost_model.py --channels 16 32 --sizes 32 48 --kernels 3 5 7
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from gmrseg.layers import GMRConv3d
from gmrseg.layers.functional import fft_shape
from gmrseg.layers.strategy import _MARGIN

BATCH = 2
MODES = ("eval", "train")


def operation_counts(channels: int, size: int, kernel_size: int) -> tuple[float, float, float]:
    """Return dense multiply-adds, FFT flops and mixing multiply-adds of one layer call.

    The counts follow ``estimate_costs`` in ``gmrseg/layers/strategy.py`` for batch 2,
    C_in = C_out = ``channels``, a cubic volume of ``size`` voxels, ``"same"`` padding and
    the default ``kernel_size // 2 + 1`` rings.
    """
    num_rings = kernel_size // 2 + 1
    reach = kernel_size // 2
    multiply_adds = BATCH * channels * channels * kernel_size**3 * size**3

    grid = math.prod(fft_shape((size,) * 3, reach, reach))
    fft_flops = 2.5 * grid * math.log2(grid) * BATCH * 2 * channels
    mixing = BATCH * channels * channels * num_rings * grid
    return multiply_adds, fft_flops, mixing


def fastest_time(function: Callable[[], None], repeats: int) -> float:
    """Return the minimum wall time in seconds of ``repeats`` calls, after one untimed call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def time_strategies(channels: int, size: int, kernel_size: int, repeats: int) -> dict[str, float]:
    """Return the times in seconds of ``"{strategy}_{mode}"`` for both strategies and modes."""
    x = torch.randn(BATCH, channels, size, size, size)
    times = {}
    for strategy in ("dense", "spectral"):
        layer = GMRConv3d(channels, channels, kernel_size, strategy=strategy)
        x_grad = x.clone().requires_grad_(True)

        def train_step() -> None:
            out = layer(x_grad)
            out.backward(torch.ones_like(out))

        def eval_step() -> None:
            with torch.no_grad():
                layer(x)

        layer.train()
        times[f"{strategy}_train"] = fastest_time(train_step, repeats)
        layer.eval()
        times[f"{strategy}_eval"] = fastest_time(eval_step, repeats)
    return times


def nonnegative_least_squares(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the least-squares solution of ``matrix @ x = target`` with every ``x >= 0``.

    With three unknowns, trying every subset of free columns is exact and cheap. The
    columns left out get 0.
    """
    columns = matrix.shape[1]
    best, best_residual = np.zeros(columns), float(np.sum(target**2))
    for subset in itertools.chain.from_iterable(itertools.combinations(range(columns), n) for n in range(1, columns + 1)):
        solution, *_ = np.linalg.lstsq(matrix[:, subset], target, rcond=None)
        if np.any(solution < 0):
            continue
        candidate = np.zeros(columns)
        candidate[list(subset)] = solution
        residual = float(np.sum((matrix @ candidate - target) ** 2))
        if residual < best_residual:
            best, best_residual = candidate, residual
    return best


def fit_profile(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Return ``{mode: {"dense", "fft", "mix", "overhead"}}`` fitted to the timed ``rows``.

    Each equation is divided by its measured time, so the fit minimises relative error.
    A term that the fit drops (this grid cannot separate its cost from the others) gets
    an infinite throughput, or an overhead of 0.
    """
    profile = {}
    for mode in MODES:
        dense_rows, spectral_rows = [], []
        for row in rows:
            multiply_adds, fft_flops, mixing = operation_counts(row["C"], row["S"], row["k"])
            dense_rows.append([multiply_adds / row[f"dense_{mode}"]])
            spectral_time = row[f"spectral_{mode}"]
            spectral_rows.append([fft_flops / spectral_time, mixing / spectral_time, 1.0 / spectral_time])

        ones = np.ones(len(rows))
        (dense_inverse,) = nonnegative_least_squares(np.array(dense_rows), ones)
        fft_inverse, mixing_inverse, overhead = nonnegative_least_squares(np.array(spectral_rows), ones)
        if dense_inverse <= 0:
            raise ValueError(f"invalid {mode} timings: dense times must be positive, got {dense_rows}")
        profile[mode] = {
            "dense": 1.0 / dense_inverse,
            "fft": 1.0 / fft_inverse if fft_inverse > 0 else math.inf,
            "mix": 1.0 / mixing_inverse if mixing_inverse > 0 else math.inf,
            "overhead": float(overhead),
        }
    return profile


def predicted_ratio(profile: dict[str, dict[str, float]], row: dict, mode: str) -> float:
    """Return the fitted spectral / dense time ratio of one grid point."""
    multiply_adds, fft_flops, mixing = operation_counts(row["C"], row["S"], row["k"])
    throughput = profile[mode]
    dense = multiply_adds / throughput["dense"]
    spectral = fft_flops / throughput["fft"] + mixing / throughput["mix"] + throughput["overhead"]
    return spectral / dense


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64], help="C_in = C_out values")
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 32, 48, 64], help="cubic volume sizes in voxels")
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5], help="kernel sizes")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per strategy and mode (minimum kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for channels in args.channels:
        for size in args.sizes:
            for kernel_size in args.kernels:
                row = {"C": channels, "S": size, "k": kernel_size}
                row.update(time_strategies(channels, size, kernel_size, args.repeats))
                rows.append(row)
    profile = fit_profile(rows)

    print(f"# torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, batch {BATCH}")
    print("profile = {")
    for mode in MODES:
        values = ", ".join(f'"{name}": {value:.3g}' for name, value in profile[mode].items())
        print(f'    "{mode}": {{{values}}},')
    print("}")
    print("| C | S | k | mode | dense (s) | spectral (s) | measured ratio | fitted ratio | choice |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for mode in MODES:
            measured = row[f"spectral_{mode}"] / row[f"dense_{mode}"]
            fitted = predicted_ratio(profile, row, mode)
            choice = "spectral" if fitted < _MARGIN else "dense"
            print(f"| {row['C']} | {row['S']} | {row['k']} | {mode} | {row[f'dense_{mode}']:.4f} | "
                  f"{row[f'spectral_{mode}']:.4f} | {measured:.2f} | {fitted:.2f} | {choice} |")


if __name__ == "__main__":
    main()
