"""Evaluation of predicted segmentations: Dice, HD95 and volume per case and class."""

from gmrseg.evaluation.evaluate import evaluate, format_summary, load_class_names
from gmrseg.evaluation.metrics import ClassMetrics, class_metrics

__all__ = ["ClassMetrics", "class_metrics", "evaluate", "format_summary", "load_class_names"]
