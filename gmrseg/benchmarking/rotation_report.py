"""Tables, goal check and plot of the rotation-robustness benchmark.

Every function here reads the plain results dict that
:func:`gmrseg.benchmarking.rotation.run_rotation_benchmark` builds, so a saved
``results.json`` can be rendered again without rerunning anything::

    {"settings": {...}, "hardware": {...}, "classes": [names],
     "sets": [{"name", "axis", "angle_deg", "cases"}],
     "models": [{"key", "label", "network", "rotation_augmentation", "parameters",
                 "training_seconds", "inference_seconds_per_case", ...}],
     "dice": {model_key: {set_name: {"per_class": {class: mean Dice}, "mean": mean over classes}}}}
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from gmrseg.benchmarking.rotation_repeats import format_repeats_markdown
from gmrseg.utils.files import atomic_write_path

__all__ = ["GOAL_MAX_DROP", "GOAL_MAX_PARAMETER_RATIO", "check_goal", "format_markdown", "format_csv",
           "plot_dice_against_angle"]

# The benchmark's claim: GMRUNet loses at most 2 Dice points on randomly
# rotated scans, beats both dense baselines there, with at most half their parameters.
GOAL_MAX_DROP = 0.02
GOAL_MAX_PARAMETER_RATIO = 0.5

_GMR_KEY = "gmrunet"


def _dice(results: dict[str, Any], model: str, set_name: str) -> float | None:
    entry = results["dice"].get(model, {}).get(set_name)
    return None if entry is None else entry["mean"]


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _csv_number(value: float | None) -> str:
    """Format a Dice figure for the CSV: 4 decimals, an empty cell when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}"


def _set_label(entry: dict[str, Any]) -> str:
    if entry["name"] == "upright":
        return "upright"
    if entry["angle_deg"] is None:
        return "random 3D"
    return f"{entry['angle_deg']:g}° about {entry['axis']}"


def _region_names(results: dict[str, Any]) -> list[str]:
    names: dict[str, None] = {}
    for per_set in results["dice"].values():
        for scores in per_set.values():
            names.update(dict.fromkeys(scores.get("regions", {})))
    return list(names)


def _region_dice(results: dict[str, Any], model: str, set_name: str, region: str) -> float | None:
    entry = results["dice"].get(model, {}).get(set_name)
    return None if entry is None else entry.get("regions", {}).get(region)


def check_goal(results: dict[str, Any]) -> dict[str, Any]:
    """Check the benchmark's goal on the measured numbers.

    Returns:
        ``{"checks": [{"name", "passed", "detail"}], "met": bool | None}``;
        ``met`` is None when a model or set needed for a check was not run.
    """
    models = {model["key"]: model for model in results["models"]}
    set_names = {entry["name"] for entry in results["sets"]}
    baselines = [key for key in models if key != _GMR_KEY]
    if _GMR_KEY not in models or not baselines or not {"upright", "random"} <= set_names:
        return {"checks": [], "met": None}

    checks = []
    upright = _dice(results, _GMR_KEY, "upright")
    rotated = _dice(results, _GMR_KEY, "random")
    drop = upright - rotated
    detail = f"upright {upright:.3f}, random {rotated:.3f}, drop {round(drop * 100, 1) + 0.0:+.1f} points"
    repeats = results.get("repeats") or {}
    spread = repeats.get("summary", {}).get(_GMR_KEY, {}).get("drop")
    if spread is not None and len(repeats["seeds"]) > 1:
        drops = [row["drop"] * 100 for row in repeats["per_seed"][_GMR_KEY]]
        detail += (f" (mean of {len(repeats['seeds'])} runs, standard deviation {spread[1] * 100:.1f} points, "
                   f"single runs from {min(drops):+.1f} to {max(drops):+.1f})")
    checks.append({
        "name": f"GMRUNet random-rotation Dice within {GOAL_MAX_DROP * 100:g} points of upright",
        "passed": drop <= GOAL_MAX_DROP,
        "detail": detail,
    })
    for key in baselines:
        other = _dice(results, key, "random")
        checks.append({
            "name": f"GMRUNet random-rotation Dice >= {models[key]['label']}",
            "passed": rotated >= other,
            "detail": f"{rotated:.3f} vs {other:.3f}",
        })
    smallest = min(models[key]["parameters"] for key in baselines)
    ratio = models[_GMR_KEY]["parameters"] / smallest
    checks.append({
        "name": f"GMRUNet parameters <= {GOAL_MAX_PARAMETER_RATIO:g} x the dense baselines",
        "passed": ratio <= GOAL_MAX_PARAMETER_RATIO,
        "detail": f"{models[_GMR_KEY]['parameters']:,} vs {smallest:,} ({ratio:.3f} x)",
    })
    return {"checks": checks, "met": all(check["passed"] for check in checks)}


def format_markdown(results: dict[str, Any]) -> str:
    """Return the results as Markdown: models, mean Dice per set, Dice per class, goal."""
    models = results["models"]
    lines = ["# Rotation robustness", ""]
    settings = results["settings"]
    averaged = bool(results.get("repeats"))
    rotations = settings["random_per_case"]
    lines.append(
        f"Dataset {settings['dataset']}: {results['num_training_cases']} upright training cases"
        f"{' per run' if averaged else ''}, {results['num_test_cases']} held-out cases per test set"
        f"{' summed over the runs' if averaged else ''} ({rotations} random rotation{'s' if rotations != 1 else ''} "
        f"each in the random set). Each model: {settings['epochs_label']}, patch "
        f"{'x'.join(str(size) for size in settings['patch_size'])}, "
        f"{'the same optimizer and seed within a run' if averaged else 'same optimizer and seed'}; "
        f"test-time augmentation {settings['tta']}."
    )
    repeats = results.get("repeats")
    if repeats:
        lines += ["", f"Every figure is the mean over {len(repeats['seeds'])} runs with seeds "
                  f"{', '.join(str(seed) for seed in repeats['seeds'])}; case counts are summed over the runs, whose "
                  f"folders are {', '.join(repeats['folders'])}."]
    lines += ["", "## Models", "",
              "| model | network | parameters | rotation augmentation | training (s) | inference (s per case) |",
              "|---|---|---:|---|---:|---:|"]
    for model in models:
        lines.append(
            f"| {model['label']} | {model['network']} | {model['parameters']:,} | "
            f"{'full 3D' if model['rotation_augmentation'] else 'none'} | {model['training_seconds']:.0f} | "
            f"{_number(model['inference_seconds_per_case'], 2)} |"
        )

    lines += ["", "## Mean Dice over classes", "",
              "| test set | cases | " + " | ".join(model["label"] for model in models) + " |",
              "|---|---:|" + "---:|" * len(models)]
    for entry in results["sets"]:
        cells = [_number(_dice(results, model["key"], entry["name"])) for model in models]
        lines.append(f"| {_set_label(entry)} | {entry['cases']} | " + " | ".join(cells) + " |")

    classes = results["classes"]
    header = [f"{model['label']}: {name}" for model in models for name in classes]
    lines += ["", "## Dice per class", "",
              "| test set | " + " | ".join(header) + " |",
              "|---|" + "---:|" * len(header)]
    for entry in results["sets"]:
        cells = []
        for model in models:
            per_class = results["dice"].get(model["key"], {}).get(entry["name"], {}).get("per_class", {})
            cells.extend(_number(per_class.get(name)) for name in classes)
        lines.append(f"| {_set_label(entry)} | " + " | ".join(cells) + " |")

    region_names = _region_names(results)
    for region in region_names:
        lines += ["", f"## Dice of the {region} structure (union of every class)", "",
                  "| test set | " + " | ".join(model["label"] for model in models) + " |",
                  "|---|" + "---:|" * len(models)]
        for entry in results["sets"]:
            cells = [_number(_region_dice(results, model["key"], entry["name"], region)) for model in models]
            lines.append(f"| {_set_label(entry)} | " + " | ".join(cells) + " |")

    repeats_table = format_repeats_markdown(results)
    if repeats_table:
        lines += ["", repeats_table.rstrip("\n")]

    goal = results.get("goal") or check_goal(results)
    if goal["checks"]:
        lines += ["", "## Goal", ""]
        for check in goal["checks"]:
            lines.append(f"- {'met' if check['passed'] else 'NOT met'}: {check['name']} ({check['detail']})")

    hardware = results.get("hardware", {})
    if hardware:
        lines += ["", "## Hardware", "", f"- {hardware.get('summary', '')}"]
    return "\n".join(lines) + "\n"


def format_csv(results: dict[str, Any]) -> str:
    """Return one CSV row per model, test set and class.

    Class ``mean`` is the mean over classes, and ``region:NAME`` rows hold the
    Dice of a union of classes (for example the whole structure). ``runs`` is
    the number of benchmark runs behind a row (1 for a single run) and
    ``dice_sd`` the sample standard deviation of its Dice over those runs.
    Missing figures (a single run's spread, a class absent from every case)
    are empty cells.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "network", "rotation_augmentation", "parameters", "test_set", "axis", "angle_deg",
                     "cases", "runs", "class", "dice_mean", "dice_sd"])
    for model in results["models"]:
        for entry in results["sets"]:
            scores = results["dice"].get(model["key"], {}).get(entry["name"])
            if scores is None:
                continue
            angle = "" if entry["angle_deg"] is None else f"{entry['angle_deg']:g}"
            prefix = [model["key"], model["network"], int(model["rotation_augmentation"]), model["parameters"],
                      entry["name"], entry["axis"] or "", angle, entry["cases"], scores.get("runs", 1)]
            spread = scores.get("sd", {})
            for name in results["classes"]:
                writer.writerow(prefix + [name, _csv_number(scores["per_class"].get(name)),
                                          _csv_number(spread.get("per_class", {}).get(name))])
            writer.writerow(prefix + ["mean", _csv_number(scores["mean"]), _csv_number(spread.get("mean"))])
            for region, value in scores.get("regions", {}).items():
                writer.writerow(prefix + [f"region:{region}", _csv_number(value),
                                          _csv_number(spread.get("regions", {}).get(region))])
    return buffer.getvalue()


def _plot_panel(axes, results: dict[str, Any], score, title: str) -> None:
    """Draw one panel: ``score(model_key, set_name)`` against angle per model, random rotations dashed."""
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = {"x": "^", "y": "s", "z": "D"}
    for index, model in enumerate(results["models"]):
        color = colors[index % len(colors)]
        by_angle: dict[float, list[float]] = {}
        for entry in results["sets"]:
            value = score(model["key"], entry["name"])
            if entry["angle_deg"] is None or value is None:
                continue
            by_angle.setdefault(float(entry["angle_deg"]), []).append(value)
            if entry["axis"] is not None:
                axes.scatter(entry["angle_deg"], value, color=color, marker=markers[entry["axis"]], s=14, alpha=0.5)
        if by_angle:
            angles = sorted(by_angle)
            axes.plot(angles, [sum(by_angle[angle]) / len(by_angle[angle]) for angle in angles], color=color,
                      marker="o", label=model["label"])
        random_value = score(model["key"], "random")
        if random_value is not None:
            axes.axhline(random_value, color=color, linestyle="--", linewidth=1, label=f"{model['label']}, random 3D")

    axes.set_xlabel("rotation about one axis (degrees); ▲ x, ■ y, ◆ z")
    axes.set_ylim(0.0, 1.0)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)


def plot_dice_against_angle(results: dict[str, Any], path: str | Path) -> None:
    """Plot Dice against rotation angle per model and write a PNG (atomic).

    Lines are the mean over the three axes, and markers show each axis. The
    random-rotation Dice of each model is a dashed line in the same colour. A
    second panel shows the whole-structure Dice when the results have it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = _region_names(results)
    figure, panels = plt.subplots(1, 1 + len(regions[:1]), figsize=(7.5 * (1 + len(regions[:1])), 4.5), dpi=110,
                                  squeeze=False)
    _plot_panel(panels[0][0], results, lambda model, name: _dice(results, model, name),
                f"Mean Dice over classes, {results['settings']['dataset']} (trained upright)"
                + (f", mean of {len(results['repeats']['seeds'])} runs" if results.get("repeats") else ""))
    panels[0][0].set_ylabel("Dice")
    panels[0][0].legend(fontsize=7, loc="lower left")
    for region in regions[:1]:
        _plot_panel(panels[0][1], results, lambda model, name: _region_dice(results, model, name, region),
                    f"Dice of the {region} structure (union of classes)")
    figure.tight_layout()
    with atomic_write_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
