"""Read and preprocess the training cases of a fold into tensors.

Each case is read with the dataset checks of ``gmrseg.data.io``, its labels
are mapped to network classes (lateral pairs merged) and it is preprocessed
with the run's plan. With a cache folder, preprocessed cases are stored as
``<plan and label-map digest>/<case id>.pt`` (plain tensors, read with ``weights_only=True``)
and reused by later folds and resumed runs.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from gmrseg.data.dataset import Case, DatasetSpec
from gmrseg.data.io import read_image, read_label
from gmrseg.data.preprocessing import PreprocessingPlan, preprocess_case
from gmrseg.errors import InputError
from gmrseg.utils.files import atomic_write_path

__all__ = ["prepare_cases"]

logger = logging.getLogger(__name__)


def _prepare_one(case: Case, spec: DatasetSpec, plan: PreprocessingPlan, to_network: np.ndarray) -> dict[str, Any]:
    image, geometry = read_image(case.image_paths, num_channels=spec.num_channels)
    label = read_label(case.label_path, geometry, spec.labels)
    label = to_network[label.astype(np.int64)]
    preprocessed = preprocess_case(image, geometry.affine, plan, label=label)
    return {
        "case_id": case.case_id,
        "image": preprocessed.image.float().contiguous(),
        "label": preprocessed.label.to(torch.int16).contiguous(),
    }


def prepare_cases(
    spec: DatasetSpec,
    case_ids: Sequence[str],
    plan: PreprocessingPlan,
    to_network: np.ndarray,
    *,
    cache_dir: Path | None = None,
    quiet: bool = False,
) -> dict[str, dict[str, Any]]:
    """Return ``{case_id: {"case_id", "image", "label"}}`` on the preprocessed grid.

    Args:
        spec: the dataset.
        case_ids: training cases to prepare.
        plan: preprocessing plan of the run.
        to_network: lookup table from dataset label value to network class.
        cache_dir: folder for preprocessed cases, or ``None`` for memory only.
        quiet: hide the progress bar.

    Raises:
        InputError: a case id not among the dataset's training cases, or any
            read or preprocessing error (naming the file).
    """
    by_id = {case.case_id: case for case in spec.training}
    missing = [case_id for case_id in case_ids if case_id not in by_id]
    if missing:
        raise InputError(f"case(s) {', '.join(missing[:5])} are not training cases of {spec.root}")

    # The cache key covers the plan and the label mapping, which both change the stored tensors.
    mapping_digest = hashlib.sha256(np.asarray(to_network, dtype=np.int64).tobytes()).hexdigest()[:8]
    folder = Path(cache_dir) / f"{plan.digest()}_{mapping_digest}" if cache_dir is not None else None
    prepared: dict[str, dict[str, Any]] = {}
    show_bar = not quiet and sys.stderr.isatty()
    for case_id in tqdm(case_ids, desc="preprocessing", unit="case", disable=not show_bar, leave=False):
        cached = folder / f"{case_id}.pt" if folder is not None else None
        if cached is not None and cached.is_file():
            prepared[case_id] = torch.load(cached, map_location="cpu", weights_only=True)
            continue

        prepared[case_id] = _prepare_one(by_id[case_id], spec, plan, to_network)
        if cached is not None:
            with atomic_write_path(cached) as temporary:
                torch.save(prepared[case_id], temporary)
    logger.info("Prepared %d cases%s", len(prepared), f" (cache: {folder})" if folder is not None else "")
    return prepared
