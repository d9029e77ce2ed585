"""Preprocessing plan and its exact inverse: orientation, crop, intensity normalization, resampling.

The plan is computed once per dataset (:func:`plan_preprocessing`), stored in the
run folder as ``plans.json["preprocessing"]`` and applied the same way to
training cases and to scans at prediction time (:func:`preprocess_case`).
:func:`restore_to_original` maps a network output on the preprocessed grid back
onto the scan's own voxel grid.

The steps, in order, on a ``(C, X, Y, Z)`` image and its voxel-to-world affine:

1. orientation: flips and axis permutations (MONAI ``Orientation``) so that the
   voxel axes point to the plan's orientation (RAS by default: the x index
   grows towards the patient's right, y towards anterior, z towards
   superior). No interpolation. Oblique scans keep their tilt: the axes are only permuted to
   the nearest anatomical direction, as nnU-Net does.
2. crop to the bounding box of nonzero voxels over all channels (the label
   does not widen the box, so training and prediction crop alike).
3. intensity normalization per channel (see :data:`NORMALIZATION_SCHEMES`).
4. resampling to the target spacing (MONAI ``Spacing``: linear for the image,
   nearest for the label), keeping the scan's axis directions. Skipped exactly
   when the spacing already matches, so axis-aligned scans at the target
   spacing are never interpolated.

This module does not read files; :func:`plan_preprocessing` reads the cases
through :mod:`gmrseg.data.io`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import NormalizeIntensity, Orientation, SpatialCrop, SpatialResample, Spacing
from monai.transforms.utils import generate_spatial_bounding_box

from gmrseg.errors import InputError

if TYPE_CHECKING:
    from gmrseg.data.dataset import DatasetSpec

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "DEFAULT_ORIENTATION",
    "NORMALIZATION_SCHEMES",
    "PreprocessedCase",
    "PreprocessingPlan",
    "normalization_for_channel",
    "plan_preprocessing",
    "preprocess_case",
    "restore_to_original",
]

logger = logging.getLogger(__name__)

DEFAULT_ORIENTATION = "RAS"
"""Voxel axes after preprocessing: x towards Right, y towards Anterior, z towards Superior."""

DEFAULT_MAX_VOXELS = 512**3
"""Largest resampled volume (voxels per channel) that :func:`preprocess_case` accepts.

512**3 float32 voxels take 512 MiB per channel. Linear resampling needs about
four times that (an estimate: a 3-vector sampling grid plus the output).
"""

NORMALIZATION_SCHEMES = ("zscore_nonzero", "zscore", "ct", "none")
"""Intensity normalization per channel.

- ``zscore_nonzero``: per image, subtract the mean and divide by the standard
  deviation of the nonzero voxels; zero voxels stay zero (MR and anything else).
- ``zscore``: per image, mean and standard deviation of all voxels.
- ``ct``: clip to the dataset's foreground 0.5 / 99.5 percentiles
  (``lower``, ``upper``), then subtract the dataset's foreground ``mean`` and
  divide by its ``std``, so Hounsfield units mean the same in every scan.
- ``none``: leave intensities as they are.
"""

_CT_KEYS = ("lower", "upper", "mean", "std")

# Spacings that differ by less than this (relative) count as equal, so the
# resampling step is skipped and no interpolation happens.
_SPACING_RTOL = 1e-4

# Foreground voxels sampled per case and channel for the CT intensity statistics.
_FOREGROUND_SAMPLES_PER_CASE = 10_000


def zero_means_no_data(plan: "PreprocessingPlan") -> bool:
    """Return whether a voxel that is 0 in every channel marks "no data" (outside the field of view).

    True when every channel uses ``zscore_nonzero``: that scheme treats zero
    voxels as outside the scan and keeps them at 0. Training then shows the
    network blank field-of-view corners, and prediction labels such voxels
    background.
    """
    return all(entry["scheme"] == "zscore_nonzero" for entry in plan.normalization)


def normalization_for_channel(channel_name: str) -> str:
    """Return the normalization scheme for a channel name from dataset.json.

    ``CT`` (any case) gives ``ct``; ``noNorm`` gives ``none``; ``zscore`` gives
    ``zscore`` (nnU-Net's names); every other name (``MRI``, ``T1``, ``FLAIR``,
    ``ADC``, ...) gives ``zscore_nonzero``.
    """
    name = str(channel_name).strip().lower()
    if name == "ct":
        return "ct"
    if name == "nonorm":
        return "none"
    if name == "zscore":
        return "zscore"
    return "zscore_nonzero"


def _check_orientation(orientation: str) -> str:
    if not isinstance(orientation, str) or len(orientation) != 3:
        raise InputError(f"orientation must be three axis codes such as 'RAS' or 'LPS', got {orientation!r}.")
    code = orientation.upper()
    pairs = (("L", "R"), ("P", "A"), ("I", "S"))
    for pair in pairs:
        if sum(letter in pair for letter in code) != 1:
            raise InputError(
                f"orientation {orientation!r} must name each of the axes L/R, P/A and I/S exactly once, "
                "for example 'RAS' or 'LPS'."
            )
    return code


def _check_spacing(spacing: Any, name: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(value) for value in spacing)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be three positive numbers in mm, got {spacing!r}.") from None
    if len(values) != 3 or not all(math.isfinite(value) and value > 0 for value in values):
        raise InputError(f"{name} must be three positive numbers in mm, got {spacing!r}.")
    return values  # type: ignore[return-value]


def _check_normalization(entry: Any, channel: int) -> dict:
    if not isinstance(entry, dict) or entry.get("scheme") not in NORMALIZATION_SCHEMES:
        raise InputError(
            f"normalization of channel {channel} must be a dict with 'scheme' in {NORMALIZATION_SCHEMES}, "
            f"got {entry!r}."
        )
    entry = dict(entry)
    if entry["scheme"] == "ct":
        missing = [key for key in _CT_KEYS if key not in entry]
        if missing:
            raise InputError(f"CT normalization of channel {channel} lacks {missing}; it needs {_CT_KEYS}.")
        values = {key: float(entry[key]) for key in _CT_KEYS}
        if not all(math.isfinite(value) for value in values.values()):
            raise InputError(f"CT normalization of channel {channel} has a non-finite value: {values}.")
        if values["lower"] > values["upper"] or values["std"] <= 0:
            raise InputError(
                f"CT normalization of channel {channel} needs lower <= upper and std > 0, got {values}."
            )
        entry.update(values)
    return entry


@dataclass(kw_only=True)
class PreprocessingPlan:
    """Preprocessing parameters of one dataset, stored in ``plans.json``.

    Attributes:
        orientation: axis codes of the preprocessed voxel grid (default RAS).
        target_spacing: voxel size (mm) after resampling, one value per axis of
            the reoriented grid.
        normalization: one dict per channel with a ``scheme`` from
            :data:`NORMALIZATION_SCHEMES`; ``ct`` also stores ``lower``,
            ``upper``, ``mean`` and ``std`` in the image's units.
        crop_to_nonzero: crop to the bounding box of nonzero voxels.
        max_voxels: largest resampled volume (voxels per channel) accepted;
            larger scans raise :class:`~gmrseg.errors.InputError`.
    """

    orientation: str = DEFAULT_ORIENTATION
    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    normalization: list[dict] = field(default_factory=lambda: [{"scheme": "zscore_nonzero"}])
    crop_to_nonzero: bool = True
    max_voxels: int = DEFAULT_MAX_VOXELS

    def __post_init__(self) -> None:
        self.orientation = _check_orientation(self.orientation)
        self.target_spacing = _check_spacing(self.target_spacing, "target_spacing")
        if not isinstance(self.normalization, (list, tuple)) or not self.normalization:
            raise InputError(f"normalization must be a non-empty list (one dict per channel), got {self.normalization!r}.")
        self.normalization = [_check_normalization(entry, index) for index, entry in enumerate(self.normalization)]
        if not isinstance(self.crop_to_nonzero, bool):
            raise InputError(f"crop_to_nonzero must be true or false, got {self.crop_to_nonzero!r}.")
        if isinstance(self.max_voxels, bool) or not isinstance(self.max_voxels, int) or self.max_voxels <= 0:
            raise InputError(f"max_voxels must be a positive integer, got {self.max_voxels!r}.")

    @property
    def num_channels(self) -> int:
        """Number of image channels the plan normalizes."""
        return len(self.normalization)

    def to_dict(self) -> dict:
        """Return the plan as JSON-ready plain data."""
        data = asdict(self)
        data["target_spacing"] = list(self.target_spacing)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessingPlan":
        """Build a plan from :meth:`to_dict` output; unknown keys raise :class:`InputError`."""
        if not isinstance(data, dict):
            raise InputError(f"a preprocessing plan must be a JSON object, got {type(data).__name__}.")
        known = {"orientation", "target_spacing", "normalization", "crop_to_nonzero", "max_voxels"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown key(s) {unknown} in the preprocessing plan; valid keys: {sorted(known)}.")
        return cls(**data)

    def digest(self) -> str:
        """Return a 12-character hash of the plan, used to name preprocessed caches."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass
class PreprocessedCase:
    """One case on the preprocessed grid.

    Attributes:
        image: float32 tensor ``(C, X, Y, Z)`` in the plan's orientation and spacing.
        label: int16 tensor ``(1, X, Y, Z)`` on the same grid, or None.
        inverse: plain data (lists, numbers, strings; JSON-serializable) that
            :func:`restore_to_original` needs to map a volume on this grid back
            to the input grid.
    """

    image: torch.Tensor
    label: torch.Tensor | None
    inverse: dict


# --------------------------------------------------------------------------- planning


def _reoriented_spacing(affine: np.ndarray, orientation: str) -> np.ndarray:
    """Return the voxel spacing (mm) along the axes of the reoriented grid."""
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    ornt = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt(orientation))
    reoriented = np.empty(3)
    for source_axis, (target_axis, _) in enumerate(ornt):
        reoriented[int(target_axis)] = spacing[source_axis]
    return reoriented


def _isotropic_spacing(median_spacing: np.ndarray) -> float:
    """Return the isotropic target spacing for GMR networks: the median of the three median spacings.

    GMR rings are spheres in voxel units, so they are spheres in millimetres
    only on an isotropic grid. The candidates and their trade-offs, for a
    typical 0.7 x 0.7 x 3 mm slice stack:

    - finest axis (0.7 mm): keeps all in-plane detail and upsamples the
      slice axis 4.3 times, but with two coarse axes (0.5 x 5 x 5 mm) it would
      upsample two axes ten times each.
    - geometric mean (1.14 mm): keeps the voxel count, but blurs the in-plane
      detail that the annotator drew on.
    - median of the three (chosen, 0.7 mm here): equals the in-plane spacing of
      slice stacks, so annotated detail is kept and only the thick axis is
      interpolated. With two coarse axes it follows the coarse ones. Memory
      grows by the slice-thickness ratio, which
      :attr:`PreprocessingPlan.max_voxels` caps.
    """
    return float(np.median(median_spacing))


def _sample_foreground(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    samples = []
    for channel in image:
        values = channel[mask]
        if values.size > _FOREGROUND_SAMPLES_PER_CASE:
            values = rng.choice(values, _FOREGROUND_SAMPLES_PER_CASE, replace=False)
        samples.append(values.astype(np.float64))
    return samples


def _intensity_statistics(values: np.ndarray) -> dict:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_00_5": float(np.percentile(values, 0.5)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
        "num_samples": int(values.size),
    }


def plan_preprocessing(
    spec: "DatasetSpec",
    *,
    isotropic: bool = True,
    target_spacing: Sequence[float] | None = None,
    orientation: str = DEFAULT_ORIENTATION,
    crop_to_nonzero: bool = True,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> tuple[PreprocessingPlan, dict]:
    """Compute the dataset fingerprint and the preprocessing plan from the training cases.

    Every training case is read once (image and label). The fingerprint contains
    the spacing and shape of each case on the reoriented grid, their medians,
    the shapes after cropping and after resampling to the target spacing, the
    axis codes found in the headers and, per channel, statistics of the
    foreground (label > 0) intensities from up to 10,000 voxels per case.

    Args:
        spec: dataset from :func:`gmrseg.data.dataset.load_dataset`.
        isotropic: resample to one spacing on all axes (the default, needed by
            GMR networks whose rings live in physical space; see
            :func:`_isotropic_spacing` for the choice of value). False gives
            the per-axis median spacing, as nnU-Net does.
        target_spacing: explicit spacing in mm (three values, or one value for
            all axes); overrides ``isotropic``.
        orientation: axis codes of the preprocessed grid.
        crop_to_nonzero: crop each case to its nonzero bounding box.
        max_voxels: largest resampled volume accepted per case.

    Returns:
        ``(plan, fingerprint)``; the fingerprint is JSON-ready plain data.

    Raises:
        InputError: empty training set, a CT channel without labelled
            foreground, or an invalid argument.
    """
    from gmrseg.data.io import read_image, read_label

    orientation = _check_orientation(orientation)
    if target_spacing is not None:
        if np.isscalar(target_spacing):
            target_spacing = [float(target_spacing)] * 3  # type: ignore[arg-type]
        target_spacing = _check_spacing(target_spacing, "target_spacing")
    if not spec.training:
        raise InputError(f"dataset {spec.root} has no training cases; preprocessing needs at least one.")

    num_channels = len(spec.channel_names)
    channel_names = [spec.channel_names[index] for index in sorted(spec.channel_names)]
    schemes = [normalization_for_channel(name) for name in channel_names]
    rng = np.random.default_rng(0)

    spacings, shapes, cropped_shapes, axcodes = [], [], [], {}
    foreground: list[list[np.ndarray]] = [[] for _ in range(num_channels)]

    # One pass over the training cases: geometry, crop box and foreground samples.
    for case in spec.training:
        image, geometry = read_image(case.image_paths)
        if image.shape[0] != num_channels:
            raise InputError(
                f"case {case.case_id} has {image.shape[0]} channel(s) but dataset.json declares {num_channels}."
            )
        affine = np.asarray(geometry.affine, dtype=np.float64)
        codes = "".join(nib.aff2axcodes(affine))
        axcodes[codes] = axcodes.get(codes, 0) + 1

        oriented = _orient(MetaTensor(torch.as_tensor(image), affine=torch.as_tensor(affine)), orientation)
        spacings.append(_reoriented_spacing(affine, orientation).tolist())
        shapes.append(list(oriented.shape[1:]))
        start, end = _nonzero_box(oriented) if crop_to_nonzero else ([0, 0, 0], list(oriented.shape[1:]))
        cropped_shapes.append([int(e - s) for s, e in zip(start, end)])

        if case.label_path is not None:
            label = read_label(case.label_path, geometry)
            mask = label > 0
            if mask.any():
                for channel, values in enumerate(_sample_foreground(image, mask, rng)):
                    foreground[channel].append(values)

    # Target spacing: explicit, isotropic median, or per-axis median.
    median_spacing = np.median(np.asarray(spacings), axis=0)
    if target_spacing is None:
        if isotropic:
            target_spacing = (_isotropic_spacing(median_spacing),) * 3
        else:
            target_spacing = tuple(float(value) for value in median_spacing)

    # Intensity statistics of the foreground per channel; CT channels need them.
    intensity = {}
    normalization = []
    for channel, scheme in enumerate(schemes):
        values = np.concatenate(foreground[channel]) if foreground[channel] else None
        intensity[str(channel)] = _intensity_statistics(values) if values is not None else None
        if scheme == "ct":
            if values is None:
                raise InputError(
                    f"channel {channel} ({channel_names[channel]!r}) is CT, whose normalization needs the "
                    f"foreground intensities, but no training case of {spec.root} has a label with foreground. "
                    "Add labels or rename the channel in dataset.json to use per-image z-score normalization."
                )
            stats = intensity[str(channel)]
            normalization.append({
                "scheme": "ct",
                "lower": stats["percentile_00_5"],
                "upper": stats["percentile_99_5"],
                "mean": stats["mean"],
                "std": max(stats["std"], 1e-8),
            })
        else:
            normalization.append({"scheme": scheme})

    plan = PreprocessingPlan(
        orientation=orientation,
        target_spacing=target_spacing,
        normalization=normalization,
        crop_to_nonzero=crop_to_nonzero,
        max_voxels=max_voxels,
    )
    scale = np.asarray(spacings) / np.asarray(plan.target_spacing)
    resampled_shapes = np.rint(np.maximum(np.asarray(cropped_shapes) - 1, 0) * scale + 1).astype(int)
    fingerprint = {
        "num_cases": len(spec.training),
        "channel_names": channel_names,
        "spacings": spacings,
        "shapes": shapes,
        "cropped_shapes": cropped_shapes,
        "median_spacing": median_spacing.tolist(),
        "median_shape": np.median(np.asarray(shapes), axis=0).tolist(),
        "median_cropped_shape": np.median(np.asarray(cropped_shapes), axis=0).tolist(),
        "median_resampled_shape": np.median(resampled_shapes, axis=0).tolist(),
        "max_resampled_shape": resampled_shapes.max(axis=0).tolist(),
        "axis_codes": axcodes,
        "foreground_intensity": intensity,
    }
    logger.info(
        "Planned preprocessing for %d cases: orientation %s, target spacing %s mm, normalization %s",
        len(spec.training), plan.orientation, plan.target_spacing, [entry["scheme"] for entry in normalization],
    )
    return plan, fingerprint


# --------------------------------------------------------------------------- forward


_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _orient(volume: MetaTensor, orientation: str) -> MetaTensor:
    return Orientation(axcodes=orientation, labels=_AXIS_LABELS)(volume)


def _nonzero_box(volume: np.ndarray | torch.Tensor) -> tuple[list[int], list[int]]:
    """Return the bounding box ``(start, end)`` of voxels nonzero in any channel; the full grid when all are zero."""
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    start, end = generate_spatial_bounding_box(volume, select_fn=lambda values: values != 0)
    start = [int(value) for value in start]
    end = [int(value) for value in end]
    if any(e <= s for s, e in zip(start, end)):
        return [0, 0, 0], [int(size) for size in volume.shape[1:]]
    return start, end


def _normalize(image: np.ndarray, normalization: list[dict]) -> np.ndarray:
    """Normalize each channel of a ``(C, X, Y, Z)`` numpy array (numpy keeps MONAI off the MetaTensor path)."""
    channels = []
    for channel, entry in zip(image, normalization):
        # A copy: MONAI normalizes numpy arrays in place, and ``image`` may be a view of the caller's array.
        channel = np.array(channel[None], dtype=np.float32)
        scheme = entry["scheme"]
        if scheme == "zscore_nonzero":
            channel = NormalizeIntensity(nonzero=True)(channel)
        elif scheme == "zscore":
            channel = NormalizeIntensity(nonzero=False)(channel)
        elif scheme == "ct":
            channel = np.clip(channel, entry["lower"], entry["upper"])
            channel = NormalizeIntensity(subtrahend=entry["mean"], divisor=entry["std"])(channel)
        channels.append(np.asarray(channel, dtype=np.float32))
    return np.concatenate(channels, axis=0)


def _check_image_and_affine(image: Any, affine: Any, plan: PreprocessingPlan) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if image.ndim != 4:
        raise InputError(f"image must have shape (C, X, Y, Z), got shape {image.shape}.")
    if image.shape[0] != plan.num_channels:
        raise InputError(
            f"image has {image.shape[0]} channel(s) but the preprocessing plan normalizes {plan.num_channels}."
        )
    if min(image.shape[1:]) < 1:
        raise InputError(f"image has an empty spatial axis: shape {image.shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"affine must be a finite 4x4 matrix, got {affine.tolist()}.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"affine is singular (zero voxel size or parallel axes): {affine.tolist()}.")
    return image.astype(np.float32, copy=False), affine


def preprocess_case(
    image: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    plan: PreprocessingPlan,
    label: np.ndarray | torch.Tensor | None = None,
) -> PreprocessedCase:
    """Reorient, crop, normalize and resample one case following ``plan``.

    Args:
        image: ``(C, X, Y, Z)`` intensities, C equal to the plan's channels.
        affine: 4x4 voxel-to-world (RAS+, mm) matrix of ``image``, as nibabel gives it.
        plan: the dataset's plan.
        label: optional ``(X, Y, Z)`` or ``(1, X, Y, Z)`` integer label map on
            the image grid.

    Returns:
        :class:`PreprocessedCase`; ``inverse`` records the original grid, the
        reorientation, the crop box and both affines.

    Raises:
        InputError: bad shapes or affine, or a resampled volume above
            ``plan.max_voxels``.
    """
    image, affine = _check_image_and_affine(image, affine, plan)
    original_shape = [int(size) for size in image.shape[1:]]
    if label is not None:
        label = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
        if label.ndim == 4 and label.shape[0] == 1:
            label = label[0]
        if label.shape != tuple(original_shape):
            raise InputError(f"label shape {label.shape} differs from the image's spatial shape {tuple(original_shape)}.")
        if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
            raise InputError("label contains non-integer values; a label map must hold class indices.")

    # 1. Orientation: flips and permutations only.
    volume = _orient(MetaTensor(torch.from_numpy(image), affine=torch.from_numpy(affine)), plan.orientation)
    label_volume = None
    if label is not None:
        label_tensor = torch.from_numpy(label.astype(np.float32)[None])
        label_volume = _orient(MetaTensor(label_tensor, affine=torch.from_numpy(affine)), plan.orientation)
    oriented_shape = [int(size) for size in volume.shape[1:]]
    oriented_affine = volume.affine.numpy().astype(np.float64)

    # 2. Crop to the nonzero bounding box of the image.
    if plan.crop_to_nonzero:
        start, end = _nonzero_box(volume)
    else:
        start, end = [0, 0, 0], list(oriented_shape)
    cropper = SpatialCrop(roi_start=start, roi_end=end)
    volume = cropper(volume)
    if label_volume is not None:
        total = int(np.count_nonzero(label_volume.as_tensor().numpy()))
        label_volume = cropper(label_volume)
        lost = total - int(np.count_nonzero(label_volume.as_tensor().numpy()))
        if lost:
            logger.warning("Cropping to the nonzero image box removed %d labelled voxels of %d.", lost, total)
    cropped_shape = [int(size) for size in volume.shape[1:]]
    cropped_affine = volume.affine.numpy().astype(np.float64)

    # 3. Intensity normalization per channel, on the input voxels.
    normalized = _normalize(volume.as_tensor().numpy(), plan.normalization)
    volume = MetaTensor(torch.from_numpy(normalized), affine=volume.affine)

    # 4. Resampling to the target spacing; skipped when already there.
    current_spacing = affine_to_spacing(cropped_affine, r=3).astype(np.float64)
    target = np.asarray(plan.target_spacing, dtype=np.float64)
    resampled = not np.allclose(current_spacing, target, rtol=_SPACING_RTOL, atol=0.0)
    if resampled:
        expected = np.rint((np.asarray(cropped_shape) - 1) * current_spacing / target + 1).astype(int)
        voxels = int(np.prod(expected))
        if voxels > plan.max_voxels:
            raise InputError(
                f"resampling a {'x'.join(map(str, cropped_shape))} voxel volume with spacing "
                f"{np.round(current_spacing, 3).tolist()} mm to {plan.target_spacing} mm would give "
                f"{'x'.join(map(str, expected))} = {voxels:,} voxels per channel, above the limit of "
                f"{plan.max_voxels:,}. Use a coarser target spacing (preprocessing target_spacing in the "
                "config), crop the scan to the region of interest, or raise max_voxels if memory allows."
            )
        volume = Spacing(pixdim=plan.target_spacing, mode="bilinear", padding_mode="border")(volume)
        if label_volume is not None:
            label_volume = Spacing(pixdim=plan.target_spacing, mode="nearest", padding_mode="border")(label_volume)
    preprocessed_affine = volume.affine.numpy().astype(np.float64)
    preprocessed_shape = [int(size) for size in volume.shape[1:]]

    image_out = volume.as_tensor().to(torch.float32).contiguous()
    label_out = None
    if label_volume is not None:
        label_out = torch.round(label_volume.as_tensor()).to(torch.int16).contiguous()

    inverse = {
        "original_shape": original_shape,
        "original_affine": affine.tolist(),
        "orientation": plan.orientation,
        "oriented_shape": oriented_shape,
        "oriented_affine": oriented_affine.tolist(),
        "crop_start": [int(value) for value in start],
        "crop_end": [int(value) for value in end],
        "cropped_affine": cropped_affine.tolist(),
        "resampled": bool(resampled),
        "preprocessed_shape": preprocessed_shape,
        "preprocessed_affine": preprocessed_affine.tolist(),
    }
    logger.debug(
        "Preprocessed %s -> %s (crop %s:%s, resampled=%s)", original_shape, preprocessed_shape, start, end, resampled
    )
    return PreprocessedCase(image=image_out, label=label_out, inverse=inverse)


# --------------------------------------------------------------------------- inverse


_INVERSE_KEYS = (
    "original_shape", "original_affine", "orientation", "oriented_shape", "crop_start", "crop_end",
    "cropped_affine", "resampled", "preprocessed_shape", "preprocessed_affine",
)


def _default_pad(num_channels: int, mode: str) -> np.ndarray:
    """Background outside the crop box: 0, or one-hot class 0 for linear multi-channel probabilities."""
    pad = np.zeros(num_channels, dtype=np.float32)
    if mode == "linear" and num_channels > 1:
        pad[0] = 1.0
    return pad


def restore_to_original(
    volume: np.ndarray | torch.Tensor,
    inverse: dict,
    *,
    mode: str = "linear",
    pad_value: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Map a volume on the preprocessed grid back onto the original voxel grid.

    Undoes, in reverse order, the resampling (MONAI ``SpatialResample`` to the
    cropped input grid, skipped when preprocessing did not resample), the crop
    (voxels outside the box get ``pad_value``) and the reorientation (exact
    flips and permutations).

    Args:
        volume: ``(C, X, Y, Z)`` array or tensor on the preprocessed grid
            (``inverse["preprocessed_shape"]``).
        inverse: :attr:`PreprocessedCase.inverse` of the case.
        mode: ``"linear"`` for probabilities or intensities (float32 result),
            ``"nearest"`` for label maps (the input dtype is kept).
        pad_value: value outside the crop box, one number or one per channel.
            Default: 0, except for ``linear`` with several channels, where
            channel 0 (background) gets 1 so probabilities still sum to one.

    Returns:
        ``(C, *inverse["original_shape"])`` numpy array.
    """
    if mode not in ("linear", "nearest"):
        raise InputError(f"mode must be 'linear' or 'nearest', got {mode!r}.")
    missing = [key for key in _INVERSE_KEYS if key not in inverse]
    if missing:
        raise InputError(f"the inverse record lacks {missing}; pass PreprocessedCase.inverse unchanged.")
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim != 4 or list(array.shape[1:]) != list(inverse["preprocessed_shape"]):
        raise InputError(
            f"volume must have shape (C, {', '.join(map(str, inverse['preprocessed_shape']))}) "
            f"(the preprocessed grid), got {array.shape}."
        )
    num_channels = array.shape[0]
    output_dtype = np.float32 if mode == "linear" else array.dtype

    # 1. Resampling back to the cropped input grid.
    start, end = inverse["crop_start"], inverse["crop_end"]
    cropped_shape = [e - s for s, e in zip(start, end)]
    if inverse["resampled"]:
        source = MetaTensor(
            torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)),
            affine=torch.as_tensor(inverse["preprocessed_affine"], dtype=torch.float64),
        )
        resampler = SpatialResample(mode="bilinear" if mode == "linear" else "nearest", padding_mode="border")
        restored = resampler(
            source,
            dst_affine=torch.as_tensor(inverse["cropped_affine"], dtype=torch.float64),
            spatial_size=cropped_shape,
        )
        array = restored.as_tensor().numpy()
        if mode == "nearest":
            array = np.round(array)
    if list(array.shape[1:]) != cropped_shape:
        raise RuntimeError(f"internal shape mismatch: restored {array.shape[1:]} but the crop box is {cropped_shape}.")

    # 2. Undo the crop.
    if pad_value is None:
        pad = _default_pad(num_channels, mode)
    else:
        pad = np.broadcast_to(np.asarray(pad_value, dtype=np.float64), (num_channels,))
    full = np.empty((num_channels, *inverse["oriented_shape"]), dtype=output_dtype)
    full[...] = pad.astype(output_dtype)[:, None, None, None]
    full[:, start[0]:end[0], start[1]:end[1], start[2]:end[2]] = array.astype(output_dtype, copy=False)

    # 3. Undo the reorientation with the inverse of the forward axis transform.
    original_affine = np.asarray(inverse["original_affine"], dtype=np.float64)
    backward = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(inverse["orientation"]), nib.io_orientation(original_affine)
    )
    result = np.stack([nib.orientations.apply_orientation(channel, backward) for channel in full])
    if list(result.shape[1:]) != list(inverse["original_shape"]):
        raise RuntimeError(
            f"internal shape mismatch: restored {result.shape[1:]} but the original grid is {inverse['original_shape']}."
        )
    return np.ascontiguousarray(result)
