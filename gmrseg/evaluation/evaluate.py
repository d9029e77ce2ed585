"""``gmrseg evaluate``: compare predicted segmentations with reference labels.

Pairing: a reference folder's files are matched to the prediction folder's
files by case id (the file name without ``.nii``/``.nii.gz``; either ending
matches). A reference case without a prediction is an error that lists the
missing cases, so a partial prediction run cannot pass for a complete one.
Prediction files without a reference (for example ``CASE_probabilities``) are
ignored and counted in the log.

Grids: prediction and reference must share shape, spacing, direction and
origin (within the readers' float tolerance). Otherwise the case is an error
naming both files and the difference; nothing is resampled silently.

Classes come from ``dataset.json`` (nnU-Net ``{"name": value}`` or Decathlon
``{"value": "name"}``) or from a run folder's ``plans.json``. Without them,
every nonzero value found in the references or predictions is a class.
Per-class conventions for empty masks are described in
:mod:`gmrseg.evaluation.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gmrseg.errors import InputError
from gmrseg.evaluation.metrics import class_metrics
from gmrseg.utils.files import save_json_atomic, save_text_atomic

__all__ = ["evaluate", "format_summary", "load_class_names"]

logger = logging.getLogger(__name__)

_METRIC_KEYS = ("dice", "hd95", "volume_reference_ml", "volume_prediction_ml", "volume_difference_ml")


# --------------------------------------------------------------------------- classes


def _labels_from_mapping(labels: Any, source: Path) -> dict[str, tuple[int, ...]]:
    """Parse nnU-Net (name -> value or list of values) or Decathlon (value -> name) labels, background dropped."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{source}: 'labels' must be a non-empty object, got {labels!r}")

    classes: dict[str, tuple[int, ...]] = {}
    decathlon = all(str(key).lstrip("-").isdigit() for key in labels) and all(
        isinstance(value, str) for value in labels.values()
    )
    for key, value in labels.items():
        name, raw = (str(value), key) if decathlon else (str(key), value)
        values = raw if isinstance(raw, list) else [raw]
        try:
            parsed = tuple(int(item) for item in values)
        except (TypeError, ValueError) as error:
            raise InputError(f"{source}: label {name!r} has a non-integer value {raw!r}") from error
        if parsed == (0,):
            continue
        classes[name] = parsed
    if not classes:
        raise InputError(f"{source}: 'labels' lists only the background; nothing to evaluate")
    return classes


def load_class_names(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Read class names and label values from a dataset.json or a run folder.

    Args:
        path: ``dataset.json``, a dataset folder containing it, or a run folder
            (its ``plans.json`` labels, else its copy of ``dataset.json``).

    Returns:
        Class name to the label value(s) it covers (a list of values is an
        nnU-Net region), background excluded, in file order.

    Raises:
        FileNotFoundError: when no labels file is found at ``path``.
        InputError: when the file is not JSON or its labels are malformed.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "plans.json", path / "dataset.json"]
        found = [candidate for candidate in candidates if candidate.is_file()]
        if not found:
            raise FileNotFoundError(f"{path} contains neither plans.json nor dataset.json; pass a dataset.json for class names")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass a dataset.json or a run folder for class names")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or "labels" not in data:
        raise InputError(f"{path} has no 'labels' object; pass a dataset.json or a run folder")
    return _labels_from_mapping(data["labels"], path)


# --------------------------------------------------------------------------- pairing


def _case_id(path: Path) -> str | None:
    from gmrseg.data.io import ITK_ENDINGS, NIFTI_ENDINGS

    name = path.name
    for ending in NIFTI_ENDINGS + ITK_ENDINGS:
        if name.lower().endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


def _label_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not child.is_file():
            continue
        case_id = _case_id(child)
        if case_id is None:
            continue
        if case_id in files:
            raise InputError(f"{folder}: two files for case {case_id!r}: {files[case_id].name} and {child.name}")
        files[case_id] = child
    return files


def _pair_cases(prediction: Path, reference: Path) -> list[tuple[str, Path, Path]]:
    """Return ``(case_id, prediction path, reference path)`` for every reference case."""
    for path, role in ((prediction, "prediction"), (reference, "reference")):
        if not path.exists():
            raise FileNotFoundError(f"{role} {path} not found")

    if reference.is_file():
        case_id = _case_id(reference) or reference.name
        if prediction.is_dir():
            candidates = _label_files(prediction)
            if case_id not in candidates:
                raise InputError(f"case {case_id}: no prediction for reference {reference} in {prediction}")
            return [(case_id, candidates[case_id], reference)]
        return [(case_id, prediction, reference)]

    if not prediction.is_dir():
        raise InputError(f"reference {reference} is a folder, so the prediction {prediction} must be a folder too")
    references = _label_files(reference)
    predictions = _label_files(prediction)
    if not references:
        raise InputError(f"reference folder {reference} contains no label files (.nii, .nii.gz)")

    missing = sorted(set(references) - set(predictions))
    if missing:
        listing = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise InputError(
            f"{len(missing)} of {len(references)} reference case(s) have no prediction in {prediction}: {listing}. "
            "Predict them first, or evaluate against a reference folder that holds only the predicted cases"
        )
    extra = sorted(set(predictions) - set(references))
    if extra:
        logger.info("Ignoring %d prediction file(s) without a reference, e.g. %s", len(extra), extra[0])
    return [(case_id, predictions[case_id], references[case_id]) for case_id in sorted(references)]


# --------------------------------------------------------------------------- reading


def _read_labels(path: Path, case_id: str, what: str):
    """Read a 3D label map with the reader's checks; return ``(int16 array, geometry)``."""
    from gmrseg.data.io import check_label_values, load_volume

    try:
        volume = load_volume(path)
        if volume.data.ndim != 3:
            raise InputError(f"{path}: {what} is 4D with shape {volume.data.shape}; expected one 3D label map")
        data = check_label_values(volume.data, path, None)
    except InputError as error:
        raise InputError(f"case {case_id}: {error}") from error
    return data, volume.geometry


def _check_same_grid(case_id: str, prediction_path: Path, reference_path: Path, prediction_geometry, reference_geometry) -> None:
    from gmrseg.data.io import compare_grids

    differences = compare_grids(reference_geometry, prediction_geometry)
    if differences:
        raise InputError(
            f"case {case_id}: prediction {prediction_path} is on another grid than reference {reference_path} "
            f"(reference vs prediction: {'; '.join(differences)}). gmrseg evaluate does not resample; predict on the reference's image "
            "(gmrseg predict writes on the input's grid) or resample the prediction with nearest-neighbour "
            "interpolation onto the reference grid"
        )


# --------------------------------------------------------------------------- summary


def _summarise(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None}
    mean = math.inf if any(math.isinf(value) for value in values) else float(np.mean(values))
    return {"mean": mean, "median": float(statistics.median(values))}


def _summary(cases: list[dict], class_names: Iterable[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in class_names:
        rows = [case["metrics"][name] for case in cases]
        hd95 = [row["hd95"] for row in rows if row["hd95"] is not None]
        summary[name] = {
            "dice": _summarise([row["dice"] for row in rows]),
            "hd95": {
                **_summarise(hd95),
                "cases": len(hd95),
                "excluded_both_empty": sum(1 for row in rows if row["hd95"] is None),
                "infinite_one_empty": sum(1 for row in rows if row["hd95"] is not None and math.isinf(row["hd95"])),
            },
            "volume_difference_ml": {
                **_summarise([row["volume_difference_ml"] for row in rows]),
                "mean_absolute": float(np.mean([abs(row["volume_difference_ml"]) for row in rows])) if rows else None,
            },
            "cases": len(rows),
        }

    # Mean over classes of each class's mean Dice (the usual single-number summary).
    dice_means = [entry["dice"]["mean"] for entry in summary.values() if entry["dice"]["mean"] is not None]
    summary["mean_dice_over_classes"] = float(np.mean(dice_means)) if dice_means else None
    return summary


# --------------------------------------------------------------------------- output


def _json_ready(value: Any) -> Any:
    """Replace infinite floats with the string "inf"; JSON has no infinity."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def _csv_text(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "class", *_METRIC_KEYS])

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    for case in report["cases"]:
        for name, metrics in case["metrics"].items():
            writer.writerow([case["case"], name, *(cell(metrics[key]) for key in _METRIC_KEYS)])
    for statistic in ("mean", "median"):
        for name in report["classes"]:
            entry = report["summary"][name]
            writer.writerow([
                statistic,
                name,
                cell(entry["dice"][statistic]),
                cell(entry["hd95"][statistic]),
                "",
                "",
                cell(entry["volume_difference_ml"][statistic]),
            ])
    return buffer.getvalue()


def _report_paths(output: Path) -> tuple[Path, Path]:
    """``report`` / ``report.json`` / ``report.csv`` -> (``report.json``, ``report.csv``)."""
    base = output.with_suffix("") if output.suffix.lower() in (".json", ".csv") else output
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")


# --------------------------------------------------------------------------- entry point


def evaluate(
    prediction: str | Path,
    reference: str | Path,
    *,
    dataset_json: str | Path | None = None,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Compute per-case, per-class Dice, HD95 (mm) and volume difference (mL), with summaries.

    Args:
        prediction: predicted segmentation file, or folder of them.
        reference: reference label file, or folder (same case ids).
        dataset_json: dataset.json or run folder for class names; None finds
            the classes in the label values.
        output: report path; ``REPORT.json`` and ``REPORT.csv`` are written
            atomically (a ``.json``/``.csv`` ending is replaced). None writes nothing.

    Returns:
        ``{"classes": {name: [values]}, "cases": [{"case", "prediction",
        "reference", "spacing", "metrics": {name: {...}}}], "summary": {name:
        {"dice": {"mean", "median"}, "hd95": {"mean", "median", "cases",
        "excluded_both_empty", "infinite_one_empty"}, "volume_difference_ml":
        {...}, "cases"}, "mean_dice_over_classes"}, "conventions": str}``.
        HD95 is None when both masks are empty and ``inf`` when one is; in the
        JSON file ``inf`` is written as the string ``"inf"``.

    Raises:
        FileNotFoundError: missing prediction or reference path.
        InputError: a reference case without a prediction, a prediction on
            another grid than its reference (naming the case), or an
            unreadable or non-integer label file.
    """
    prediction = Path(prediction)
    reference = Path(reference)
    pairs = _pair_cases(prediction, reference)
    classes = load_class_names(dataset_json) if dataset_json is not None else None

    # One case in memory at a time. Without dataset.json, a class absent from
    # both masks of a case gets the both-empty row when it turns up elsewhere.
    cases = []
    found_values: set[int] = set()
    for case_id, prediction_path, reference_path in pairs:
        predicted, prediction_geometry = _read_labels(prediction_path, case_id, "prediction")
        labels, reference_geometry = _read_labels(reference_path, case_id, "reference")
        _check_same_grid(case_id, prediction_path, reference_path, prediction_geometry, reference_geometry)
        spacing = reference_geometry.spacing

        if classes is None:
            present = sorted((set(np.unique(predicted).tolist()) | set(np.unique(labels).tolist())) - {0})
            found_values.update(int(value) for value in present)
            case_classes = {f"label_{value}": (int(value),) for value in present}
        else:
            case_classes = classes
        metrics = {}
        for name, values in case_classes.items():
            metrics[name] = class_metrics(np.isin(predicted, values), np.isin(labels, values), spacing).to_dict()
        cases.append({
            "case": case_id,
            "prediction": str(prediction_path),
            "reference": str(reference_path),
            "spacing": [float(value) for value in spacing],
            "metrics": metrics,
        })
        del predicted, labels

    if classes is None:
        classes = {f"label_{value}": (value,) for value in sorted(found_values)}
        if not classes:
            logger.warning("Every reference and prediction is empty; no class to evaluate")
        empty = {"dice": 1.0, "hd95": None, "volume_reference_ml": 0.0, "volume_prediction_ml": 0.0,
                 "volume_difference_ml": 0.0}
        for case in cases:
            case["metrics"] = {name: case["metrics"].get(name, dict(empty)) for name in classes}

    report = {
        "classes": {name: list(values) for name, values in classes.items()},
        "cases": cases,
        "summary": _summary(cases, classes),
        "conventions": (
            "Dice 1 and HD95 excluded (null) when reference and prediction are both empty; Dice 0 and HD95 inf "
            "when exactly one is empty. HD95 in mm from the reference spacing; volumes in mL."
        ),
    }

    if output is not None:
        json_path, csv_path = _report_paths(Path(output))
        save_json_atomic(json_path, _json_ready(report))
        save_text_atomic(csv_path, _csv_text(report))
        logger.info("Wrote %s and %s", json_path, csv_path)
    return report


def format_summary(report: dict[str, Any]) -> str:
    """Format the per-class summary of :func:`evaluate` as a text table for the terminal."""
    def number(value: float | None, digits: int) -> str:
        if value is None:
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"

    header = ("class", "Dice mean", "Dice median", "HD95 mean", "HD95 median", "dVol mean mL", "cases", "both empty", "one empty")
    rows = []
    for name in report["classes"]:
        entry = report["summary"][name]
        rows.append((
            name,
            number(entry["dice"]["mean"], 4),
            number(entry["dice"]["median"], 4),
            number(entry["hd95"]["mean"], 2),
            number(entry["hd95"]["median"], 2),
            number(entry["volume_difference_ml"]["mean"], 3),
            str(entry["cases"]),
            str(entry["hd95"]["excluded_both_empty"]),
            str(entry["hd95"]["infinite_one_empty"]),
        ))

    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if index == 0 else cell.rjust(width) for index, (cell, width) in enumerate(zip(row, widths))) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    mean_dice = report["summary"].get("mean_dice_over_classes")
    lines.append(f"{len(report['cases'])} case(s); mean Dice over classes: {number(mean_dice, 4)}")
    lines.append("HD95 in mm (both empty: excluded; one empty: inf). dVol = predicted minus reference volume.")
    return "\n".join(lines)
