"""Average several runs of the rotation benchmark, one per seed.

One run trains each model once and tests it on a few held-out cases, so its
Dice figures move by a few points from seed to seed: too much to settle a
2-point goal. ``gmrseg benchmark rotation --repeats N`` runs the benchmark N
times (seeds ``seed`` .. ``seed + N - 1``, each with its own case split,
random rotations and training seed) and averages them here.

The averaged results keep the layout of a single run (see
:mod:`gmrseg.benchmarking.rotation_report`), so the same tables, goal check and
plot apply to them. Each averaged score also contains its run count and its
standard deviation over the runs. A ``"repeats"`` entry adds, per model and seed, the
upright and random-rotation Dice and the drop between them::

    {"repeats": {"seeds": [0, 1, 2], "folders": ["seed_0", ...],
                 "per_seed": {model_key: [{"seed", "upright", "random", "drop"}, ...]},
                 "summary": {model_key: {"upright": [mean, sd], "random": [mean, sd], "drop": [mean, sd]}}}}
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any, Sequence

__all__ = ["average_results", "format_repeats_markdown", "repeat_folder"]

# Test sets whose Dice the repeat tables list per seed.
_UPRIGHT = "upright"
_RANDOM = "random"


def repeat_folder(seed: int) -> str:
    """Return the name of the subfolder that contains the run with ``seed``."""
    return f"seed_{seed}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _sd(values: Sequence[float]) -> float:
    """Return the sample standard deviation (NaN for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _mean_and_sd(values: Sequence[float]) -> list[float]:
    return [_mean(values), _sd(values)]


def _scores(entries: list[dict[str, Any]], statistic) -> dict[str, Any]:
    """Apply ``statistic`` across the runs to each figure of one model on one test set."""
    classes = list(entries[0]["per_class"])
    regions = list(entries[0].get("regions", {}))
    return {
        "per_class": {name: statistic([entry["per_class"][name] for entry in entries]) for name in classes},
        "mean": statistic([entry["mean"] for entry in entries]),
        "regions": {name: statistic([entry["regions"][name] for entry in entries]) for name in regions},
    }


def _average_scores(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Average one model's scores on one test set over the runs (per class, mean and regions).

    The result keeps the single-run layout and adds ``"runs"`` (the run count)
    and ``"sd"``: the sample standard deviation of each figure over the runs,
    in the same layout (``{"per_class", "mean", "regions"}``).
    """
    averaged = _scores(entries, _mean)
    averaged["runs"] = len(entries)
    averaged["sd"] = _scores(entries, _sd)
    return averaged


def _check_same_design(runs: list[dict[str, Any]]) -> None:
    """Raise ValueError when runs tested different models, test sets or classes."""
    first = runs[0]
    keys = [model["key"] for model in first["models"]]
    sets = [entry["name"] for entry in first["sets"]]
    for run in runs[1:]:
        seed = run["settings"]["seed"]
        if [model["key"] for model in run["models"]] != keys:
            raise ValueError(f"cannot average runs with different models: the run with seed {seed} "
                             "differs from the first")
        if [entry["name"] for entry in run["sets"]] != sets:
            raise ValueError(f"cannot average runs with different test sets: the run with seed {seed} "
                             "differs from the first")
        if run["classes"] != first["classes"]:
            raise ValueError(f"cannot average runs with different classes: the run with seed {seed} "
                             "differs from the first")


def average_results(runs: list[dict[str, Any]], folders: Sequence[str]) -> dict[str, Any]:
    """Average the results of several runs of the same benchmark design.

    Args:
        runs: results dicts of single runs (``results.json``), in seed order.
        folders: subfolder of each run, relative to the averaged results.

    Returns:
        A results dict in the single-run layout whose Dice figures, training
        and inference times are means over the runs, with ``"repeats"`` added.
        Test-set case counts are summed over the runs.

    Raises:
        ValueError: no runs, or runs with different models, test sets or classes.
    """
    if not runs:
        raise ValueError("no benchmark runs to average")
    _check_same_design(runs)
    averaged = copy.deepcopy(runs[0])
    seeds = [run["settings"]["seed"] for run in runs]

    # Dice: mean over the runs, per model and test set.
    for key in averaged["dice"]:
        for name in averaged["dice"][key]:
            averaged["dice"][key][name] = _average_scores([run["dice"][key][name] for run in runs])
    for index, entry in enumerate(averaged["sets"]):
        entry["cases"] = sum(run["sets"][index]["cases"] for run in runs)
    training_cases = {run["num_training_cases"] for run in runs}
    averaged["num_training_cases"] = training_cases.pop() if len(training_cases) == 1 else _mean(
        [run["num_training_cases"] for run in runs])
    averaged["num_test_cases"] = sum(run["num_test_cases"] for run in runs)

    # Times: the mean per model, and the sum for the whole benchmark. Fields that belong
    # to one run (its folder, config and validation score) become lists in seed order.
    for index, model in enumerate(averaged["models"]):
        for field in ("training_seconds", "inference_seconds", "inference_seconds_per_case"):
            if field in model:
                model[field] = _mean([run["models"][index][field] for run in runs])
        for field in ("run_dir", "config", "best_validation_dice", "best_epoch"):
            if field in model:
                model[field] = [run["models"][index][field] for run in runs]
    averaged["total_seconds"] = sum(run.get("total_seconds", 0.0) for run in runs)

    # Per-seed upright and random Dice, and the spread of each over the seeds.
    per_seed: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, list[float]]] = {}
    has_pair = {_UPRIGHT, _RANDOM} <= {entry["name"] for entry in averaged["sets"]}
    if has_pair:
        for model in averaged["models"]:
            key = model["key"]
            rows = []
            for seed, run in zip(seeds, runs):
                upright, rotated = run["dice"][key][_UPRIGHT]["mean"], run["dice"][key][_RANDOM]["mean"]
                rows.append({"seed": seed, "upright": upright, "random": rotated, "drop": upright - rotated})
            per_seed[key] = rows
            summary[key] = {name: _mean_and_sd([row[name] for row in rows]) for name in ("upright", "random", "drop")}

    averaged["settings"]["seeds"] = seeds
    averaged["repeats"] = {"seeds": seeds, "folders": list(folders), "per_seed": per_seed, "summary": summary}
    return averaged


def _figure(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    # Adding 0.0 turns a rounded -0.0 into 0.0.
    mean = round(values[0] * scale, digits) + 0.0
    spread = values[1] * scale
    if math.isnan(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def format_repeats_markdown(results: dict[str, Any]) -> str:
    """Return the per-seed table of averaged results as Markdown ("" without repeats or a random set).

    Dice is a fraction; drops are in Dice points (hundredths); ± is the
    sample standard deviation over the seeds.
    """
    repeats = results.get("repeats")
    if not repeats or not repeats["summary"]:
        return ""
    labels = {model["key"]: model["label"] for model in results["models"]}
    seeds = repeats["seeds"]
    lines = ["## Repeats", "",
             f"{len(seeds)} runs, seeds {', '.join(str(seed) for seed in seeds)} (each its own case split, random "
             "rotations and training seed). Upright and random-3D figures are the mean Dice over classes; the drop "
             "is upright minus random, in Dice points; ± is the standard deviation over the runs.", "",
             "| model | upright | random 3D | drop (points) | " + " | ".join(f"drop, seed {seed}" for seed in seeds)
             + " |",
             "|---|---:|---:|---:|" + "---:|" * len(seeds)]
    for key, summary in repeats["summary"].items():
        per_seed = " | ".join(f"{row['drop'] * 100:+.1f}" for row in repeats["per_seed"][key])
        lines.append(f"| {labels[key]} | {_figure(summary['upright'])} | {_figure(summary['random'])} | "
                     f"{_figure(summary['drop'], 100, 1)} | {per_seed} |")
    return "\n".join(lines) + "\n"
