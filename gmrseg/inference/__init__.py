"""Prediction with a trained run: sliding window, test-time augmentation, writing in the scan's geometry."""

from gmrseg.inference.predictor import CaseResult, Predictor, predict
from gmrseg.inference.sliding_window import WindowLayout, plan_window_layout, sliding_window_logits
from gmrseg.inference.tta import Symmetry, tta_symmetries

__all__ = [
    "CaseResult",
    "Predictor",
    "Symmetry",
    "WindowLayout",
    "plan_window_layout",
    "predict",
    "sliding_window_logits",
    "tta_symmetries",
]
