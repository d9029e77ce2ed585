"""On-disk cache of preprocessed cases, so NIfTI files are decoded once per plan.

Layout under the folder the caller gives::

    CACHE_DIR/plan_<digest>/plan.json         the plan (for people; the digest is the key)
    CACHE_DIR/plan_<digest>/<case_id>.npz     image (float32, C X Y Z), label (int16, 1 X Y Z),
                                              inverse (JSON text), source (JSON text)

``<digest>`` is :meth:`PreprocessingPlan.digest`, so a changed plan never
reuses stale arrays. A cached case is reused while its source files keep the
size and modification time recorded in ``source``; otherwise it is rebuilt.
Files are written atomically, so an interrupted run leaves no partial cache
entry and several processes (one per GPU) may fill the same cache.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform
from tqdm import tqdm

from gmrseg.data.preprocessing import PreprocessingPlan, preprocess_case
from gmrseg.errors import InputError
from gmrseg.utils.files import atomic_write_path, save_json_atomic

__all__ = ["LoadPreprocessedd", "cache_folder", "load_preprocessed", "preprocess_to_cache"]

logger = logging.getLogger(__name__)

LabelTransform = Callable[[np.ndarray], np.ndarray]


def cache_folder(cache_dir: str | os.PathLike, plan: PreprocessingPlan) -> Path:
    """Return the folder that contains the cases preprocessed with ``plan``."""
    return Path(cache_dir) / f"plan_{plan.digest()}"


def _source_record(case) -> list[list]:
    """Return ``[path, size, mtime_ns]`` for each input file of ``case`` (images, then the label)."""
    paths = [Path(path) for path in case.image_paths]
    if case.label_path is not None:
        paths.append(Path(case.label_path))
    record = []
    for path in paths:
        stat = path.stat()
        record.append([str(path.resolve()), int(stat.st_size), int(stat.st_mtime_ns)])
    return record


def _is_current(path: Path, source: list[list]) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive["source"])) == source
    except (OSError, KeyError, ValueError) as error:
        logger.warning("Rebuilding unreadable cache file %s (%s)", path, error)
        return False


def _cache_file_name(case_id: str) -> str:
    if not case_id or "/" in case_id or "\\" in case_id or case_id in (".", ".."):
        raise InputError(f"case id {case_id!r} cannot name a cache file; case ids must be plain file names.")
    return f"{case_id}.npz"


def preprocess_to_cache(
    cases: Sequence,
    plan: PreprocessingPlan,
    cache_dir: str | os.PathLike,
    *,
    label_values: Mapping[str, int] | None = None,
    progress: bool = False,
) -> list[dict[str, str]]:
    """Preprocess every case once and store it under ``cache_folder(cache_dir, plan)``.

    Cases whose cache file is current are not read again. Each new case is
    read with :func:`gmrseg.data.io.read_image` and
    :func:`~gmrseg.data.io.read_label` (all file checks apply) and run through
    :func:`~gmrseg.data.preprocessing.preprocess_case`.

    Args:
        cases: :class:`gmrseg.data.dataset.Case` objects; a case without a
            label is cached without one.
        plan: preprocessing plan.
        cache_dir: folder the caller owns; created when missing.
        label_values: declared label values ({name: value}), checked when reading labels.
        progress: show a tqdm bar.

    Returns:
        One item per case, ``{"case_id": ..., "path": ...}``, in input order,
        ready for :class:`LoadPreprocessedd`.
    """
    from gmrseg.data.io import read_image, read_label

    folder = cache_folder(cache_dir, plan)
    folder.mkdir(parents=True, exist_ok=True)
    plan_file = folder / "plan.json"
    if not plan_file.is_file():
        save_json_atomic(plan_file, plan.to_dict())

    seen: set[str] = set()
    items = []
    reused = 0
    for case in tqdm(cases, desc="Preprocessing", unit="case", disable=not progress):
        if case.case_id in seen:
            raise InputError(f"case id {case.case_id!r} appears twice; case ids must be unique.")
        seen.add(case.case_id)
        path = folder / _cache_file_name(case.case_id)
        source = _source_record(case)
        items.append({"case_id": case.case_id, "path": str(path)})
        if _is_current(path, source):
            reused += 1
            continue

        # Read, preprocess and store one case.
        image, geometry = read_image(case.image_paths, num_channels=plan.num_channels)
        label = None
        if case.label_path is not None:
            label = read_label(case.label_path, geometry, label_values)
        result = preprocess_case(image, geometry.affine, plan, label)
        arrays: dict[str, Any] = {
            "image": result.image.numpy(),
            "inverse": np.array(json.dumps(result.inverse)),
            "source": np.array(json.dumps(source)),
        }
        if result.label is not None:
            arrays["label"] = result.label.numpy()
        with atomic_write_path(path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)

    logger.info("Preprocessed cache %s: %d case(s) reused, %d written", folder, reused, len(items) - reused)
    return items


def load_preprocessed(path: str | os.PathLike) -> dict[str, Any]:
    """Load one cache file as ``{"image": float32 tensor, "label": int16 tensor or None, "inverse": dict}``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            image = torch.from_numpy(archive["image"].astype(np.float32, copy=False))
            label = torch.from_numpy(archive["label"]) if "label" in archive else None
            inverse = json.loads(str(archive["inverse"]))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"preprocessed case {path} is missing; run preprocess_to_cache again to rebuild the cache."
        ) from None
    return {"image": image, "label": label, "inverse": inverse}


class LoadPreprocessedd(MapTransform):
    """Load a cached case into ``image`` (C X Y Z float32) and ``label`` (1 X Y Z int16).

    Input items are the dicts from :func:`preprocess_to_cache`. ``label_transform``,
    when given, maps the label array (numpy, ``(1, X, Y, Z)``, int16) to new
    class values, for example to merge left and right structures. It must keep
    the shape and return integers. The ``inverse`` record is kept when
    ``keep_inverse`` is true (validation and prediction need it; training patches do not).
    """

    def __init__(self, label_transform: LabelTransform | None = None, keep_inverse: bool = False) -> None:
        super().__init__(keys=("path",))
        self.label_transform = label_transform
        self.keep_inverse = keep_inverse

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        loaded = load_preprocessed(data["path"])
        output = {key: value for key, value in data.items() if key != "path"}
        output["image"] = loaded["image"]
        label = loaded["label"]
        if label is not None:
            if self.label_transform is not None:
                mapped = np.asarray(self.label_transform(label.numpy()))
                if mapped.shape != tuple(label.shape) or not np.issubdtype(mapped.dtype, np.integer):
                    raise InputError(
                        f"label_transform must return integers of shape {tuple(label.shape)}, "
                        f"got {mapped.dtype} of shape {mapped.shape} for case {data.get('case_id')!r}."
                    )
                label = torch.from_numpy(mapped.astype(np.int16, copy=False))
            output["label"] = label
        if self.keep_inverse:
            output["inverse"] = loaded["inverse"]
        return output
