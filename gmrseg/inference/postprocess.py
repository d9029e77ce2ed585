"""Post-processing of a predicted segmentation on the scan's own voxel grid.

:func:`postprocess_segmentation` is the one place where network classes become
the dataset's label values. It runs after the probabilities are restored to the
input's geometry and before the file is written, with the scan's affine at
hand, so rules that need world coordinates (left versus right) live here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gmrseg.data.lateral import build_lateral_label_map, split_lateral
from gmrseg.errors import InputError

__all__ = ["postprocess_segmentation"]


def postprocess_segmentation(
    segmentation: np.ndarray,
    affine: np.ndarray,
    plans: dict[str, Any],
    *,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Map network classes to dataset labels, splitting merged lateral pairs by world x.

    Args:
        segmentation: network class per voxel (argmax over ``plans["network_labels"]``
            values), ``(X, Y, Z)`` on the input scan's grid.
        affine: the input scan's voxel-to-world affine (RAS+, mm).
        plans: the run's plans.json; reads ``labels``, ``network_labels`` and ``label_pairs``.
        image: the scan's first channel on the same grid; the lateral split
            places the midline at the centroid of the body in it.

    Returns:
        Dataset label values, ``(X, Y, Z)``, int16.

    Raises:
        InputError: when plans.json's label maps disagree with each other.
    """
    labels = {str(name): int(value) for name, value in plans["labels"].items()}
    network_labels = {str(name): int(value) for name, value in plans["network_labels"].items()}
    pairs = [list(entry)[:2] for entry in plans.get("label_pairs") or []]

    if not pairs:
        if network_labels == labels:
            return segmentation.astype(np.int16, copy=False)
        unknown = sorted(set(network_labels) - set(labels))
        if unknown:
            raise InputError(
                f"plans.json: network classes {unknown} are not dataset labels and no label_pairs merge them"
            )
        lookup = np.zeros(len(network_labels), dtype=np.int16)
        for name, value in network_labels.items():
            lookup[value] = labels[name]
        return lookup[segmentation]

    label_map = build_lateral_label_map(labels, pairs)
    if label_map.network_labels != network_labels:
        raise InputError(
            f"plans.json: network_labels {network_labels} do not match the classes that label_pairs {pairs} "
            f"give for labels {labels} ({label_map.network_labels})"
        )
    midline = "body" if image is not None else "labels"
    return split_lateral(segmentation, affine, label_map, image=image, midline=midline)
