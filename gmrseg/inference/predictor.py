"""Segment scans with a trained run: read, preprocess, sliding window, restore, write.

``Predictor`` loads a run folder once (plans.json and one network per fold) and
segments scans given as arrays or files. ``predict`` is the ``gmrseg predict``
command: it resolves the input and output paths, splits the cases across
torchrun ranks, and keeps going when one case fails.

Per case::

    read (NIfTI or DICOM) -> preprocess_case (orientation, spacing, normalisation, crop)
      -> for each fold and each TTA symmetry: sliding-window logits -> softmax
      -> mean probabilities -> restore_to_original (linear) -> argmax
      -> postprocess_segmentation (network classes to dataset labels)
      -> write_segmentation on the input's exact geometry (+ probabilities)
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gmrseg.errors import InputError
from gmrseg.inference.distributed import distributed_context, rank_device, split_for_rank
from gmrseg.inference.jobs import PredictionJob, plan_jobs
from gmrseg.inference.postprocess import postprocess_segmentation
from gmrseg.inference.run_folder import find_folds, load_fold_network, load_plans
from gmrseg.inference.sliding_window import plan_window_layout, sliding_window_logits
from gmrseg.inference.tta import TTA_MODES, tta_symmetries
from gmrseg.utils.device import resolve_device

__all__ = ["CaseResult", "Predictor", "predict"]

logger = logging.getLogger(__name__)

# Stitch on the CPU when the blended output would take more than this share of
# free GPU memory. The share is an estimate, so a CUDA out-of-memory error also
# falls back to the CPU.
_GPU_STITCH_FRACTION = 0.25

# Show a tqdm bar over windows for volumes with at least this many windows. The bar is shown
# on a terminal only, because in a log file every update would add a line.
_WINDOW_PROGRESS_MIN = 64


@dataclass
class CaseResult:
    """Prediction for one scan on its own voxel grid.

    Attributes:
        segmentation: dataset label values ``(X, Y, Z)``, int16.
        probabilities: per network class ``(K, X, Y, Z)`` float32.
        timings: seconds per stage (``preprocess``, ``windows``, ``invert``).
    """

    segmentation: np.ndarray
    probabilities: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class Predictor:
    """A trained run loaded once, ready to segment scans.

    Args:
        networks: one network per fold, in eval mode, on ``device``.
        plans: the run's plans.json as returned by ``load_plans``.
        device: device for the network (the sliding window's ``sw_device``).
        tta: ``"none"``, ``"flip"`` or ``"full"``; None picks ``"none"`` for an
            equivariant network (flips and cube rotations change its output only
            by float rounding, see docs/benchmarks.md) and ``"flip"`` otherwise.
        overlap: overlap of neighbouring windows, in [0, 1) (default 0.5).
        sw_batch_size: windows per network call (default 2).
        amp: float16 autocast; None enables it on CUDA only.
        max_voxels: largest volume, in voxels per channel at the model spacing,
            that preprocessing accepts; None keeps the limit stored in the
            run's preprocessing plan. Larger scans stop with an error that
            names the sizes, before any large allocation.
        verbose: log every stage of every case with its seconds at INFO level.

    Voxels that are 0 in every channel are labelled background (probability 1)
    when the run normalizes every channel with ``zscore_nonzero``, which defines
    zero as "no data". Such voxels lie outside the field of view, for example in
    the corners of a scan resampled after a rotation.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        plans: dict[str, Any],
        *,
        device: torch.device | str = "cpu",
        tta: str | None = None,
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        amp: bool | None = None,
        max_voxels: int | None = None,
        verbose: bool = False,
    ) -> None:
        if not networks:
            raise ValueError("Predictor needs at least one network")
        if tta is not None and tta not in TTA_MODES:
            raise InputError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        if not 0.0 <= overlap < 1.0:
            raise InputError(f"overlap must lie in [0, 1), got {overlap}")
        if not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise InputError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}")
        if max_voxels is not None and (not isinstance(max_voxels, int) or max_voxels < 1):
            raise InputError(f"max_voxels must be a positive integer, got {max_voxels!r}")

        from gmrseg.data.preprocessing import PreprocessingPlan, zero_means_no_data

        self.networks = list(networks)
        self.plans = plans
        self.preprocessing = PreprocessingPlan.from_dict(plans["preprocessing"])
        self.empty_is_background = zero_means_no_data(self.preprocessing)
        if max_voxels is not None:
            self.preprocessing.max_voxels = max_voxels
        self.device = torch.device(device)
        if tta is None:
            tta = "none" if plans.get("equivariant") else "flip"
        self.tta = tta
        self.symmetries = tta_symmetries(self.tta, spatial_dims=3)
        self.overlap = float(overlap)
        self.sw_batch_size = sw_batch_size
        self.amp = self.device.type == "cuda" if amp is None else bool(amp and self.device.type == "cuda")
        self.verbose = verbose
        self.roi_size = tuple(int(size) for size in plans["patch_size"])
        self.window_margin = tuple(int(size) for size in plans.get("window_margin") or [0] * len(self.roi_size))
        self.num_classes = len(plans["network_labels"])
        self.in_channels = int(plans["in_channels"])

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        *,
        device: str | torch.device = "auto",
        folds: Sequence[int | str] | None = None,
        checkpoint: str = "best",
        tta: str | None = None,
        overlap: float = 0.5,
        sw_batch_size: int = 2,
        **kwargs: Any,
    ) -> "Predictor":
        """Load plans.json and the requested folds' checkpoints from a run folder.

        Args:
            run_dir: folder written by ``gmrseg train``.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Under torchrun,
                ``auto`` and ``cuda`` put each local rank on its own GPU.
            folds: fold numbers to average; None takes every fold with the checkpoint.
            checkpoint: ``"best"`` or ``"last"``.
            tta, overlap, sw_batch_size, kwargs: see :class:`Predictor`.
        """
        plans = load_plans(run_dir)
        try:
            resolved = resolve_device(device)
        except ValueError as error:
            raise InputError(str(error)) from error
        if str(device) in ("auto", "cuda"):
            resolved = rank_device(resolved, distributed_context())

        fold_paths = find_folds(run_dir, folds, checkpoint)
        networks = [load_fold_network(plans, path, resolved) for _, path in fold_paths]
        predictor = cls(networks, plans, device=resolved, tta=tta, overlap=overlap, sw_batch_size=sw_batch_size, **kwargs)
        logger.info(
            "Loaded %s (%s) from %s: folds %s, checkpoint %s, device %s, TTA %s (%d symmetries)",
            plans["network"]["name"],
            "equivariant" if plans.get("equivariant") else "not equivariant",
            run_dir,
            ", ".join(str(fold) for fold, _ in fold_paths),
            checkpoint,
            resolved,
            predictor.tta,
            len(predictor.symmetries),
        )
        return predictor

    @contextmanager
    def _stage(self, case_id: str, stage: str, timings: dict[str, float]) -> Iterator[None]:
        """Time one stage of one case and log it (INFO with ``verbose``, DEBUG otherwise)."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        timings[stage] = timings.get(stage, 0.0) + seconds
        logger.log(logging.INFO if self.verbose else logging.DEBUG, "%s: %s %.2f s", case_id, stage, seconds)

    def _check_channels(self, image: np.ndarray, case_id: str) -> None:
        """Reject arrays that are not ``(C, X, Y, Z)`` with the model's channel count."""
        if image.ndim != 4:
            raise InputError(f"{case_id}: image must have shape (C, X, Y, Z), got {image.shape}")
        if image.shape[0] != self.in_channels:
            names = ", ".join(str(name) for name in self.plans.get("channel_names", {}).values())
            raise InputError(
                f"{case_id}: the model expects {self.in_channels} channel(s) ({names or 'see plans.json'}), "
                f"the input has {image.shape[0]}"
            )

    def _stitch_device(self, image: torch.Tensor) -> torch.device:
        """Return where to blend windows: the network's GPU when the output fits, else the CPU."""
        if self.device.type != "cuda":
            return self.device
        free, _ = torch.cuda.mem_get_info(self.device)
        output_bytes = 4 * (self.num_classes * 2 + 1) * math.prod(image.shape[2:])
        if output_bytes > _GPU_STITCH_FRACTION * free:
            logger.info("Stitching windows on the CPU: the output needs %.1f GB of GPU memory", output_bytes / 1e9)
            return torch.device("cpu")
        return self.device

    def _mean_probabilities(self, image: torch.Tensor, stitch_device: torch.device) -> torch.Tensor:
        """Average softmax probabilities over folds and TTA symmetries, ``(1, K, *spatial)`` on ``stitch_device``."""
        image = image.to(stitch_device)
        layout = plan_window_layout(image.shape[2:], self.roi_size, self.overlap)
        progress = layout.total_windows >= _WINDOW_PROGRESS_MIN and sys.stderr.isatty()

        total = None
        for network in self.networks:
            for symmetry in self.symmetries:
                logits = sliding_window_logits(
                    network,
                    image,
                    self.roi_size,
                    overlap=self.overlap,
                    sw_batch_size=self.sw_batch_size,
                    sw_device=self.device,
                    device=stitch_device,
                    amp=self.amp,
                    symmetry=None if symmetry.is_identity else symmetry,
                    progress=progress,
                )
                probabilities = torch.softmax(logits, dim=1)
                del logits
                total = probabilities if total is None else total.add_(probabilities)
        return total / (len(self.networks) * len(self.symmetries))

    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Return mean probabilities ``(1, K, *spatial)`` for a preprocessed image ``(1, C, *spatial)``.

        On CUDA, an out-of-memory error while blending on the GPU is retried
        once with blending on the CPU.
        """
        stitch_device = self._stitch_device(image)
        try:
            return self._mean_probabilities(image, stitch_device)
        except torch.cuda.OutOfMemoryError:
            if stitch_device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            logger.warning("CUDA out of memory while stitching on %s; retrying with stitching on the CPU", self.device)
            return self._mean_probabilities(image, torch.device("cpu"))

    def _predict_with_margin(self, image: torch.Tensor) -> torch.Tensor:
        """Pad ``(1, C, *spatial)`` with ``window_margin`` zeros per side, predict, and crop the margin off."""
        margin = self.window_margin
        if not any(margin):
            return self.predict_probabilities(image)
        padding = [size for axis_margin in reversed(margin) for size in (axis_margin, axis_margin)]
        probabilities = self.predict_probabilities(torch.nn.functional.pad(image, padding))
        crop = tuple(slice(m, probabilities.shape[2 + axis] - m) for axis, m in enumerate(margin))
        return probabilities[(slice(None), slice(None), *crop)]

    def segment(self, image: np.ndarray, affine: np.ndarray, *, case_id: str = "scan") -> CaseResult:
        """Segment one scan given as an array on its own grid.

        Args:
            image: ``(C, X, Y, Z)`` float array, as ``read_image`` returns it.
            affine: the scan's voxel-to-world affine (RAS+, mm).
            case_id: name used in messages.

        Returns:
            Segmentation and probabilities on the scan's grid (same ``X, Y, Z``).
        """
        from gmrseg.data.preprocessing import preprocess_case, restore_to_original

        self._check_channels(image, case_id)
        timings: dict[str, float] = {}

        with self._stage(case_id, "preprocess", timings):
            try:
                preprocessed = preprocess_case(image, affine, self.preprocessing)
            except InputError as error:
                raise InputError(f"{case_id}: {error}") from error
            tensor = torch.as_tensor(preprocessed.image, dtype=torch.float32)[None]

        with self._stage(case_id, "windows", timings):
            probabilities = self._predict_with_margin(tensor)[0].cpu()
            del tensor

        with self._stage(case_id, "invert", timings):
            restored = np.asarray(restore_to_original(probabilities, preprocessed.inverse, mode="linear"), dtype=np.float32)
            del probabilities
            if restored.shape[1:] != image.shape[1:]:
                raise RuntimeError(
                    f"{case_id}: restore_to_original returned shape {restored.shape[1:]}, expected {image.shape[1:]}"
                )
            if self.empty_is_background:
                _set_background(restored, ~np.any(image != 0, axis=0))
            classes = np.argmax(restored, axis=0)
            segmentation = postprocess_segmentation(classes, affine, self.plans, image=image[0])

        return CaseResult(segmentation=segmentation, probabilities=restored, timings=timings)

    def predict_job(self, job: PredictionJob, *, overwrite: bool = False) -> dict[str, float]:
        """Read, segment and write one case; return seconds per stage."""
        from gmrseg.data.io import read_dicom_series, read_image, write_probabilities, write_segmentation

        timings: dict[str, float] = {}
        with self._stage(job.case_id, "read", timings):
            if job.dicom_folder is not None:
                image, geometry = read_dicom_series(job.dicom_folder)
            else:
                paths = list(job.image_paths)
                image, geometry = read_image(paths if len(paths) > 1 else paths[0], num_channels=self.in_channels)

        result = self.segment(image, geometry.affine, case_id=job.case_id)
        timings.update(result.timings)
        del image

        with self._stage(job.case_id, "write", timings):
            write_segmentation(result.segmentation, geometry, job.output, overwrite=overwrite)
            if job.probabilities is not None:
                write_probabilities(result.probabilities, geometry, job.probabilities, overwrite=overwrite)
        return timings


def _set_background(probabilities: np.ndarray, mask: np.ndarray) -> None:
    """Give background (class 0) probability 1 on ``mask``, in place; ``probabilities`` is ``(C, X, Y, Z)``."""
    if mask.any():
        probabilities[:, mask] = 0.0
        probabilities[0, mask] = 1.0


def _jobs_to_run(jobs: list[PredictionJob], overwrite: bool) -> tuple[list[PredictionJob], list[PredictionJob]]:
    """Split jobs into those to run and those whose outputs all exist already (skipped)."""
    if overwrite:
        return jobs, []
    run, skipped = [], []
    for job in jobs:
        existing = [path for path in job.outputs if path.exists()]
        if not existing:
            run.append(job)
        elif len(existing) == len(job.outputs):
            skipped.append(job)
        else:
            # Part of the outputs exists (for example the segmentation but not the probabilities).
            run.append(job)
    return run, skipped


def predict(
    run_dir: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    device: str = "auto",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    tta: str | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "best",
    save_probabilities: bool = False,
    overwrite: bool = False,
    verbose: bool = False,
) -> int:
    """Segment a NIfTI file, a folder of NIfTI files or a DICOM series folder (``gmrseg predict``).

    One scan (a file or a DICOM series): an error is raised as it happens, and
    an existing output raises ``FileExistsError`` unless ``overwrite``. A folder: cases whose
    outputs all exist are kept and logged (use ``overwrite`` to replace them),
    each failing case is logged and skipped, the others are written. Under
    torchrun each rank segments every ``WORLD_SIZE``-th case and writes its own files.

    Args:
        run_dir: run folder written by ``gmrseg train``.
        input: NIfTI file, folder of NIfTI files, or DICOM series folder.
        output: NIfTI file (one case) or output folder.
        device, overlap, sw_batch_size, tta, folds, checkpoint: see :meth:`Predictor.from_run`.
        save_probabilities: also write ``CASE_probabilities.nii.gz`` (float32, one volume per network class).
        overwrite: replace existing outputs.
        verbose: log each stage of each case with its seconds.

    Returns:
        Number of cases that failed on this rank (0 when all were written or kept).
    """
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"--overlap must lie in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise InputError(f"--sw-batch-size must be a positive integer, got {sw_batch_size}")
    context = distributed_context()

    plans = load_plans(run_dir)
    # Any NIfTI or ITK ending is accepted, whatever the training data used.
    jobs = plan_jobs(input, output, num_channels=int(plans["in_channels"]), save_probabilities=save_probabilities)
    single_scan = Path(input).is_file() or jobs[0].dicom_folder is not None
    single = single_scan and len(jobs) == 1 and not context.is_distributed
    if single and not overwrite and any(path.exists() for path in jobs[0].outputs):
        existing = next(path for path in jobs[0].outputs if path.exists())
        raise FileExistsError(f"output {existing} already exists; pass --overwrite to replace it")

    # Split before looking at existing outputs: other ranks may be writing
    # theirs already, and every rank must see the same list.
    mine, skipped = _jobs_to_run(split_for_rank(jobs, context), overwrite)
    if skipped:
        logger.warning(
            "Kept %d existing output(s) in %s (pass --overwrite to replace them): %s",
            len(skipped),
            Path(output),
            ", ".join(job.case_id for job in skipped[:10]) + (" ..." if len(skipped) > 10 else ""),
        )
    if context.is_distributed:
        logger.info("Rank %d of %d: %d of %d case(s)", context.rank, context.world_size, len(mine), len(jobs))
    if not mine:
        return 0

    predictor = Predictor.from_run(
        run_dir,
        device=device,
        folds=folds,
        checkpoint=checkpoint,
        tta=tta,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        verbose=verbose,
    )

    if single:
        timings = predictor.predict_job(mine[0], overwrite=overwrite)
        logger.info("Wrote %s (%.1f s)", mine[0].output, sum(timings.values()))
        return 0

    failed: list[str] = []
    description = f"predict (rank {context.rank})" if context.is_distributed else "predict"
    # disable=None hides the bar when stderr is not a terminal (a log file or a pipe).
    for job in tqdm(mine, desc=description, unit="case", disable=None,
                    position=context.rank if context.is_distributed else None):
        try:
            timings = predictor.predict_job(job, overwrite=overwrite)
        except Exception as error:  # noqa: BLE001 - one bad case must not stop the others
            failed.append(job.case_id)
            logger.error("Case %s (%s) failed and was skipped: %s", job.case_id, job.source, error)
            logger.debug("Traceback for case %s", job.case_id, exc_info=True)
            continue
        logger.info("Wrote %s (%.1f s)", job.output, sum(timings.values()))

    if failed:
        logger.error("%d of %d case(s) failed: %s", len(failed), len(mine), ", ".join(failed))
    return len(failed)
