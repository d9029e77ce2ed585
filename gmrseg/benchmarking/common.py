"""Steps shared by the end-to-end benchmarks: output folder, configs, training, testing, hardware.

Every step calls the public gmrseg APIs a user would call (``train``,
``predict``, ``evaluate``), so a benchmark measures the product as shipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from gmrseg.errors import InputError
from gmrseg.utils.files import save_json_atomic

__all__ = [
    "base_config_values",
    "count_parameters",
    "evaluate_folder",
    "hardware_summary",
    "predict_and_evaluate",
    "predict_folder",
    "prepare_benchmark_dir",
    "torch_threads",
    "train_with_config",
    "write_region_labels",
]

logger = logging.getLogger(__name__)

MARKER = "benchmark.json"


def prepare_benchmark_dir(out: Path, *, overwrite: bool, outputs: Sequence[str], marker: dict[str, Any]) -> None:
    """Create ``out`` for a benchmark and write ``benchmark.json`` into it.

    A non-empty ``out`` is rejected unless ``overwrite`` is set and it
    contains a ``benchmark.json`` from an earlier run. Only the names in
    ``outputs`` are then removed, never anything else in the folder.

    Raises:
        FileExistsError: ``out`` is not empty and ``overwrite`` is False.
        InputError: ``out`` is a file, or a non-empty folder that is not a benchmark folder.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite "
                                  "to replace an earlier benchmark there")
        if not (out / MARKER).is_file():
            raise InputError(f"--out {out} is not empty and contains no {MARKER}, so it is not a benchmark folder; "
                             "gmrseg does not clear it even with --overwrite. Choose a new folder")
        removed = []
        for name in (MARKER, *outputs):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(name)
        logger.info("--overwrite: removed %s of the earlier benchmark in %s", ", ".join(removed), out)
    out.mkdir(parents=True, exist_ok=True)
    save_json_atomic(out / MARKER, marker)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch CPU threads, then restore the previous count; None changes nothing.

    Note:
        On a CPU shared with other jobs, one thread per process keeps OpenMP
        threads from waiting on each other. A small UNet forward pass on a
        2-core machine at load 10 took 0.82 s with 2 threads and 0.026 s with 1.
    """
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"--threads must be a positive integer, got {threads!r}")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def hardware_summary(device: str) -> dict[str, Any]:
    """Describe the machine: CPU model, core count, torch threads, load average, accelerator."""
    import torch

    from gmrseg.utils.device import resolve_device

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        resolved = resolve_device(device)
    except ValueError as error:
        raise InputError(f"--device: {error}") from error
    accelerator = torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else "none"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "device": str(resolved),
        "accelerator": accelerator,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    load_text = f", 1-minute load average {load:.1f} at start" if load is not None else ""
    accelerator_text = f" ({accelerator})" if resolved.type == "cuda" else ""
    info["summary"] = (f"{cpu}, {info['logical_cpus']} logical CPUs, {info['torch_threads']} torch threads"
                       f"{load_text}; device {resolved}{accelerator_text}")
    return info


def base_config_values(
    base_config: str | Path,
    *,
    network: str,
    features: Sequence[int] | None = None,
    kernel_sizes: Sequence[int] | None = None,
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    patch_size: Sequence[int] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Load a preset or YAML config as nested dicts and apply a benchmark's overrides.

    The network keyword arguments of the base config are kept, so models that
    differ only in ``network`` have the same shape; ``gmr_kwargs`` (ring
    settings) is dropped for networks without GMR layers. A shortened ``epochs``
    also shortens the warm-up so that the config stays valid. A time limit of the
    base config is dropped, so that compared models train the same epochs however
    fast each of them runs.
    """
    from gmrseg.networks.factory import valid_arguments
    from gmrseg.training.config import config_to_dict, load_config

    values = config_to_dict(load_config(base_config))
    kwargs = dict(values["network"]["kwargs"])
    if "gmr_kwargs" in kwargs and "gmr_kwargs" not in valid_arguments(network):
        del kwargs["gmr_kwargs"]
    if features is not None:
        kwargs["features"] = [int(size) for size in features]
    if kernel_sizes is not None:
        kwargs["kernel_sizes"] = [int(size) for size in kernel_sizes]
    values["network"] = {"name": network, "kwargs": kwargs}
    values["training"]["time_limit_minutes"] = None
    if epochs is not None:
        values["training"]["epochs"] = int(epochs)
        values["schedule"]["warmup_epochs"] = min(values["schedule"]["warmup_epochs"], max(int(epochs) - 1, 0))
    if iterations_per_epoch is not None:
        values["training"]["iterations_per_epoch"] = int(iterations_per_epoch)
    if patch_size is not None:
        values["data"]["patch_size"] = [int(size) for size in patch_size]
    if seed is not None:
        values["training"]["seed"] = int(seed)
    return values


def count_parameters(run_dir: str | Path) -> int:
    """Count the trainable parameters of a trained run's network, rebuilt from its plans.json and checkpoint."""
    import torch

    from gmrseg.inference.run_folder import find_folds, load_fold_network, load_plans

    plans = load_plans(run_dir)
    (_, checkpoint), *_ = find_folds(run_dir, None, "best")
    network = load_fold_network(plans, checkpoint, torch.device("cpu"))
    return sum(parameter.numel() for parameter in network.parameters() if parameter.requires_grad)


def train_with_config(values: dict[str, Any], config_path: Path, dataset_dir: Path, run_dir: Path, *,
                      device: str) -> dict[str, Any]:
    """Check and write a config, train fold 0 with it, and time the training.

    Returns:
        ``{"training_seconds", "best_validation_dice", "best_epoch", "epochs",
        "iterations_per_epoch", "parameters", "run_dir", "config"}``.
    """
    from gmrseg.training.config import config_from_dict, save_config
    from gmrseg.training.run import train

    save_config(config_from_dict(values), config_path)
    start = time.perf_counter()
    summary = train(dataset_dir, config_path=config_path, run_dir=run_dir, fold="0", device=device, quiet=True)
    seconds = time.perf_counter() - start
    fold = summary["folds"][0]
    return {
        "training_seconds": seconds,
        "best_validation_dice": fold.get("best_dice_mean"),
        "best_epoch": fold.get("best_epoch"),
        "epochs": values["training"]["epochs"],
        "iterations_per_epoch": values["training"]["iterations_per_epoch"],
        "parameters": count_parameters(run_dir),
        "run_dir": str(run_dir),
        "config": str(config_path),
    }


def write_region_labels(path: Path, regions: dict[str, Sequence[int]]) -> Path:
    """Write a dataset.json-style file whose classes are unions of label values (``{"name": [1, 2]}``).

    ``gmrseg evaluate`` scores each region as one mask, e.g. the whole
    structure of a dataset that splits it into parts.
    """
    labels: dict[str, Any] = {"background": 0}
    labels.update({name: [int(value) for value in values] for name, values in regions.items()})
    save_json_atomic(path, {"labels": labels})
    return path


def predict_folder(run_dir: str | Path, images: Path, predictions: Path, *, device: str, tta: str | None,
                   overlap: float) -> float:
    """Segment a folder of scans with ``gmrseg predict``; return the wall time in seconds.

    Raises:
        RuntimeError: a case failed to predict (its error is in the log).
    """
    from gmrseg.inference.predictor import predict

    start = time.perf_counter()
    failures = predict(run_dir, images, predictions, device=device, overlap=overlap, tta=tta)
    seconds = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{failures} case(s) of {images} failed to predict with {run_dir}; see the log above")
    return seconds


def evaluate_folder(predictions: Path, labels: Path, report: Path, *, dataset_json: Path,
                    region_json: Path | None = None) -> dict[str, Any]:
    """Score predictions with ``gmrseg evaluate``, per class and (optionally) per region.

    Returns:
        ``{"per_class": {class: mean Dice}, "mean": mean over classes, "cases":
        number of cases, "regions": {region: mean Dice}}`` (``regions`` is empty
        without ``region_json``). Reports go to ``report`` and ``report_regions``.
    """
    from gmrseg.evaluation.evaluate import evaluate

    evaluation = evaluate(predictions, labels, dataset_json=dataset_json, output=report)
    summary = evaluation["summary"]
    scores: dict[str, Any] = {
        "per_class": {name: summary[name]["dice"]["mean"] for name in evaluation["classes"]},
        "mean": summary["mean_dice_over_classes"],
        "cases": len(evaluation["cases"]),
        "regions": {},
    }
    if region_json is not None:
        regions = evaluate(predictions, labels, dataset_json=region_json,
                           output=report.with_name(report.name + "_regions"))
        scores["regions"] = {name: regions["summary"][name]["dice"]["mean"] for name in regions["classes"]}
    return scores


def predict_and_evaluate(run_dir: str | Path, images: Path, labels: Path, predictions: Path, report: Path, *,
                         dataset_json: Path, device: str, tta: str | None, overlap: float,
                         region_json: Path | None = None) -> dict[str, Any]:
    """Run :func:`predict_folder` then :func:`evaluate_folder`; the scores also carry ``"seconds"``."""
    seconds = predict_folder(run_dir, images, predictions, device=device, tta=tta, overlap=overlap)
    scores = evaluate_folder(predictions, labels, report, dataset_json=dataset_json, region_json=region_json)
    scores["seconds"] = seconds
    return scores
