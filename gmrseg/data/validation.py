"""Check a whole dataset folder before training and list every problem, one line per file.

The per-file rules are the readers' own, from :mod:`gmrseg.data.io`. This
module applies them to every case and catches each failure instead of
stopping at the first. It adds the checks that only make sense for a whole
folder: missing and extra files, numTraining, file_ending, an empty dataset,
and classes that never occur.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gmrseg.data.dataset import Case, DatasetSpec, load_dataset, split_channel_suffix
from gmrseg.data.io import (
    ITK_ENDINGS,
    NIFTI_ENDINGS,
    ImageGeometry,
    capture_warnings,
    check_channel_layout,
    check_finite,
    check_label_values,
    check_not_constant,
    check_same_grid,
    file_ending,
    load_volume,
)
from gmrseg.errors import InputError

__all__ = ["Problem", "ValidationReport", "validate_dataset"]

logger = logging.getLogger(__name__)

# Show a progress bar from this many cases on (and only on a terminal).
_PROGRESS_MIN_CASES = 20


@dataclass(frozen=True)
class Problem:
    """One finding about one file: ``str()`` gives ``"PATH: message"``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class ValidationReport:
    """Result of :func:`validate_dataset`.

    Attributes:
        root: dataset folder.
        problems: findings that make the dataset unusable for training.
        warnings: findings that do not stop training (all-background labels,
            squeezed singleton dimensions, constant images, unused classes).
        num_training: training cases checked.
        num_test: test cases checked.
    """

    root: Path
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    num_training: int = 0
    num_test: int = 0

    @property
    def ok(self) -> bool:
        """True when there is no problem (warnings are allowed)."""
        return not self.problems

    def summary(self) -> str:
        """Return a short closing line with the counts and what to do next."""
        counts = (f"{self.num_training} training and {self.num_test} test cases checked: "
                  f"{len(self.problems)} problem(s), {len(self.warnings)} warning(s)")
        if self.ok:
            return f"{self.root}: {counts}. The dataset is ready for training."
        return f"{self.root}: {counts}. Fix the files listed above and run gmrseg validate again."


class _Collector:
    """Accumulate problems and warnings, converting exceptions into one line per file."""

    def __init__(self, report: ValidationReport):
        self.report = report

    def problem(self, path: os.PathLike | str, message: str) -> None:
        self.report.problems.append(Problem(str(path), message))

    def warning(self, path: os.PathLike | str, message: str) -> None:
        logger.warning("%s: %s", path, message)
        self.report.warnings.append(Problem(str(path), message))

    def error(self, path: os.PathLike | str, error: Exception) -> None:
        self.report.problems.append(_problem_from_text(str(path), str(error)))

    def captured(self, path: os.PathLike | str, messages: list[str]) -> None:
        # The readers already logged these; only record them.
        for message in messages:
            self.report.warnings.append(_problem_from_text(str(path), message))


def _problem_from_text(path: str, text: str) -> Problem:
    """Split "PATH: message" texts from the readers so the path is not printed twice."""
    prefix = f"{path}: "
    if text.startswith(prefix):
        return Problem(path, text[len(prefix):])
    head, separator, tail = text.partition(": ")
    if separator and os.path.sep in head:
        return Problem(head, tail)
    return Problem(path, text)


# Folder-level checks ----------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    lowered = name.lower()
    return any(lowered.endswith(ending) for ending in NIFTI_ENDINGS + ITK_ENDINGS)


def _check_folder_files(spec: DatasetSpec, folder_name: str, cases: list[Case], collect: _Collector) -> None:
    """Report files in imagesTr/labelsTr (or imagesTs/labelsTs) that belong to no case."""
    folder = spec.root / folder_name
    if not folder.is_dir():
        return
    expected = set()
    for case in cases:
        expected.update(path.resolve() for path in case.image_paths)
        if case.label_path is not None:
            expected.add(case.label_path.resolve())

    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.resolve() in expected:
            continue
        if path.is_dir():
            collect.problem(path, f"unexpected folder in {folder_name}/; it holds no case. Move it out.")
            continue
        if not _is_image_name(path.name):
            collect.warning(path, "not an image file; ignored.")
            continue
        if not path.name.lower().endswith(spec.file_ending.lower()):
            collect.problem(path, f"file ending {file_ending(path)!r} does not match dataset.json file_ending "
                                  f"{spec.file_ending!r}; rename the files or fix file_ending.")
            continue
        collect.problem(path, _extra_file_reason(spec, folder_name, path))


def _extra_file_reason(spec: DatasetSpec, folder_name: str, path: Path) -> str:
    if spec.layout == "decathlon":
        return "matches no case: dataset.json lists no case with this file. Add it to 'training' or remove it."
    stem = path.name[: -len(spec.file_ending)]
    split = split_channel_suffix(stem)
    if folder_name.startswith("images") and split is None:
        return (f"file name does not end in a 4-digit channel index ({stem}_0000{spec.file_ending}); images must "
                f"be named CASE_XXXX{spec.file_ending}.")
    if folder_name.startswith("images") and split is not None and split[1] >= spec.num_channels:
        return (f"channel {split[1]} of case {split[0]!r}, but dataset.json declares {spec.num_channels} "
                f"channel(s) {spec.channel_names}.")
    return "matches no case. Remove it or add the missing files of its case."


def _check_dataset_level(spec: DatasetSpec, collect: _Collector) -> None:
    dataset_json = spec.dataset_json
    if spec.layout == "nnunetv2" and "dataset" not in spec.raw and not (spec.root / "imagesTr").is_dir():
        collect.problem(spec.root / "imagesTr", "folder not found; training images go in imagesTr/ as "
                                                f"CASE_0000{spec.file_ending}.")
    if spec.layout == "nnunetv2" and "dataset" not in spec.raw and not (spec.root / "labelsTr").is_dir():
        collect.problem(spec.root / "labelsTr", f"folder not found; training labels go in labelsTr/ as "
                                                f"CASE{spec.file_ending}.")

    if not spec.training:
        endings = _endings_in(spec.root / "imagesTr")
        if endings and spec.file_ending.lower() not in endings:
            collect.problem(dataset_json, f"file_ending {spec.file_ending!r} matches no file in imagesTr/, which "
                                          f"holds {', '.join(sorted(endings))} files; fix file_ending.")
        collect.problem(dataset_json, "empty dataset: no training cases found. Put images in imagesTr/ and "
                                      "labels in labelsTr/.")
    elif spec.num_training is not None and spec.num_training != len(spec.training):
        collect.problem(dataset_json, f"numTraining is {spec.num_training} but {len(spec.training)} training cases "
                                      f"were found; set numTraining to {len(spec.training)} or add the missing cases.")


def _endings_in(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {file_ending(path) for path in folder.iterdir() if path.is_file() and _is_image_name(path.name)}


# Case checks ------------------------------------------------------------------------------------


def _check_case_image(case: Case, spec: DatasetSpec, collect: _Collector) -> ImageGeometry | None:
    """Check a case's channel files; return the first channel's grid (None when unreadable)."""
    reference: ImageGeometry | None = None
    for path in case.image_paths:
        if not path.exists():
            channel = _channel_label(case, path, spec)
            collect.problem(path, f"missing {channel} of case {case.case_id!r}.")
            continue

        volume = None
        with capture_warnings() as messages:
            try:
                volume = load_volume(path)
                check_channel_layout(volume, path, num_files=len(case.image_paths), num_channels=spec.num_channels)
            except (InputError, FileNotFoundError) as error:
                collect.error(path, error)
        collect.captured(path, messages)
        if volume is None:
            continue

        data = volume.data if volume.data.ndim == 4 else volume.data[..., np.newaxis]
        with capture_warnings() as messages:
            for index in range(data.shape[3]):
                where = path if data.shape[3] == 1 else f"{path} (channel {index})"
                try:
                    check_finite(data[..., index], where)
                except InputError as error:
                    collect.error(where, error)
                check_not_constant(data[..., index], where)
        collect.captured(path, messages)

        if reference is None:
            reference = volume.geometry
            continue
        try:
            check_same_grid(reference, volume.geometry, what="channel")
        except InputError as error:
            collect.error(path, error)
    return reference


def _channel_label(case: Case, path: Path, spec: DatasetSpec) -> str:
    if len(case.image_paths) == 1:
        return "image file"
    index = case.image_paths.index(path)
    return f"channel {index} ({spec.channel_names.get(index, '?')}) file"


def _check_case_label(case: Case, spec: DatasetSpec, reference: ImageGeometry | None, collect: _Collector,
                      seen_values: set[int]) -> None:
    path = case.label_path
    if path is None:
        return
    if not path.exists():
        collect.problem(path, f"missing label file of case {case.case_id!r}.")
        return

    volume = None
    with capture_warnings() as messages:
        try:
            volume = load_volume(path)
        except (InputError, FileNotFoundError) as error:
            collect.error(path, error)
    collect.captured(path, messages)
    if volume is None:
        return

    if volume.data.ndim != 3:
        collect.problem(path, f"label file is 4D with shape {volume.data.shape}; labels must be one 3D map.")
        return
    if reference is not None:
        try:
            check_same_grid(reference, volume.geometry, what="label")
        except InputError as error:
            collect.error(path, error)
    try:
        labels = check_label_values(volume.data, path, spec.labels)
    except InputError as error:
        collect.error(path, error)
        return

    values = set(np.unique(labels).tolist())
    seen_values.update(values)
    if values <= {0}:
        collect.warning(path, f"label of case {case.case_id!r} is all background; the case still trains "
                              f"(it teaches the network what background looks like).")


def _check_unused_classes(spec: DatasetSpec, seen_values: set[int], collect: _Collector) -> None:
    for name, value in spec.labels.items():
        if value != 0 and value not in seen_values:
            collect.warning(spec.dataset_json, f"class {name!r} (value {value}) occurs in no readable training "
                                               f"label; the network cannot learn it.")


def validate_dataset(root: str | os.PathLike) -> ValidationReport:
    """Check every case of a dataset folder and list every problem found.

    Checks, each reported as one "PATH: message" line:

    - dataset.json missing, invalid JSON, or invalid keys (one problem, then stop);
    - an empty dataset, numTraining that disagrees with the cases found,
      file_ending that matches no file;
    - missing channel or label files, extra files that match no case, files
      whose ending differs from file_ending;
    - unreadable, truncated or corrupt files; a 4D file where a 3D file is
      expected (a trailing singleton dimension is only a warning);
    - NaN or Inf in an image;
    - channels of one case on different grids, or a label whose shape,
      spacing, direction or origin differs from its image (relative
      tolerance 1e-4, so float noise passes);
    - non-integer label values, and values not declared in dataset.json.

    Warnings (``report.warnings``, also logged) do not make the report fail:
    labels that are all background, constant images, squeezed singleton
    dimensions, classes that never occur.

    Args:
        root: dataset folder with dataset.json, imagesTr/, labelsTr/ and optionally imagesTs/, labelsTs/.

    Returns:
        ValidationReport; ``report.ok`` is False when any problem was found.
    """
    root = Path(root)
    report = ValidationReport(root=root)
    collect = _Collector(report)

    try:
        spec = load_dataset(root)
    except (InputError, FileNotFoundError) as error:
        collect.error(root / "dataset.json", error)
        return report

    # Folder-level checks.
    _check_dataset_level(spec, collect)
    if spec.layout == "decathlon" or "dataset" in spec.raw:
        listed = spec.training + spec.test
        _check_folder_files(spec, "imagesTr", listed, collect)
        _check_folder_files(spec, "labelsTr", listed, collect)
    else:
        _check_folder_files(spec, "imagesTr", spec.training, collect)
        _check_folder_files(spec, "labelsTr", spec.training, collect)
    _check_folder_files(spec, "imagesTs", spec.test, collect)
    _check_folder_files(spec, "labelsTs", spec.test, collect)

    # Case checks, training then test.
    cases = [(case, True) for case in spec.training] + [(case, False) for case in spec.test]
    show_bar = len(cases) >= _PROGRESS_MIN_CASES and sys.stderr.isatty()
    seen_values: set[int] = set()
    for case, is_training in tqdm(cases, desc="validate", unit="case", disable=not show_bar):
        reference = _check_case_image(case, spec, collect)
        if is_training or case.label_path is not None:
            _check_case_label(case, spec, reference, collect, seen_values if is_training else set())

    report.num_training = len(spec.training)
    report.num_test = len(spec.test)
    if spec.training:
        _check_unused_classes(spec, seen_values, collect)
    return report
