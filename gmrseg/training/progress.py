"""Training records: ``metrics.csv`` and the ``progress.png`` curves.

Both files are rewritten in full from the epoch history after every epoch,
through a temporary file and a rename, so they always match the checkpoint
a resumed run starts from.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gmrseg.utils.files import atomic_write_path, save_text_atomic

__all__ = ["metric_columns", "plot_progress", "progress_figure", "write_metrics_csv"]


def metric_columns(class_names: Sequence[str]) -> list[str]:
    """Return the ``metrics.csv`` columns for the given foreground class names."""
    return ["epoch", "train_loss", "val_loss", *[f"dice_{name}" for name in class_names], "dice_mean", "lr",
            "seconds"]


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_metrics_csv(path: str | Path, history: list[dict[str, Any]], class_names: Sequence[str]) -> None:
    """Write one row per epoch; validation columns are empty on epochs without validation."""
    columns = metric_columns(class_names)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow([_format(row.get(column)) for column in columns])
    save_text_atomic(path, buffer.getvalue())


def plot_progress(path: str | Path, history: list[dict[str, Any]], class_names: Sequence[str]) -> None:
    """Draw loss curves (left) and validation Dice per class (right) into a PNG at ``path``."""
    figure = progress_figure(history, class_names)
    with atomic_write_path(path) as temporary:
        figure.savefig(temporary, format="png")


def progress_figure(history: list[dict[str, Any]], class_names: Sequence[str]) -> Figure:
    """Return the figure of ``plot_progress``: loss per epoch (left), validation Dice per class (right).

    Uses the Agg canvas directly (no pyplot), so it works without a display
    and does not touch matplotlib's global figure state. Epoch ticks are whole
    numbers, and every point has a marker, so a run of one epoch still shows.
    """
    figure = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, dice_axes = figure.subplots(1, 2)
    for axes in (loss_axes, dice_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))

    epochs = [row["epoch"] for row in history]
    loss_axes.plot(epochs, [row.get("train_loss") for row in history], marker=".", label="train loss")
    validated = [row for row in history if row.get("dice_mean") is not None]
    if any(row.get("val_loss") is not None for row in validated):
        loss_axes.plot([row["epoch"] for row in validated], [row.get("val_loss") for row in validated],
                       marker="o", label="validation loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)
    loss_axes.legend(loc="upper right")

    val_epochs = [row["epoch"] for row in validated]
    for name in class_names:
        dice_axes.plot(val_epochs, [row.get(f"dice_{name}") for row in validated], marker=".", label=name)
    dice_axes.plot(val_epochs, [row.get("dice_mean") for row in validated], marker="o", color="black",
                   linewidth=2, label="mean")
    dice_axes.set_xlabel("epoch")
    dice_axes.set_ylabel("validation Dice")
    dice_axes.set_ylim(0.0, 1.0)
    dice_axes.grid(alpha=0.3)
    if val_epochs:
        dice_axes.legend(loc="lower right")

    if epochs and max(epochs) - min(epochs) < 2:
        # A span under two epochs would get fractional ticks; widen it to whole epochs either side.
        for axes in (loss_axes, dice_axes):
            axes.set_xlim(min(epochs) - 1, max(epochs) + 1)
    figure.tight_layout()
    return figure
