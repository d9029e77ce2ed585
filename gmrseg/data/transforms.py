"""Training patches and augmentation (MONAI dict transforms), and the cached training / validation datasets.

A training item passes through two parts:

- deterministic (cached in memory by MONAI ``CacheDataset``): load the
  preprocessed arrays from the on-disk cache (:mod:`gmrseg.data.cache`), apply
  the optional ``label_transform``, pad to the patch size and record up to
  10,000 voxel positions per class for foreground oversampling;
- random (every time): pick a patch centre, which is a foreground voxel with
  probability ``foreground_fraction`` (nnU-Net forces one third of its patches
  to contain foreground). Cut a region large enough to rotate and zoom without
  empty corners. Then rotate and scale in one resampling, flip, change
  intensities (noise, blur, brightness, contrast, gamma), and blank the patch
  beyond random oblique planes (as outside a scan's field of view).

Keys: ``image`` (float32, C X Y Z), ``label`` (int16, 1 X Y Z), ``case_id``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import (
    BorderPad,
    CastToTyped,
    CenterSpatialCropd,
    Compose,
    DeleteItemsd,
    MapTransform,
    OneOf,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    Randomizable,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    SpatialCrop,
    SpatialPadd,
)
from monai.transforms.utils import generate_label_classes_crop_centers, map_classes_to_indices

from gmrseg.data.cache import LoadPreprocessedd, preprocess_to_cache
from gmrseg.data.preprocessing import PreprocessingPlan
from gmrseg.errors import InputError

__all__ = [
    "ClassIndicesd",
    "RandFieldOfViewCutd",
    "RandForegroundPatchd",
    "build_datasets",
    "build_training_transform",
    "build_validation_transform",
    "context_size",
]

logger = logging.getLogger(__name__)

INDICES_KEY = "label_class_indices"

# With field-of-view augmentation, up to this fraction of a patch may lie past the volume edge.
FIELD_OF_VIEW_OVERHANG = 0.5

# Voxel positions kept per class for choosing patch centres (nnU-Net keeps 10,000 too).
MAX_INDICES_PER_CLASS = 10_000


def _check_patch_size(patch_size: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(size) for size in patch_size)
    except (TypeError, ValueError):
        raise InputError(f"patch_size must be three positive integers, got {patch_size!r}.") from None
    if len(values) != 3 or min(values) < 1 or any(float(a) != float(b) for a, b in zip(values, patch_size)):
        raise InputError(f"patch_size must be three positive integers, got {patch_size!r}.")
    return values  # type: ignore[return-value]


def context_size(patch_size: Sequence[int], *, rotation: bool, scale_range: float) -> tuple[int, int, int]:
    """Return the size of the region cut around a patch centre before rotation and scaling.

    Any rotation of the patch fits in a cube whose side is the patch diagonal,
    and a zoom out by ``1 + scale_range`` widens it further. Each size keeps
    the parity of the patch size, so that an unrotated centre crop of the
    region lands on whole voxels and needs no interpolation.
    """
    patch = np.asarray(_check_patch_size(patch_size), dtype=np.float64)
    zoom = 1.0 + max(float(scale_range), 0.0)
    needed = np.full(3, np.linalg.norm(patch)) if rotation else patch.copy()
    needed = np.ceil(needed * zoom - 1e-9).astype(int)
    margin = np.maximum(needed - patch.astype(int), 0)
    margin += margin % 2
    return tuple(int(size) for size in patch.astype(int) + margin)  # type: ignore[return-value]


def _stable_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


class ClassIndicesd(MapTransform):
    """Store up to ``max_per_class`` flat voxel indices of each class of ``label`` under ``indices_key``.

    The subsample is drawn with a generator seeded by the case id, so the
    cached indices are the same in every run. A class absent from the case
    gets an empty array.
    """

    def __init__(self, num_classes: int, *, label_key: str = "label", indices_key: str = INDICES_KEY,
                 max_per_class: int = MAX_INDICES_PER_CLASS) -> None:
        super().__init__(keys=(label_key,))
        self.num_classes = num_classes
        self.label_key = label_key
        self.indices_key = indices_key
        self.max_per_class = max_per_class

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        output = dict(data)
        label = output[self.label_key]
        found = int(label.max()) if label.numel() else 0
        if found >= self.num_classes or (label.numel() and int(label.min()) < 0):
            raise InputError(
                f"case {output.get('case_id')!r}: label values must lie in 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes}), found {int(label.min())}..{found}."
            )
        rng = np.random.default_rng(_stable_seed(str(output.get("case_id", ""))))
        indices = []
        for class_indices in map_classes_to_indices(label, self.num_classes):
            class_indices = np.asarray(class_indices)
            if class_indices.size > self.max_per_class:
                class_indices = np.sort(rng.choice(class_indices, self.max_per_class, replace=False))
            indices.append(class_indices)
        output[self.indices_key] = indices
        return output


class RandForegroundPatchd(Randomizable, MapTransform):
    """Cut a region of ``context`` voxels around a random patch centre, forcing foreground centres at a set rate.

    The centre is drawn as MONAI's ``RandCropByLabelClassesd`` draws it for a
    crop of ``patch_size``: a class picked by ``ratios``, then a voxel of that
    class, moved inwards just enough for the patch to fit. So the chosen voxel
    always lies inside the final patch. The region around it is then cut with
    ``context`` voxels and padded with zeros where it leaves the volume. MONAI's
    own crops cannot reach past the volume edge, which the rotation margin needs.

    Args:
        keys: keys to crop (image and label).
        patch_size: final patch size in voxels.
        context: region size from :func:`context_size` (equal to ``patch_size``
            when neither rotation nor scaling is used).
        ratios: relative frequency of centres per class (index = class value).
        overhang: largest fraction of the patch, per axis, that may lie past the
            volume edge, in ``[0, 0.5]``. With 0 (nnU-Net's rule for volumes
            larger than the patch) a patch stays inside the volume. Larger
            values shift the centre by a uniform random offset of up to
            ``overhang * patch_size`` voxels, so patches of small, tightly
            cropped volumes show the volume edge at random places instead of
            always at the patch edge.
        num_samples: regions per case; the transform then returns a list.
        indices_key: key written by :class:`ClassIndicesd`.
    """

    def __init__(self, keys: Sequence[str], patch_size: Sequence[int], context: Sequence[int],
                 ratios: Sequence[float], *, label_key: str = "label", num_samples: int = 1,
                 overhang: float = 0.0, indices_key: str = INDICES_KEY) -> None:
        MapTransform.__init__(self, keys)
        if not 0.0 <= overhang <= 0.5:
            raise InputError(f"Invalid overhang {overhang}: use a fraction in [0, 0.5].")
        self.patch_size = _check_patch_size(patch_size)
        self.overhang = float(overhang)
        self.context = _check_patch_size(context)
        self.ratios = [float(ratio) for ratio in ratios]
        self.label_key = label_key
        self.num_samples = num_samples
        self.indices_key = indices_key
        self._centers: tuple = ()

    def randomize(self, label_shape: Sequence[int], indices: Sequence[np.ndarray]) -> None:
        ratios = [ratio if len(index) else 0.0 for ratio, index in zip(self.ratios, indices)]
        if sum(ratios) == 0:
            ratios = [1.0 if len(index) else 0.0 for index in indices]
        centers = generate_label_classes_crop_centers(
            self.patch_size, self.num_samples, label_shape, indices, ratios, self.R, warn=False,
        )
        if self.overhang > 0:
            centers = [self._shift(center, label_shape) for center in centers]
        self._centers = tuple(centers)

    def _shift(self, center: Sequence[int], shape: Sequence[int]) -> list[int]:
        """Move a centre by a random offset, keeping at most ``overhang`` of the patch past each edge."""
        shifted = []
        for c, size, n in zip(center, self.patch_size, shape):
            margin = int(self.overhang * size)
            low, high = size // 2 - margin, n - (size - size // 2) + margin
            offset = int(self.R.randint(-margin, margin + 1))
            shifted.append(int(np.clip(int(c) + offset, low, max(low, high))))
        return shifted

    def _cut(self, volume: torch.Tensor, center: Sequence[int]) -> torch.Tensor:
        shape = volume.shape[1:]
        start = [int(c) - size // 2 for c, size in zip(center, self.context)]
        end = [s + size for s, size in zip(start, self.context)]
        inside_start = [max(s, 0) for s in start]
        inside_end = [min(e, n) for e, n in zip(end, shape)]
        region = SpatialCrop(roi_start=inside_start, roi_end=inside_end)(volume)
        border = []
        for s, e, n in zip(start, end, shape):
            border.extend([max(-s, 0), max(e - n, 0)])
        if any(border):
            return BorderPad(spatial_border=border, mode="constant")(region)
        # A crop is a view; copy it so later steps never write into the cached volume.
        return region.clone()

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict] | dict:
        label = data[self.label_key]
        self.randomize(label.shape[1:], data[self.indices_key])
        samples = []
        for center in self._centers:
            sample = dict(data)
            for key in self.key_iterator(sample):
                sample[key] = self._cut(sample[key], center)
            samples.append(sample)
        return samples if self.num_samples > 1 else samples[0]


class RandFieldOfViewCutd(Randomizable, MapTransform):
    """Blank the patch beyond random oblique planes, as outside a scan's field of view.

    A scan stored at an angle to the anatomy, or resampled after a rotation, has
    regions outside its field of view. They are flat zero (also after
    ``zscore_nonzero`` normalization, which keeps zero voxels at zero) and are
    bounded by planes oblique to the voxel grid. Upright training crops never
    show such regions, and a network that never saw them mislabels the tissue
    next to them. This transform shows them without turning the anatomy.

    With probability ``prob``, it draws 1 to ``max_planes`` planes, each with a
    normal uniform on the sphere, and placed so that it cuts off a fraction of
    the patch drawn uniformly from ``[0, max_fraction]``. Beyond each plane the
    image becomes ``fill`` and the label becomes 0 (background): where there
    is no image there is nothing to segment.

    Args:
        image_key, label_key: keys of the ``(C, X, Y, Z)`` image and ``(1, X, Y, Z)`` label.
        prob: probability of cutting a patch at all.
        max_planes: largest number of planes per patch (at least 1).
        max_fraction: largest fraction of the patch one plane cuts off, in ``[0, 1)``.
        fill: image value outside the field of view (0 for ``zscore_nonzero`` data).
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", *, prob: float = 0.3,
                 max_planes: int = 3, max_fraction: float = 0.25, fill: float = 0.0) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        if not 0.0 <= prob <= 1.0:
            raise InputError(f"Invalid field-of-view cut probability {prob}: use a value in [0, 1].")
        if not isinstance(max_planes, int) or max_planes < 1:
            raise InputError(f"Invalid max_planes {max_planes!r}: use an integer >= 1.")
        if not 0.0 <= max_fraction < 1.0:
            raise InputError(f"Invalid max_fraction {max_fraction}: use a fraction in [0, 1).")
        self.image_key = image_key
        self.label_key = label_key
        self.prob = prob
        self.max_planes = max_planes
        self.max_fraction = max_fraction
        self.fill = fill

    def _outside_mask(self, shape: Sequence[int]) -> np.ndarray | None:
        """Draw the planes for one patch and return the voxels beyond any of them, or None for no cut."""
        if self.R.random_sample() >= self.prob:
            return None
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in shape], indexing="ij"))
        outside = np.zeros(tuple(shape), dtype=bool)
        for _ in range(int(self.R.randint(1, self.max_planes + 1))):
            normal = self.R.normal(size=3)
            normal /= max(float(np.linalg.norm(normal)), 1e-12)
            distance = np.tensordot(normal.astype(np.float32), grid, axes=1)
            fraction = self.R.uniform(0.0, self.max_fraction)
            outside |= distance > np.quantile(distance, 1.0 - fraction)
        return outside

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        sample = dict(data)
        outside = self._outside_mask(sample[self.image_key].shape[1:])
        if outside is None or not outside.any():
            return sample

        mask = torch.as_tensor(outside)
        image = sample[self.image_key].clone()
        image[:, mask] = self.fill
        label = sample[self.label_key].clone()
        label[:, mask] = 0
        sample[self.image_key] = image
        sample[self.label_key] = label
        return sample


def build_validation_transform(label_transform: Callable[[np.ndarray], np.ndarray] | None = None,
                               keep_inverse: bool = False) -> Compose:
    """Build the transform for whole validation volumes: load from the cache and map labels."""
    return Compose([LoadPreprocessedd(label_transform=label_transform, keep_inverse=keep_inverse)])


def build_training_transform(
    patch_size: Sequence[int],
    num_classes: int,
    *,
    foreground_fraction: float = 1.0 / 3.0,
    rotation: bool = False,
    rotation_range_deg: float = 180.0,
    flip: bool = True,
    flip_axes: Sequence[int] = (0, 1, 2),
    scale: bool = True,
    scale_range: float = 0.15,
    intensity: bool = True,
    field_of_view: bool = False,
    probability: float = 0.2,
    samples_per_case: int = 1,
    label_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Compose:
    """Build the training chain: cached loading and indexing, then random patches and augmentation.

    Args:
        patch_size: patch size in voxels (x, y, z) on the preprocessed grid.
        num_classes: number of label values the network predicts (labels
            are 0..num_classes-1 after ``label_transform``).
        foreground_fraction: probability that a patch is centred on a voxel
            of a foreground class (classes share it equally); nnU-Net uses 1/3.
        rotation: random 3D rotation of the patch about all three axes,
            uniform in +-``rotation_range_deg``. Off for GMR networks (their
            layers are rotation equivariant); on for dense baselines.
        rotation_range_deg: maximum rotation angle per axis, in degrees.
        flip: random flips (probability 0.5 each) along ``flip_axes``. Flipping
            axis 0 swaps left and right in RAS data, which is only valid when
            left and right structures share one class.
        scale: random zoom by a factor in ``1 +- scale_range``.
        intensity: Gaussian noise (p=0.1, sigma 0.1), Gaussian blur (p=0.2,
            sigma 0.5-1.0 voxels), brightness (p=0.15, factor 0.75-1.25),
            contrast around the mean (p=0.15, factor 0.75-1.25) and gamma
            (p=0.3, gamma 0.7-1.5 with the statistics kept).
        field_of_view: show the network the edge of the data at random
            places: patches may reach past the volume edge by up to half
            their size (zero padded), and :class:`RandFieldOfViewCutd` blanks
            the patch beyond random oblique planes (p=0.3), as outside the
            field of view of a scan stored at an angle. Without it, patches of
            tightly cropped volumes always end where the volume ends, and a
            network learns that coincidence. Needs data where 0 means "no
            data" after normalization (``zscore_nonzero``).
        probability: probability that a patch is rotated and/or scaled; both
            share one resampling (linear for the image, nearest for the label).
        samples_per_case: patches per case each time a case is drawn.
        label_transform: optional mapping of label arrays, see :class:`~gmrseg.data.cache.LoadPreprocessedd`.

    Returns:
        A MONAI ``Compose``; the random part starts at :class:`RandForegroundPatchd`,
        so ``CacheDataset`` caches everything before it.
    """
    patch = _check_patch_size(patch_size)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2 (background plus classes), got {num_classes!r}.")
    if not 0.0 <= foreground_fraction <= 1.0:
        raise InputError(f"foreground_fraction must lie in [0, 1], got {foreground_fraction}.")
    if not 0.0 <= probability <= 1.0:
        raise InputError(f"probability must lie in [0, 1], got {probability}.")
    if scale and not 0.0 <= scale_range < 1.0:
        raise InputError(f"scale_range must lie in [0, 1), got {scale_range}.")
    if samples_per_case < 1:
        raise InputError(f"samples_per_case must be at least 1, got {samples_per_case}.")
    bad_axes = [axis for axis in flip_axes if axis not in (0, 1, 2)]
    if bad_axes:
        raise InputError(f"flip_axes must be spatial axes 0, 1 or 2, got {list(flip_axes)}.")

    keys = ("image", "label")
    spatial = rotation or scale
    context = patch
    if spatial:
        context = context_size(patch, rotation=rotation, scale_range=scale_range if scale else 0.0)
    ratios = [1.0 - foreground_fraction] + [foreground_fraction / (num_classes - 1)] * (num_classes - 1)

    # Deterministic part, cached by CacheDataset.
    transforms: list = [
        LoadPreprocessedd(label_transform=label_transform),
        SpatialPadd(keys=keys, spatial_size=patch, mode="constant"),
        ClassIndicesd(num_classes=num_classes),
    ]

    # Patch centre and context region.
    transforms.append(RandForegroundPatchd(keys, patch, context, ratios, num_samples=samples_per_case,
                                           overhang=FIELD_OF_VIEW_OVERHANG if field_of_view else 0.0))
    transforms.append(DeleteItemsd(keys=INDICES_KEY))

    # Rotation and scaling in one resampling, or an exact centre crop.
    if spatial:
        angle = math.radians(rotation_range_deg) if rotation else 0.0
        affine = RandAffined(
            keys=keys, spatial_size=patch, prob=1.0,
            rotate_range=(angle, angle, angle) if rotation else None,
            scale_range=(scale_range,) * 3 if scale else None,
            mode=("bilinear", "nearest"), padding_mode="zeros",
        )
        transforms.append(OneOf([affine, CenterSpatialCropd(keys=keys, roi_size=patch)],
                                weights=[probability, 1.0 - probability]))
    if flip:
        transforms.extend(RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in flip_axes)
    if intensity:
        transforms.extend([
            RandGaussianNoised(keys="image", prob=0.1, mean=0.0, std=0.1),
            RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2),
            RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
            RandScaleIntensityFixedMeand(keys="image", factors=0.25, prob=0.15),
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3, retain_stats=True),
        ])
    if field_of_view:
        # Last, after the intensity changes, so the blanked region stays exactly ``fill``.
        transforms.append(RandFieldOfViewCutd(*keys))
    transforms.append(CastToTyped(keys=keys, dtype=(torch.float32, torch.int16)))
    return Compose(transforms)


def build_datasets(
    train_cases: Sequence,
    val_cases: Sequence,
    plan: PreprocessingPlan,
    cache_dir: str | os.PathLike,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    label_values: Mapping[str, int] | None = None,
    label_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    augmentation: Mapping[str, Any] | None = None,
    seed: int = 0,
    cache_in_memory: bool = True,
    progress: bool = False,
) -> tuple[Dataset, Dataset]:
    """Preprocess the cases once into ``cache_dir`` and build the training and validation datasets.

    Each case is read from NIfTI and preprocessed only when its cache file is
    missing or stale (:func:`~gmrseg.data.cache.preprocess_to_cache`). Later
    runs and all epochs read the ``.npz`` arrays. With ``cache_in_memory`` the
    deterministic part (loading, label mapping, padding, class indices) is
    kept in memory by MONAI ``CacheDataset``, so an epoch only runs the random
    part; without it every item reloads its ``.npz`` (memory stays flat for
    large datasets).

    Args:
        train_cases, val_cases: :class:`gmrseg.data.dataset.Case` lists (with labels).
        plan: preprocessing plan.
        cache_dir: folder for the preprocessed arrays (``plan_<digest>/`` inside).
        patch_size: training patch size in voxels.
        num_classes: classes the network predicts, background included.
        label_values: declared label values, checked when reading labels.
        label_transform: optional mapping of label arrays after loading
            (``(1, X, Y, Z)`` int16 in, same shape of integers out).
        augmentation: keyword arguments of :func:`build_training_transform`
            (``rotation``, ``scale_range``, ``flip``, ...).
        seed: seed of the training transform's random generator; the same seed
            gives the same patches in the main process. MONAI's DataLoader
            reseeds each worker from torch's seed, so set
            ``monai.utils.set_determinism`` as well when using workers.
        cache_in_memory: keep the deterministic part in memory.
        progress: show tqdm bars while preprocessing and caching.

    Returns:
        ``(train_dataset, val_dataset)``: training items are random patches
        ``{"image", "label", "case_id"}``; validation items are whole
        preprocessed volumes with the same keys.
    """
    if not train_cases:
        raise InputError("build_datasets needs at least one training case.")
    missing = [case.case_id for case in list(train_cases) + list(val_cases) if case.label_path is None]
    if missing:
        raise InputError(f"training and validation cases need labels; these have none: {missing[:10]}.")

    train_items = preprocess_to_cache(train_cases, plan, cache_dir, label_values=label_values, progress=progress)
    val_items = preprocess_to_cache(val_cases, plan, cache_dir, label_values=label_values, progress=progress)

    train_transform = build_training_transform(
        patch_size, num_classes, label_transform=label_transform, **dict(augmentation or {}),
    )
    train_transform.set_random_state(seed=seed)
    val_transform = build_validation_transform(label_transform=label_transform)

    if cache_in_memory:
        try:
            # copy_cache=False: the random part copies the region it cuts (RandForegroundPatchd),
            # so no item is deep-copied per draw, which cost 12 ms per 36 x 50 x 36 case.
            train = CacheDataset(train_items, train_transform, cache_rate=1.0, num_workers=0, progress=progress,
                                 copy_cache=False)
            val = CacheDataset(val_items, val_transform, cache_rate=1.0, num_workers=0, progress=progress)
        except RuntimeError as error:
            # MONAI wraps errors raised inside transforms; surface ours unwrapped.
            cause = error
            while cause is not None and not isinstance(cause, InputError):
                cause = cause.__cause__
            if cause is not None:
                raise cause from None
            raise
    else:
        train = Dataset(train_items, train_transform)
        val = Dataset(val_items, val_transform)
    logger.info("Datasets: %d training and %d validation cases, patch %s", len(train_items), len(val_items),
                list(_check_patch_size(patch_size)))
    return train, val
