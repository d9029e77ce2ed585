"""Dataset folders (nnU-Net v2 and Medical Segmentation Decathlon) and prediction inputs.

Two ``dataset.json`` flavours are read into one :class:`DatasetSpec`:

- nnU-Net v2: ``channel_names`` {"0": "CT"}, ``labels`` {"background": 0, ...},
  ``numTraining``, ``file_ending``; images ``imagesTr/CASE_XXXX{ending}`` (one
  file per channel), labels ``labelsTr/CASE{ending}``, optional ``imagesTs/``.
  An optional ``dataset`` key ({case: {"images": [...], "label": ...}}) lists
  files explicitly.
- Decathlon: ``modality`` {"0": "MRI"}, ``labels`` {"0": "background", ...},
  ``training`` [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
  ``test`` ["./imagesTs/y.nii.gz"]; multi-channel images are one 4D file.

This module only reads the layout. Whether each file exists and is valid is
checked by :mod:`gmrseg.data.validation` (and by the readers in
:mod:`gmrseg.data.io` when a file is opened).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmrseg.data.io import ITK_ENDINGS, NIFTI_ENDINGS, is_dicom_folder
from gmrseg.data.io import file_ending as image_file_ending
from gmrseg.errors import InputError

__all__ = ["Case", "DatasetSpec", "find_input_cases", "load_dataset", "split_channel_suffix"]

logger = logging.getLogger(__name__)

# Keys of dataset.json that gmrseg reads (nnU-Net v2 and Decathlon). Other keys are ignored,
# and a warning names any that looks like a misspelling of one of these that is missing.
_DATASET_JSON_KEYS = ("channel_names", "modality", "labels", "numTraining", "file_ending", "name",
                      "training", "test", "numTest", "dataset")

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Case:
    """One case: its image file(s) and, for training cases, its label file.

    Attributes:
        case_id: identifier used for output names (``CASE`` in ``CASE_0000.nii.gz``).
        image_paths: one path per channel, or a single 4D file holding every
            channel, or a DICOM series folder.
        label_path: label map, or None for cases without a label.
    """

    case_id: str
    image_paths: list[Path]
    label_path: Path | None = None


@dataclass
class DatasetSpec:
    """A dataset folder's description, in nnU-Net v2 terms whatever the source format.

    Attributes:
        root: dataset folder.
        name: dataset name (``name`` in dataset.json, else the folder name).
        channel_names: channel index -> modality name ({0: "CT"}); "CT"
            (any case) selects CT normalization in preprocessing.
        labels: class name -> label value, background 0, values 0..N-1.
        file_ending: image file ending (".nii.gz", ".nii", ...).
        num_training: ``numTraining`` from dataset.json (None when absent).
        training: training cases (with labels).
        test: test cases (imagesTs), with labels when labelsTs contains them.
        raw: dataset.json as parsed.
        layout: "nnunetv2" or "decathlon".
    """

    root: Path
    name: str
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str
    num_training: int | None
    training: list[Case]
    test: list[Case]
    raw: dict[str, Any] = field(default_factory=dict)
    layout: str = "nnunetv2"

    @property
    def num_channels(self) -> int:
        """Number of image channels."""
        return len(self.channel_names)

    @property
    def dataset_json(self) -> Path:
        """Path of the dataset.json file."""
        return self.root / "dataset.json"


def split_channel_suffix(stem: str) -> tuple[str, int] | None:
    """Split ``CASE_0001`` into ("CASE", 1); return None when the name has no 4-digit channel suffix."""
    match = _CHANNEL_SUFFIX.match(stem)
    if match is None:
        return None
    return match.group("case"), int(match.group("channel"))


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if ending and name.lower().endswith(ending.lower()) else name


def _visible_files(folder: Path) -> list[Path]:
    # Hidden files (.DS_Store, AppleDouble "._x.nii.gz") are never cases.
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


# dataset.json ---------------------------------------------------------------------------------


def _read_dataset_json(root: Path) -> dict[str, Any]:
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset folder not found.")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; pass the dataset folder that contains dataset.json, imagesTr/ "
                         f"and labelsTr/.")
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: dataset.json not found. A dataset folder needs dataset.json (nnU-Net v2 or "
                         f"Decathlon format), imagesTr/ and labelsTr/.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error}).") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}.") from error
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object at the top level, got {type(raw).__name__}.")
    for key, known in _near_miss_keys(raw).items():
        logger.warning("%s: unknown key %r is ignored. Did you mean %r?", path, key, known)
    return raw


def _near_miss_keys(raw: dict[str, Any]) -> dict[str, str]:
    """Map each key of ``raw`` that looks like a misspelling of an absent known key to that key."""
    absent = [key for key in _DATASET_JSON_KEYS if key not in raw]
    found = {}
    for key in raw:
        if key in _DATASET_JSON_KEYS:
            continue
        match = difflib.get_close_matches(key, absent, n=1, cutoff=0.8)
        if match:
            found[key] = match[0]
    return found


def _parse_channel_names(raw: dict[str, Any], path: Path) -> dict[int, str]:
    if "channel_names" in raw:
        key = "channel_names"
    elif "modality" in raw:
        key = "modality"
    else:
        raise InputError(f"{path}: missing 'channel_names' (nnU-Net v2) or 'modality' (Decathlon), "
                         f'for example "channel_names": {{"0": "MRI"}}.')
    value = raw[key]
    if not isinstance(value, dict) or not value:
        raise InputError(f"{path}: '{key}' must be a non-empty object such as {{\"0\": \"MRI\"}}, got {value!r}.")
    channels = {}
    for index, name in value.items():
        try:
            channels[int(index)] = str(name)
        except (TypeError, ValueError):
            raise InputError(f"{path}: '{key}' keys must be channel indices \"0\", \"1\", ...; got {index!r}.") from None
    if sorted(channels) != list(range(len(channels))):
        raise InputError(f"{path}: '{key}' indices must be 0..{len(channels) - 1}, got {sorted(channels)}.")
    return dict(sorted(channels.items()))


def _parse_labels(raw: dict[str, Any], path: Path) -> dict[str, int]:
    """Read ``labels`` in either format into {name: value}, background 0, values 0..N-1."""
    value = raw.get("labels")
    if not isinstance(value, dict) or not value:
        raise InputError(f"{path}: missing or empty 'labels', for example {{\"background\": 0, \"tumour\": 1}} "
                         f"(nnU-Net v2) or {{\"0\": \"background\", \"1\": \"tumour\"}} (Decathlon).")

    labels: dict[str, int] = {}
    decathlon = all(isinstance(item, str) for item in value.values())
    for key, item in value.items():
        if decathlon:
            name, number = item, key
        else:
            name, number = key, item
        if isinstance(number, (list, tuple)):
            raise InputError(f"{path}: label {name!r} maps to the region {number}; region-based labels are not "
                             f"supported. Give each class one integer value.")
        try:
            integer = int(number)
        except (TypeError, ValueError):
            raise InputError(f"{path}: label {name!r} has value {number!r}, which is not an integer.") from None
        if isinstance(number, float) and number != integer:
            raise InputError(f"{path}: label {name!r} has value {number!r}, which is not an integer.")
        if name in labels:
            raise InputError(f"{path}: label name {name!r} is used twice.")
        labels[str(name)] = integer

    values = sorted(labels.values())
    if len(set(values)) != len(values):
        raise InputError(f"{path}: two labels share one value: {labels}.")
    if values != list(range(len(values))):
        raise InputError(f"{path}: label values must be 0..{len(values) - 1} with 0 for background (as in "
                         f"nnU-Net), got {values}. Remap the label files and dataset.json to consecutive values.")
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def _parse_num_training(raw: dict[str, Any], path: Path) -> int | None:
    if "numTraining" not in raw:
        return None
    value = raw["numTraining"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{path}: 'numTraining' must be a non-negative integer, got {value!r}.")
    return value


def _resolve(root: Path, entry: Any, path: Path, key: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise InputError(f"{path}: '{key}' entries must be file paths relative to the dataset folder, got {entry!r}.")
    resolved = Path(entry)
    return resolved if resolved.is_absolute() else root / resolved


# Layouts ----------------------------------------------------------------------------------------


def _cases_from_folders(images_dir: Path, labels_dir: Path | None, ending: str, num_channels: int) -> list[Case]:
    """Cases of an nnU-Net v2 folder: ids from CASE_XXXX image names and from label names."""
    case_ids: set[str] = set()
    if images_dir.is_dir():
        for file in _visible_files(images_dir):
            if not file.name.lower().endswith(ending.lower()):
                continue
            split = split_channel_suffix(_strip_ending(file.name, ending))
            if split is not None:
                case_ids.add(split[0])
    if labels_dir is not None and labels_dir.is_dir():
        for file in _visible_files(labels_dir):
            if file.name.lower().endswith(ending.lower()):
                case_ids.add(_strip_ending(file.name, ending))

    cases = []
    for case_id in sorted(case_ids):
        image_paths = [images_dir / f"{case_id}_{channel:04d}{ending}" for channel in range(num_channels)]
        label_path = labels_dir / f"{case_id}{ending}" if labels_dir is not None else None
        cases.append(Case(case_id, image_paths, label_path))
    return cases


def _cases_from_decathlon(root: Path, raw: dict[str, Any], path: Path) -> tuple[list[Case], list[Case], str]:
    training_entries = raw.get("training", [])
    if not isinstance(training_entries, list):
        raise InputError(f"{path}: 'training' must be a list of {{\"image\": ..., \"label\": ...}} objects.")

    training = []
    endings = set()
    for entry in training_entries:
        if not isinstance(entry, dict) or "image" not in entry:
            raise InputError(f"{path}: each 'training' entry needs \"image\" and \"label\", got {entry!r}.")
        image = _resolve(root, entry["image"], path, "training.image")
        label = _resolve(root, entry["label"], path, "training.label") if entry.get("label") else None
        ending = image_file_ending(image)
        endings.add(ending)
        training.append(Case(_strip_ending(image.name, ending), [image], label))

    test = []
    test_entries = raw.get("test", [])
    if not isinstance(test_entries, list):
        raise InputError(f"{path}: 'test' must be a list of image paths.")
    for entry in test_entries:
        if isinstance(entry, dict):
            entry = entry.get("image")
        image = _resolve(root, entry, path, "test")
        ending = image_file_ending(image)
        endings.add(ending)
        label_candidate = root / "labelsTs" / image.name
        test.append(Case(_strip_ending(image.name, ending), [image],
                         label_candidate if label_candidate.exists() else None))

    file_ending_value = raw.get("file_ending") or (sorted(endings)[0] if endings else ".nii.gz")
    return training, test, file_ending_value


def _cases_from_explicit(root: Path, raw: dict[str, Any], path: Path) -> list[Case]:
    """Cases from nnU-Net v2's optional explicit ``dataset`` map."""
    entries = raw["dataset"]
    if not isinstance(entries, dict):
        raise InputError(f"{path}: 'dataset' must map case ids to {{\"images\": [...], \"label\": ...}}.")
    cases = []
    for case_id, entry in sorted(entries.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list):
            raise InputError(f"{path}: 'dataset.{case_id}' needs an \"images\" list and a \"label\".")
        images = [_resolve(root, image, path, f"dataset.{case_id}.images") for image in entry["images"]]
        label = _resolve(root, entry["label"], path, f"dataset.{case_id}.label") if entry.get("label") else None
        cases.append(Case(str(case_id), images, label))
    return cases


def load_dataset(root: str | os.PathLike) -> DatasetSpec:
    """Read a dataset folder's ``dataset.json`` (nnU-Net v2 or Decathlon) and list its cases.

    Training cases come from the file names in ``imagesTr``/``labelsTr``
    (nnU-Net v2), from the explicit ``dataset`` map, or from the ``training``
    list (Decathlon). Test cases come from ``imagesTs`` (with ``labelsTs``
    labels when present). Files are not opened; a missing file shows up as a
    case path that does not exist, which :func:`gmrseg.data.validation.validate_dataset`
    reports.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        InputError: ``dataset.json`` is missing, not valid JSON, or lacks or
            misstates channel names, labels, numTraining or file_ending.
    """
    root = Path(root)
    raw = _read_dataset_json(root)
    path = root / "dataset.json"
    channel_names = _parse_channel_names(raw, path)
    labels = _parse_labels(raw, path)
    num_training = _parse_num_training(raw, path)
    name = str(raw.get("name") or root.name)

    if "training" in raw and "channel_names" not in raw:
        # Decathlon: explicit file lists, channels stacked in one 4D file.
        training, test, ending = _cases_from_decathlon(root, raw, path)
        if num_training is None:
            num_training = len(training)
        return DatasetSpec(root, name, channel_names, labels, ending, num_training, training, test, raw, "decathlon")

    ending = raw.get("file_ending")
    if "file_ending" not in raw:
        typo = [key for key, known in _near_miss_keys(raw).items() if known == "file_ending"]
        hint = f" (found {typo[0]!r}: rename it)" if typo else ""
        raise InputError(f"{path}: missing 'file_ending'{hint}. An nnU-Net v2 dataset.json needs it, for example "
                         f"\"file_ending\": \".nii.gz\".")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(f"{path}: 'file_ending' must be a string such as \".nii.gz\", got {ending!r}.")
    if ending.lower() not in NIFTI_ENDINGS + ITK_ENDINGS:
        raise InputError(f"{path}: 'file_ending' {ending!r} is not supported; use one of "
                         f"{', '.join(NIFTI_ENDINGS + ITK_ENDINGS)}.")

    if "dataset" in raw:
        training = _cases_from_explicit(root, raw, path)
    else:
        training = _cases_from_folders(root / "imagesTr", root / "labelsTr", ending, len(channel_names))
    test = _cases_from_folders(root / "imagesTs", root / "labelsTs", ending, len(channel_names))
    for case in test:
        if case.label_path is not None and not case.label_path.exists():
            case.label_path = None
    return DatasetSpec(root, name, channel_names, labels, ending, num_training, training, test, raw, "nnunetv2")


# Prediction inputs ------------------------------------------------------------------------------


def _image_files(folder: Path, file_ending_value: str | None) -> list[Path]:
    endings = (file_ending_value,) if file_ending_value else NIFTI_ENDINGS + ITK_ENDINGS
    files = []
    for file in _visible_files(folder):
        name = file.name.lower()
        if any(name.endswith(ending.lower()) for ending in endings) and not name.endswith(".raw"):
            files.append(file)
    return files


def find_input_cases(path: str | os.PathLike, file_ending: str | None = None, num_channels: int = 1) -> list[Case]:
    """List the cases to predict in ``path``.

    Accepted inputs:

    - one image file: one case (id = file name without ending and without a
      ``_0000`` suffix); with ``num_channels`` > 1 the file must be 4D, or
      named ``CASE_0000`` with its sibling channel files next to it;
    - a folder whose files all end in ``_XXXX``: channels grouped per case
      (``CASE_0000``, ``CASE_0001``, ...); a missing or unexpected channel is
      an error naming the case;
    - a folder of single-channel files without channel suffixes: one case per file;
    - a folder that holds one DICOM series: one case (id = folder name).

    Args:
        path: file or folder.
        file_ending: only consider files with this ending (default: any
            NIfTI or ITK ending).
        num_channels: channels the model expects.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputError: no images found, missing or extra channel files, two
            files for one case id, or files without channel suffixes where
            several channels are expected.
    """
    path = Path(path)
    if num_channels < 1:
        raise ValueError(f"num_channels must be at least 1, got {num_channels}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: input not found.")

    # One file.
    if path.is_file():
        ending = image_file_ending(path)
        stem = _strip_ending(path.name, ending)
        split = split_channel_suffix(stem)
        if num_channels > 1 and split is not None:
            case_id = split[0]
            paths = [path.with_name(f"{case_id}_{channel:04d}{ending}") for channel in range(num_channels)]
            missing = [candidate.name for candidate in paths if not candidate.exists()]
            if missing:
                raise InputError(f"{path}: case {case_id!r} is missing channel file(s) {', '.join(missing)} "
                                 f"next to it; the model expects {num_channels} channels.")
            return [Case(case_id, paths, None)]
        case_id = split[0] if split is not None and split[1] == 0 else stem
        return [Case(case_id, [path], None)]

    # A folder of image files, or a DICOM series folder.
    files = _image_files(path, file_ending)
    if not files:
        if is_dicom_folder(path):
            return [Case(path.name, [path], None)]
        wanted = file_ending or " / ".join(NIFTI_ENDINGS + ITK_ENDINGS)
        raise InputError(f"{path}: no image files ending in {wanted} and no DICOM series found.")

    stems = {}
    for file in files:
        stem = _strip_ending(file.name, image_file_ending(file))
        if stem in stems:
            raise InputError(f"{path}: two files for one case name {stem!r}: {stems[stem].name} and {file.name}. "
                             f"Keep one of them.")
        stems[stem] = file

    splits = {stem: split_channel_suffix(stem) for stem in stems}
    if all(split is not None for split in splits.values()):
        return _group_channels(path, stems, splits, num_channels)
    if num_channels > 1:
        unnamed = sorted(stem for stem, split in splits.items() if split is None)[:5]
        raise InputError(f"{path}: the model expects {num_channels} channels, so files must be named "
                         f"CASE_0000, CASE_0001, ...; these are not: {', '.join(unnamed)}.")
    return [Case(stem, [file], None) for stem, file in sorted(stems.items())]


def _group_channels(folder: Path, stems: dict[str, Path], splits: dict[str, tuple[str, int]],
                    num_channels: int) -> list[Case]:
    grouped: dict[str, dict[int, Path]] = {}
    for stem, (case_id, channel) in splits.items():
        grouped.setdefault(case_id, {})[channel] = stems[stem]

    problems = []
    cases = []
    for case_id, channels in sorted(grouped.items()):
        missing = [index for index in range(num_channels) if index not in channels]
        extra = sorted(index for index in channels if index >= num_channels)
        if missing:
            problems.append(f"case {case_id!r} is missing channel(s) "
                            f"{', '.join(f'{case_id}_{index:04d}' for index in missing)}")
        if extra:
            problems.append(f"case {case_id!r} has unexpected channel(s) "
                            f"{', '.join(f'{case_id}_{index:04d}' for index in extra)} (the model expects "
                            f"{num_channels})")
        if not missing and not extra:
            cases.append(Case(case_id, [channels[index] for index in range(num_channels)], None))
    if problems:
        raise InputError(f"{folder}: " + "; ".join(problems) + ".")
    return cases
