"""Speed and peak memory of GMRConv3d against nn.Conv3d, measured side by side.

For every combination of channels C (C_in = C_out), cubic volume size S and kernel
size k, the script times a forward+backward pass in train mode (input gradient
included, as inside a network) and a forward pass in eval mode under ``no_grad``,
alternating the two layers so that load from other processes hits both alike, and
prints the median time ratio GMRConv3d / nn.Conv3d. Peak memory is measured in a
fresh subprocess per layer: on CPU the growth of the peak resident set size
(``VmHWM`` in /proc/self/status) over the resident size just before the pass, on CUDA
``torch.cuda.max_memory_allocated``. On CPU the subprocesses run with glibc's
``MALLOC_MMAP_THRESHOLD_`` set to 128 KiB, so every tensor buffer is mapped and unmapped
on its own and the peak counts live buffers, as the CUDA figure does. Without it, glibc
keeps freed buffers in its heap and the peak also depends on the order of allocations;
``--malloc-default`` measures that way.

Usage:
    python benchmarks/bench_layer.py --quick            # C=32, 48^3, k=3..9
    python benchmarks/bench_layer.py                    # full grid (hours on 2 CPU cores)
    python benchmarks/bench_layer.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from gmrseg.layers import GMRConv3d
from gmrseg.layers.strategy import cost_profile

BATCH = 2

# Buffers of at least this many bytes get their own memory mapping in the CPU memory subprocesses.
MMAP_THRESHOLD = 128 * 1024


def build_layers(channels: int, kernel_size: int, strategy: str, device: str) -> tuple[nn.Module, nn.Module]:
    """Return ``(nn.Conv3d, GMRConv3d)`` with the same shape and "same" padding."""
    dense = nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2).to(device)
    gmr = GMRConv3d(channels, channels, kernel_size, strategy=strategy).to(device)
    return dense, gmr


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _train_step(layer: nn.Module, x: torch.Tensor) -> None:
    layer.train()
    x.grad = None
    layer.zero_grad(set_to_none=True)
    layer(x).sum().backward()


def _eval_step(layer: nn.Module, x: torch.Tensor) -> None:
    layer.eval()
    with torch.no_grad():
        layer(x)


def time_pair(
    dense: nn.Module, gmr: nn.Module, x: torch.Tensor, step, repeats: int, device: str, warmup: int = 1
) -> tuple[float, float]:
    """Return the median seconds of ``step`` for both layers, runs alternated, after ``warmup`` untimed runs each."""
    times = {"dense": [], "gmr": []}
    for index in range(warmup + repeats):
        for name, layer in (("dense", dense), ("gmr", gmr)):
            _sync(device)
            start = time.perf_counter()
            step(layer, x)
            _sync(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["dense"]), statistics.median(times["gmr"])


def _status_bytes(field: str) -> int:
    """Return a memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_memory_child(args: argparse.Namespace) -> None:
    """Run one train step of one layer and print its peak memory in bytes (subprocess entry point)."""
    torch.manual_seed(0)
    dense, gmr = build_layers(args.channels[0], args.kernels[0], args.strategy, args.device)
    layer = dense if args.memory_child == "dense" else gmr
    size = args.sizes[0]
    x = torch.randn(BATCH, args.channels[0], size, size, size, device=args.device, requires_grad=True)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _train_step(layer, x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # Writing 5 to clear_refs resets this process's peak resident size (VmHWM) to
        # the current one; ru_maxrss cannot be used because it keeps the parent's peak.
        base = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        _train_step(layer, x)
        peak = _status_bytes("VmHWM") - base
    print(json.dumps({"peak_bytes": peak}))


def measure_memory(kind: str, channels: int, size: int, kernel_size: int, args: argparse.Namespace) -> int:
    """Return the peak memory of one train step of ``kind`` ("dense" or "gmr"), in bytes."""
    command = [
        sys.executable, __file__, "--memory-child", kind, "--channels", str(channels), "--sizes", str(size),
        "--kernels", str(kernel_size), "--device", args.device, "--strategy", args.strategy,
        "--threads", str(args.threads),
    ]
    env = dict(os.environ)
    if not args.malloc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return int(json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced grid: C=32, S=48, k=3,5,7,9")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64], help="C_in = C_out values")
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64], help="cubic volume sizes in voxels")
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7, 9], help="kernel sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per layer and mode (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per layer and mode before timing")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--strategy", default="auto", help="GMRConv3d strategy to time (default auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory subprocesses")
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="measure CPU memory with glibc's default allocation thresholds (the peak then includes freed heap)",
    )
    parser.add_argument("--memory-child", choices=("dense", "gmr"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.sizes = [32], [48]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        measure_memory_child(args)
        return

    malloc = "default" if args.malloc_default else f"mmap threshold {MMAP_THRESHOLD // 1024} KiB"
    profile = cost_profile(torch.device(args.device).type)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"device {args.device}, batch {BATCH}, strategy {args.strategy} (cost profile {profile}), "
          f"CPU memory: glibc {malloc}")
    if args.device.startswith("cuda"):
        print(f"# GPU: {torch.cuda.get_device_name(args.device)}")
    print("| C | S | k | strategy | train Conv3d (s) | train ratio | eval Conv3d (s) | eval ratio | memory Conv3d (MiB) | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for channels in args.channels:
        for size in args.sizes:
            for kernel_size in args.kernels:
                dense, gmr = build_layers(channels, kernel_size, args.strategy, args.device)
                x = torch.randn(BATCH, channels, size, size, size, device=args.device, requires_grad=True)
                chosen = gmr.resolve_strategy(x.shape, x.device)
                train_dense, train_gmr = time_pair(dense, gmr, x, _train_step, args.repeats, args.device, args.warmup)
                eval_dense, eval_gmr = time_pair(dense, gmr, x, _eval_step, args.repeats, args.device, args.warmup)
                memory = "n/a | n/a"
                if not args.no_memory:
                    mem_dense = measure_memory("dense", channels, size, kernel_size, args)
                    mem_gmr = measure_memory("gmr", channels, size, kernel_size, args)
                    memory = f"{mem_dense / 2**20:.0f} | {mem_gmr / max(mem_dense, 1):.2f}"
                print(
                    f"| {channels} | {size} | {kernel_size} | {chosen} | {train_dense:.3f} | {train_gmr / train_dense:.2f} "
                    f"| {eval_dense:.3f} | {eval_gmr / eval_dense:.2f} | {memory} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
