"""Parameter counts and forward time of GMRUNet, the dense UNet of the same shape, and MONAI DynUNet.

Every network is built through ``gmrseg.networks.build_network`` and timed on
one patch (batch 1) in eval mode without gradients. The timed calls run in
rounds, one call per network per round, so that load from other processes on a
shared machine affects all networks alike. The table reports the median per
network and its ratio to DynUNet.

Usage:
    python benchmarks/bench_networks.py                     # 64^3, CPU, 3 rounds
    python benchmarks/bench_networks.py --size 32 --rounds 5 --networks gmrunet dynunet
    python benchmarks/bench_networks.py --device cuda --markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from gmrseg.networks import build_network

# name shown in the table -> (factory name, keyword arguments)
NETWORKS = {
    "gmrunet": ("gmrunet", {}),
    "unet": ("unet", {}),
    "dynunet": ("dynunet", {}),
    "gmrunet-compact": ("gmrunet", {"features": [16, 32, 64, 128], "kernel_sizes": [5, 5, 3, 3]}),
    "unet-compact": ("unet", {"features": [16, 32, 64, 128], "kernel_sizes": [5, 5, 3, 3]}),
}

DESCRIPTIONS = {
    "gmrunet": "GMRUNet defaults: features 32-64-128-256-320, GMR kernels 9-7-5-5-3",
    "unet": "same UNet, dense kernels 9-7-5-5-3",
    "dynunet": "MONAI DynUNet, nnU-Net-like: filters 32-320, 3x3x3 kernels",
    "gmrunet-compact": "GMRUNet features 16-32-64-128, GMR kernels 5-5-3-3",
    "unet-compact": "same compact UNet, dense kernels 5-5-3-3",
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="cubic patch side in voxels (default: 64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per network (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per network first (default: 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--networks", nargs="+", choices=tuple(NETWORKS), default=["gmrunet", "unet", "dynunet"],
        help="networks to compare (default: gmrunet unet dynunet)",
    )
    parser.add_argument("--strategy", default="auto", help="forward strategy of the GMR layers (default: auto)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return parser.parse_args(argv)


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo on Linux, else what ``platform`` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def time_call(model: torch.nn.Module, patch: torch.Tensor) -> float:
    """Return the seconds of one forward call, synchronising CUDA around it."""
    if patch.device.type == "cuda":
        torch.cuda.synchronize(patch.device)
    start = time.perf_counter()
    with torch.no_grad():
        model(patch)
    if patch.device.type == "cuda":
        torch.cuda.synchronize(patch.device)
    return time.perf_counter() - start


def build(label: str, strategy: str, device: torch.device) -> torch.nn.Module:
    name, kwargs = NETWORKS[label]
    if name == "gmrunet" and strategy != "auto":
        kwargs = {**kwargs, "gmr_kwargs": {"strategy": strategy}}
    return build_network(name, 1, 2, **kwargs).to(device).eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    patch = torch.randn(1, 1, args.size, args.size, args.size, device=device)

    models = {label: build(label, args.strategy, device) for label in args.networks}
    for label, model in models.items():
        for _ in range(args.warmup):
            time_call(model, patch)

    # Interleave the timed calls so that changing load hits every network alike.
    seconds: dict[str, list[float]] = {label: [] for label in models}
    for round_index in range(args.rounds):
        for label, model in models.items():
            seconds[label].append(time_call(model, patch))
            progress = f"round {round_index + 1}/{args.rounds}: {label} {seconds[label][-1]:.2f} s"
            print(progress, file=sys.stderr, flush=True)

    medians = {label: statistics.median(times) for label, times in seconds.items()}
    reference = medians.get("dynunet")
    header = ["network", "parameters", "forward s (median)", "min s", "vs dynunet"]
    rows = []
    for label, model in models.items():
        ratio = f"{medians[label] / reference:.2f}x" if reference else "-"
        rows.append(
            [label, f"{count_parameters(model):,}", f"{medians[label]:.2f}", f"{min(seconds[label]):.2f}", ratio]
        )

    print(
        f"patch 1x1x{args.size}^3, device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"rounds {args.rounds}, warmup {args.warmup}, GMR strategy {args.strategy}, "
        f"CPU {cpu_name()} ({os.cpu_count()} cores visible)"
    )
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(row[column]) for row in rows + [header]) for column in range(len(header))]
        for row in [header] + rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    for label in models:
        print(f"  {label}: {DESCRIPTIONS[label]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
