"""Left and right labels for reflection-equivariant networks.

A GMR network commutes with reflections, so it cannot tell a left structure from
its mirror image on the right. gmrseg therefore merges each pair of lateral
labels (``kidney_left`` and ``kidney_right``) into one class for the network and
splits the predicted class back into left and right in patient space.

Splitting uses world coordinates: in RAS+ (nibabel's convention) the x axis grows
toward the patient's right, so the result does not depend on how the scan is
stored (RAS, LPS, flipped or oblique voxel axes).

Midline rule: the sagittal midline is the plane ``x = x_mid`` in world space.
By default ``x_mid`` is the x coordinate of the centroid of the body, so the
plane follows the patient rather than the scanner origin. The body is every
voxel brighter than 10% of the way from the 1st to the 99th intensity percentile. Each connected component of
a merged class goes to the side of its centroid. A component with at least
``crossing_fraction`` of its voxels on each side of the plane (two structures
that touch, or one that crosses the midline) is split voxel by voxel at the
plane instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from gmrseg.errors import InputError

__all__ = [
    "LabelPair",
    "LateralLabelMap",
    "body_midline_x",
    "build_lateral_label_map",
    "detect_label_pairs",
    "split_lateral",
]

logger = logging.getLogger(__name__)

# Lateral words, matched case-insensitively as a whole word at the start or end
# of a label name: "left kidney", "kidney_left", "Left-Hippocampus", "kidney.L", "rt_lung".
_LEFT_WORDS = ("left", "lt", "l")
_RIGHT_WORDS = ("right", "rt", "r")
_SEPARATORS = r"[\s_.\-]+"
_MIDLINE_RULES = ("body", "labels", "world")


@dataclass(frozen=True)
class LabelPair:
    """A pair of dataset labels that mirror each other across the sagittal midline."""

    left: str
    right: str
    merged: str


@dataclass
class LateralLabelMap:
    """Mapping between dataset labels and the classes the network predicts.

    Attributes:
        labels: the dataset's labels, name to value (background is 0).
        pairs: lateral pairs merged for the network.
        network_labels: classes the network predicts, name to consecutive value.
        to_network: lookup table, dataset value to network value (length max value + 1).
    """

    labels: dict[str, int]
    pairs: list[LabelPair]
    network_labels: dict[str, int]
    to_network: np.ndarray

    def merge(self, label: np.ndarray) -> np.ndarray:
        """Map a dataset label array to network classes."""
        if label.size and (label.min() < 0 or label.max() >= len(self.to_network)):
            raise InputError(
                f"label values must lie in 0..{len(self.to_network) - 1}, got {label.min()}..{label.max()}"
            )
        return self.to_network[label]

    def to_dict(self) -> dict:
        """Return the plain-data form stored in a run folder's plans.json."""
        return {
            "labels": dict(self.labels),
            "network_labels": dict(self.network_labels),
            "label_pairs": [[pair.left, pair.right, pair.merged] for pair in self.pairs],
        }


def _split_lateral_word(name: str) -> tuple[str, str] | None:
    """Return ``(side, core)`` when ``name`` starts or ends with a lateral word, else None."""
    words = [word for word in re.split(_SEPARATORS, name.strip()) if word]
    if len(words) < 2:
        # A bare "left" or "L" names no structure; camel case such as "LeftKidney" is split below.
        camel = re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", name)
        if len(camel) < 2 or "".join(camel) != name.replace(" ", ""):
            return None
        words = camel

    for index in (0, -1):
        word = words[index].lower()
        if word in _LEFT_WORDS:
            side = "left"
        elif word in _RIGHT_WORDS:
            side = "right"
        else:
            continue
        rest = words[1:] if index == 0 else words[:-1]
        return side, "_".join(part.lower() for part in rest)
    return None


def detect_label_pairs(labels: Mapping[str, int]) -> list[LabelPair]:
    """Find pairs of lateral labels by name.

    A name is lateral when its first or last word is left/right, lt/rt or l/r
    (any case; words separated by spaces, ``_``, ``-``, ``.`` or camel case).
    Two lateral names with the same remaining words form a pair.

    Raises:
        InputError: when a lateral label has no partner (only ``kidney_left``),
            or when two labels claim the same side of one structure.
    """
    sides: dict[str, dict[str, str]] = {}
    for name, value in labels.items():
        if int(value) == 0:
            continue
        parsed = _split_lateral_word(name)
        if parsed is None:
            continue
        side, core = parsed
        entry = sides.setdefault(core, {})
        if side in entry:
            raise InputError(
                f"labels {entry[side]!r} and {name!r} both look like the {side} {core.replace('_', ' ')}; "
                "rename one or set label_pairs in the config"
            )
        entry[side] = name

    pairs = []
    for core, entry in sides.items():
        if len(entry) == 1:
            (side, name), = entry.items()
            other = "right" if side == "left" else "left"
            raise InputError(
                f"label {name!r} is a {side} structure but no {other} partner was found in dataset.json; "
                "a reflection-equivariant network cannot tell left from right on its own. Add the partner label, "
                "rename the label, or set label_pairs in the config (an empty list disables pairing)"
            )
        pairs.append(LabelPair(left=entry["left"], right=entry["right"], merged=core))
    return sorted(pairs, key=lambda pair: labels[pair.left])


def _pairs_from_config(labels: Mapping[str, int], label_pairs: Sequence[Sequence[str]]) -> list[LabelPair]:
    pairs = []
    used: set[str] = set()
    for entry in label_pairs:
        if len(entry) != 2 or not all(isinstance(name, str) for name in entry):
            raise InputError(f"label_pairs entries must be [left_name, right_name], got {entry!r}")
        left, right = entry
        for name in (left, right):
            if name not in labels:
                raise InputError(
                    f"label_pairs names {name!r}, which is not a label in dataset.json; "
                    f"valid labels: {', '.join(labels)}"
                )
            if labels[name] == 0:
                raise InputError(f"label_pairs cannot include the background label {name!r}")
            if name in used:
                raise InputError(f"label {name!r} appears in more than one entry of label_pairs")
            used.add(name)
        parsed = _split_lateral_word(left)
        merged = parsed[1] if parsed else f"{left}+{right}"
        pairs.append(LabelPair(left=left, right=right, merged=merged))
    return pairs


def build_lateral_label_map(
    labels: Mapping[str, int], label_pairs: Sequence[Sequence[str]] | None = None
) -> LateralLabelMap:
    """Build the dataset-to-network label mapping with lateral pairs merged.

    Args:
        labels: the dataset's labels, name to integer value; 0 is background.
        label_pairs: explicit ``[[left, right], ...]`` from the config. None
            detects pairs by name; an empty list disables pairing.

    Returns:
        The mapping. Network classes are numbered consecutively from 0 in the
        order of each class's smallest dataset value. A merged class takes the
        position of its left label and the structure's name without the side.
    """
    labels = {str(name): int(value) for name, value in labels.items()}
    pairs = detect_label_pairs(labels) if label_pairs is None else _pairs_from_config(labels, label_pairs)
    right_of = {pair.right: pair for pair in pairs}
    left_of = {pair.left: pair for pair in pairs}

    network_labels: dict[str, int] = {}
    to_network = np.zeros(max(labels.values()) + 1, dtype=np.int16)
    for name, value in sorted(labels.items(), key=lambda item: item[1]):
        if name in right_of:
            continue
        class_name = left_of[name].merged if name in left_of else name
        network_labels[class_name] = len(network_labels)
        to_network[value] = network_labels[class_name]
    for pair in pairs:
        to_network[labels[pair.right]] = network_labels[pair.merged]

    if pairs:
        logger.info(
            "Merging lateral label pairs for the network: %s",
            ", ".join(f"{pair.left} + {pair.right} -> {pair.merged}" for pair in pairs),
        )
    return LateralLabelMap(labels=labels, pairs=pairs, network_labels=network_labels, to_network=to_network)


def _world_x(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Return the RAS+ world x coordinate (mm) of voxel indices ``(N, 3)``."""
    return voxels @ affine[0, :3] + affine[0, 3]


def body_midline_x(image: np.ndarray, affine: np.ndarray) -> float:
    """Return the world x (mm, RAS+) of the centroid of the body in ``image`` ``(X, Y, Z)``.

    The body is every voxel brighter than 10% of the way from the 1st to the
    99th intensity percentile, which keeps air out for CT (-1000 HU) and MRI.
    """
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        raise InputError("cannot find the body midline: the image has no finite voxels")
    low, high = np.percentile(finite, [1, 99])
    mask = np.isfinite(image) & (image > low + 0.1 * (high - low))
    if not mask.any():
        mask = np.ones(image.shape, dtype=bool)
    centroid = np.array(ndimage.center_of_mass(mask))
    return float(_world_x(affine, centroid[None, :])[0])


def split_lateral(
    segmentation: np.ndarray,
    affine: np.ndarray,
    label_map: LateralLabelMap,
    *,
    image: np.ndarray | None = None,
    midline: str = "body",
    crossing_fraction: float = 0.1,
) -> np.ndarray:
    """Turn a network segmentation back into dataset labels, splitting merged classes by side.

    Args:
        segmentation: network classes on the scan's own voxel grid, ``(X, Y, Z)``.
        affine: the scan's voxel-to-world (RAS+, mm) affine.
        label_map: mapping built by :func:`build_lateral_label_map`.
        image: the scan's first channel on the same grid; needed for ``midline="body"``.
        midline: ``"body"`` (centroid of the body in ``image``), ``"labels"``
            (centroid of all voxels of merged classes) or ``"world"`` (x = 0, for
            scans registered to a template such as MNI152).
        crossing_fraction: a component with at least this fraction of its voxels
            on each side of the midline is split voxel by voxel.

    Returns:
        Dataset label values, ``(X, Y, Z)``, int16.
    """
    if midline not in _MIDLINE_RULES:
        raise ValueError(f"midline must be one of {_MIDLINE_RULES}, got {midline!r}")
    if not 0.0 < crossing_fraction <= 0.5:
        raise ValueError(f"crossing_fraction must lie in (0, 0.5], got {crossing_fraction}")

    # Every class maps back to one dataset value; merged classes are fixed below.
    right_names = {pair.right for pair in label_map.pairs}
    from_network = np.zeros(len(label_map.network_labels), dtype=np.int16)
    for name, value in label_map.labels.items():
        if name not in right_names:
            from_network[label_map.to_network[value]] = value
    output = from_network[segmentation]
    if not label_map.pairs:
        return output

    affine = np.asarray(affine, dtype=np.float64)
    if midline == "body":
        if image is None:
            raise ValueError("midline='body' needs the scan's image")
        x_mid = body_midline_x(image, affine)
    elif midline == "world":
        x_mid = 0.0
    else:
        merged_values = [label_map.network_labels[pair.merged] for pair in label_map.pairs]
        voxels = np.argwhere(np.isin(segmentation, merged_values))
        x_mid = float(_world_x(affine, voxels).mean()) if len(voxels) else 0.0
    logger.debug("Lateral split at world x = %.2f mm (rule: %s)", x_mid, midline)

    for pair in label_map.pairs:
        network_value = label_map.network_labels[pair.merged]
        components, count = ndimage.label(segmentation == network_value)
        if count == 0:
            continue
        voxels = np.argwhere(components > 0)
        component_of_voxel = components[tuple(voxels.T)]
        is_right = _world_x(affine, voxels) > x_mid

        # Share of each component's voxels on the patient's right.
        sizes = np.bincount(component_of_voxel, minlength=count + 1)
        right_share = np.bincount(component_of_voxel, weights=is_right, minlength=count + 1) / np.maximum(sizes, 1)
        share = right_share[component_of_voxel]
        crossing = np.minimum(share, 1.0 - share) >= crossing_fraction

        # Straddling components are cut at the plane; the others go to their majority side.
        goes_right = np.where(crossing, is_right, share > 0.5)
        output[tuple(voxels.T)] = np.where(goes_right, label_map.labels[pair.right], label_map.labels[pair.left])
    return output
