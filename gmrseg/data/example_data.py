"""Example dataset folders from real scans that ship with gmrseg or with nilearn.

``make_example_dataset`` writes an nnU-Net v2 dataset folder (``imagesTr``,
``labelsTr``, ``imagesTs``, ``labelsTs``, ``dataset.json``) from one of two sources:

- ``hippocampus``: 80 MRI cases of the Medical Segmentation Decathlon
  hippocampus task shipped in ``gmrseg/data/example/hippocampus`` (CC BY-SA 4.0;
  the licence and citation are copied into the output folder).
- ``mni152``: the MNI ICBM152 2009 T1 template and its grey and white matter
  probability maps shipped inside nilearn (``pip install gmrseg[examples]``).
  Each case is the template under its own random rigid transform (rotation up
  to 10 degrees per axis, shift up to 5 mm), with a smooth multiplicative bias
  field and Gaussian noise, resampled to ``spacing`` mm. Labels: 0 background,
  1 grey matter, 2 white matter, each voxel taking the most probable class.

Rotated cases (``rotate_train`` / ``rotate_test``) model a tilted patient. The
anatomy turns about the centre of the volume in world space. The image is
resampled with linear and the label with nearest interpolation onto a grid
with the source's axes and spacing, enlarged so no voxel is cut off. The
affine's origin moves so the volume centre keeps its world position, and
voxels that come from outside the source volume are 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from gmrseg.errors import InputError
from gmrseg.utils.files import atomic_write_path, save_json_atomic, save_text_atomic

__all__ = [
    "EXAMPLE_DATASETS",
    "LABEL_INTERPOLATIONS",
    "make_example_dataset",
    "parse_rotation_option",
    "rotate_case",
    "shipped_hippocampus_dir",
]

logger = logging.getLogger(__name__)

EXAMPLE_DATASETS = ("hippocampus", "mni152")

# Default number of cases per source: all 80 shipped hippocampus cases; 20
# MNI152 cases (about 1.5 MB each at 2 mm).
_DEFAULT_CASES = {"hippocampus": 80, "mni152": 20}

_AXIS_NAMES = ("x", "y", "z")

_MNI152_NOTICE = """# MNI152 example cases: source and licence

Each case is derived from the MNI ICBM152 2009 symmetric T1 template (release a)
and its grey and white matter probability maps, as shipped in nilearn
(nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz), under a
random rigid transform with a smooth bias field and noise added by gmrseg.

Template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging
Centre, Montreal Neurological Institute, McGill University. The authors
distribute it free of charge with a copyright notice that permits use, copying
and distribution provided the notice is kept; nilearn's own description lists
the licence as unknown. Read the terms at the source before redistributing:
http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009

Cite: D. L. Collins et al., "ANIMAL+INSECT: improved cortical structure
segmentation", IPMI 1999; V. S. Fonov et al., "Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood", NeuroImage 47,
Supplement 1, 2009; V. S. Fonov et al., "Unbiased average age-appropriate
atlases for pediatric studies", NeuroImage 54(1), 2011.
"""


def shipped_hippocampus_dir() -> Path:
    """Return the folder of the hippocampus cases shipped in the package."""
    return Path(str(resources.files("gmrseg.data.example").joinpath("hippocampus")))


def parse_rotation_option(value: str, *, allow_angles: bool) -> str | list[float]:
    """Parse ``none``, ``random`` or (when ``allow_angles``) comma-separated angles in degrees.

    Returns ``"none"``, ``"random"`` or the list of angles.
    """
    text = str(value).strip().lower()
    if text in ("none", "random"):
        return text
    if not allow_angles:
        raise InputError(f"rotation option must be 'none' or 'random', got {value!r}.")
    try:
        angles = [float(part) for part in text.split(",")]
    except ValueError:
        angles = []
    if not angles or not all(np.isfinite(angles)):
        raise InputError(
            f"rotate_test must be 'none', 'random' or comma-separated angles in degrees such as '15,30,45', "
            f"got {value!r}."
        )
    repeated = sorted({angle for index, angle in enumerate(angles) if angle in angles[:index]})
    if repeated:
        # Each angle names its output files (CASE_rotx015 ...), so a repeat would write over them.
        raise InputError(f"Invalid rotate_test {value!r}: the angle {repeated[0]:g} appears more than once. "
                         "Give each angle once.")
    return angles


# --------------------------------------------------------------------------- rotation


def _rotated_grid(affine: np.ndarray, shape: Sequence[int], rotation: np.ndarray,
                  translation: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    """Return ``(output_affine, output_shape, output_to_input)`` for a world-space rigid motion.

    World points move as ``p -> R (p - c) + c + t`` with ``c`` the world
    position of the volume centre. The output grid has the input's axes and
    spacing and just covers the moved volume.
    """
    shape = np.asarray(shape, dtype=np.float64)
    linear, origin = affine[:3, :3], affine[:3, 3]
    center = linear @ ((shape - 1) / 2) + origin

    # Corners of the input after the motion, in voxel units of the output axes.
    corners = np.array(np.meshgrid(*[[0.0, size - 1] for size in shape], indexing="ij")).reshape(3, -1)
    moved = rotation @ (linear @ corners + origin[:, None] - center[:, None]) + (center + translation)[:, None]
    in_output_axes = np.linalg.solve(linear, moved - origin[:, None])
    low = np.floor(in_output_axes.min(axis=1) + 1e-6)
    high = np.ceil(in_output_axes.max(axis=1) - 1e-6)
    output_shape = tuple(int(value) for value in high - low + 1)
    output_affine = affine.copy()
    output_affine[:3, 3] = origin + linear @ low

    # Output voxel -> world -> undo the motion -> input voxel.
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = center + translation - rotation @ center
    output_to_input = np.linalg.solve(affine, np.linalg.solve(motion, output_affine))
    return output_affine, output_shape, output_to_input


LABEL_INTERPOLATIONS = ("nearest", "linear")


def _move_label_linear(label: np.ndarray, matrix: np.ndarray, output_shape: Sequence[int]) -> np.ndarray:
    """Move a label map by interpolating each label's indicator linearly and keeping the largest.

    Outside the input grid counts as background (0). Ties go to the smaller label value.
    """
    values = np.unique(label)
    if 0 not in values:
        values = np.concatenate([[0], values])
    best_value = np.zeros(output_shape, dtype=label.dtype)
    best_weight = np.full(output_shape, -1.0, dtype=np.float32)
    for value in values:
        weight = ndimage.affine_transform(
            (label == value).astype(np.float32), matrix[:3, :3], offset=matrix[:3, 3], output_shape=output_shape,
            order=1, mode="constant", cval=1.0 if value == 0 else 0.0,
        )
        larger = weight > best_weight
        best_value[larger] = value
        best_weight[larger] = weight[larger]
    return best_value


def rotate_case(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray, rotation: np.ndarray,
                translation: Sequence[float] = (0.0, 0.0, 0.0), *,
                label_interpolation: str = "nearest") -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Move a case rigidly in world space, padding the grid so nothing is cut off.

    Args:
        image: ``(X, Y, Z)`` intensities (linear interpolation, 0 outside).
        label: ``(X, Y, Z)`` integer labels (0 outside) or None.
        affine: voxel-to-world matrix of both.
        rotation: 3x3 rotation matrix applied about the volume centre.
        translation: shift in mm after the rotation.
        label_interpolation: ``"nearest"`` takes each output voxel's label from
            the nearest input voxel, so boundaries jitter by up to half a voxel
            against the interpolated image. ``"linear"`` interpolates the
            indicator of every label on its own, as nnU-Net does when it resizes
            segmentations, and keeps the largest. Its boundaries are smooth and
            follow the image.

    Returns:
        ``(image, label, affine)`` on the new grid (image float32, label in
        its input dtype).
    """
    if label_interpolation not in LABEL_INTERPOLATIONS:
        raise InputError(f"label_interpolation must be one of {', '.join(LABEL_INTERPOLATIONS)}, "
                         f"got {label_interpolation!r}.")
    affine = np.asarray(affine, dtype=np.float64)
    output_affine, output_shape, matrix = _rotated_grid(
        affine, image.shape, np.asarray(rotation, dtype=np.float64), np.asarray(translation, dtype=np.float64)
    )
    moved_image = ndimage.affine_transform(
        image.astype(np.float32, copy=False), matrix[:3, :3], offset=matrix[:3, 3], output_shape=output_shape,
        order=1, mode="constant", cval=0.0,
    )
    moved_label = None
    if label is not None and label_interpolation == "linear":
        moved_label = _move_label_linear(label, matrix, output_shape)
    elif label is not None:
        moved_label = ndimage.affine_transform(
            label, matrix[:3, :3], offset=matrix[:3, 3], output_shape=output_shape, order=0, mode="constant", cval=0,
        )
    return moved_image, moved_label, output_affine


def _axis_rotation(axis: int, angle_deg: float) -> np.ndarray:
    return Rotation.from_euler(_AXIS_NAMES[axis], angle_deg, degrees=True).as_matrix()


def _test_variants(case_id: str, option: str | list[float], rng: np.random.Generator) -> list[tuple[str, np.ndarray, dict | None]]:
    """Return ``(output_case_id, rotation, record)`` for each version of one held-out case.

    With angles, every held-out case is written once per angle and axis
    (``CASE_rotx015`` ...); an angle of 0 writes the upright case once.
    """
    if option == "none":
        return [(case_id, np.eye(3), None)]
    if option == "random":
        rotation = Rotation.random(random_state=rng).as_matrix()
        return [(case_id, rotation, {"source": case_id, "rotation": "random", "matrix": rotation.tolist()})]
    variants = []
    for angle in option:
        if angle == 0:
            variants.append((f"{case_id}_rot000", np.eye(3), {"source": case_id, "axis": None, "angle_deg": 0.0}))
            continue
        for axis in range(3):
            name = f"{case_id}_rot{_AXIS_NAMES[axis]}{'m' if angle < 0 else ''}{abs(angle):03g}"
            variants.append((name, _axis_rotation(axis, angle),
                             {"source": case_id, "axis": _AXIS_NAMES[axis], "angle_deg": float(angle)}))
    return variants


# --------------------------------------------------------------------------- sources


def _hippocampus_cases(count: int | None, rng: np.random.Generator) -> tuple[list[str], Path, dict]:
    folder = shipped_hippocampus_dir()
    cases = sorted(path.name[: -len(".nii.gz")] for path in (folder / "labelsTr").glob("*.nii.gz"))
    if not cases:
        raise InputError(f"no shipped hippocampus cases found in {folder}; the gmrseg installation is incomplete.")
    if count is not None:
        if count > len(cases):
            raise InputError(f"cases={count} but only {len(cases)} hippocampus cases ship with gmrseg; use at most {len(cases)}.")
        cases = sorted(rng.choice(cases, size=count, replace=False).tolist())
    metadata = {
        "name": "Hippocampus",
        "description": "Hippocampus head and body from mono-modal MRI (Medical Segmentation Decathlon Task04), "
                       "cropped; subset shipped with gmrseg.",
        "reference": "Simpson et al., arXiv:1902.09063 (2019); Antonelli et al., Nat. Commun. 13, 4128 (2022)",
        "licence": "CC BY-SA 4.0",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "anterior": 1, "posterior": 2},
    }
    return cases, folder, metadata


def _load_hippocampus(folder: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = nib.load(folder / "imagesTr" / f"{case_id}_0000.nii.gz")
    label = nib.load(folder / "labelsTr" / f"{case_id}.nii.gz")
    return (np.asarray(image.dataobj, dtype=np.float32), np.asarray(label.dataobj).astype(np.uint8),
            image.affine.astype(np.float64))


def _load_mni152_sources():
    try:
        from nilearn import datasets
    except ImportError:
        raise InputError(
            "the mni152 example needs nilearn, which is not installed. Install it with "
            "`pip install nilearn` (or the extra: `pip install -e \".[examples]\"` in a source checkout), "
            "or use --dataset hippocampus."
        ) from None
    # These loaders read files inside nilearn's wheel; nothing is downloaded.
    template = datasets.load_mni152_template()
    grey = datasets.load_mni152_gm_template()
    white = datasets.load_mni152_wm_template()
    return template, grey, white


def _smooth_bias_field(shape: Sequence[int], rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Return a smooth multiplicative field around 1 (coarse 4x4x4 random grid, cubic upsampling)."""
    coarse = rng.normal(0.0, strength / 2, size=(4, 4, 4))
    field = ndimage.zoom(coarse, [size / 4 for size in shape], order=3, mode="nearest")
    field = field[: shape[0], : shape[1], : shape[2]]
    return np.exp(field).astype(np.float32)


def _mni152_case(sources, spacing: float, rotation: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample the template once onto a ``spacing`` mm grid after a random rigid motion."""
    template, grey, white = sources
    source_affine = template.affine.astype(np.float64)
    data = np.asarray(template.dataobj, dtype=np.float32)

    # Target grid: the template's extent at the requested spacing.
    scale = spacing / np.sqrt((source_affine[:3, :3] ** 2).sum(axis=0))
    grid_shape = np.maximum(np.floor((np.asarray(data.shape) - 1) / scale).astype(int) + 1, 1)
    grid_affine = source_affine.copy()
    grid_affine[:3, :3] = source_affine[:3, :3] @ np.diag(scale)

    # Random rigid jitter (rotation up to 10 degrees per axis, shift up to 5 mm) composed with ``rotation``.
    jitter = Rotation.from_euler("xyz", rng.uniform(-10, 10, size=3), degrees=True).as_matrix()
    translation = rng.uniform(-5, 5, size=3)
    output_affine, output_shape, grid_to_grid = _rotated_grid(grid_affine, grid_shape, rotation @ jitter, translation)
    matrix = np.linalg.solve(source_affine, grid_affine) @ grid_to_grid

    def resample(volume: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(volume.astype(np.float32, copy=False), matrix[:3, :3], offset=matrix[:3, 3],
                                        output_shape=output_shape, order=1, mode="constant", cval=0.0)

    image = resample(data)
    grey_p = resample(np.asarray(grey.dataobj))
    white_p = resample(np.asarray(white.dataobj))
    background_p = np.clip(1.0 - grey_p - white_p, 0.0, 1.0)
    label = np.argmax(np.stack([background_p, grey_p, white_p]), axis=0).astype(np.uint8)

    # Bias field and noise, as on a real scanner.
    image *= _smooth_bias_field(image.shape, rng)
    image += rng.normal(0.0, 0.03 * float(np.percentile(data, 99)), size=image.shape).astype(np.float32)
    return image, label, output_affine


# --------------------------------------------------------------------------- writing


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nifti = nib.Nifti1Image(array, affine)
    nifti.header.set_qform(affine, code=1)
    nifti.header.set_sform(affine, code=1)
    nifti.header.set_xyzt_units("mm")
    with atomic_write_path(path) as temporary:
        nib.save(nifti, temporary)


_DATASET_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
_DATASET_FILES = ("dataset.json", "LICENSE.md")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Raise unless ``out_dir`` is missing, empty, or (with ``overwrite``) an earlier example dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder; choose another output folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} exists and is not empty; choose a new folder or pass --overwrite (overwrite=True "
                "in Python) to replace its dataset."
            )
        if not (out_dir / "dataset.json").is_file():
            raise InputError(
                f"{out_dir} is not empty and contains no dataset.json, so it is not an example dataset; "
                "gmrseg does not clear it even with --overwrite. Choose a new folder."
            )


def _publish(staging: Path, out_dir: Path) -> None:
    """Move a finished dataset from ``staging`` to ``out_dir``, replacing an earlier one there.

    dataset.json moves first, so even a move cut short leaves a folder that
    ``--overwrite`` accepts. Files in ``out_dir`` that are not part of a dataset stay.
    """
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for name in _DATASET_FILES:
        os.replace(staging / name, out_dir / name)
    for name in _DATASET_FOLDERS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
        os.replace(staging / name, out_dir / name)
    staging.rmdir()


def make_example_dataset(
    out_dir: str | os.PathLike,
    *,
    dataset: str = "hippocampus",
    cases: int | None = None,
    test_fraction: float = 0.2,
    rotate_train: str = "none",
    rotate_test: str = "none",
    seed: int = 0,
    overwrite: bool = False,
    spacing: float = 2.0,
    label_interpolation: str | None = None,
) -> Path:
    """Write an example dataset folder in the nnU-Net v2 layout.

    Args:
        out_dir: folder to create. A non-empty folder raises ``FileExistsError``
            unless ``overwrite``; even then only a folder holding a
            ``dataset.json`` is cleared.
        dataset: ``"hippocampus"`` (shipped MRI cases) or ``"mni152"`` (needs nilearn).
        cases: total cases, training plus test (default: 80 hippocampus, 20 mni152).
            Hippocampus cases are drawn at random (``seed``) from the 80 shipped.
        test_fraction: fraction of cases held out in ``imagesTs`` / ``labelsTs``
            (rounded, at least one case in each part).
        rotate_train: ``"none"`` or ``"random"`` (uniform random 3D rotation per case).
        rotate_test: ``"none"``, ``"random"``, or comma-separated angles in
            degrees (``"15,30,45"``): each held-out case is then written once per
            angle about each of the x, y and z axes (``CASE_rotx015`` ...), and
            ``dataset.json["test_rotations"]`` records the source case, axis
            and angle of each written case. An angle of 0 adds the upright case.
        seed: seed for the case split, the rotations and (mni152) the jitter,
            bias field and noise.
        overwrite: replace the dataset in an existing ``out_dir``.
        spacing: voxel size in mm of the mni152 cases (ignored for hippocampus).
        label_interpolation: how rotated hippocampus labels follow their image,
            ``"nearest"`` (the default) or ``"linear"`` (see :func:`rotate_case`).
            Linear gives references whose boundaries follow the interpolated
            image. Nearest-neighbour boundaries jitter by up to half a voxel,
            which lowers the Dice of any prediction on the rotated scans (about
            a point on the hippocampus, docs/benchmarks.md). mni152 labels
            always come from linearly resampled tissue maps, so only ``None``
            or ``"linear"`` is accepted there.

    Returns:
        ``out_dir`` as a Path.
    """
    # Validate every argument before touching the disk.
    if dataset not in EXAMPLE_DATASETS:
        raise InputError(f"dataset must be one of {EXAMPLE_DATASETS}, got {dataset!r}.")
    if cases is not None and (isinstance(cases, bool) or not isinstance(cases, int) or cases < 2):
        raise InputError(f"cases must be an integer >= 2 (at least one training and one test case), got {cases!r}.")
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}.")
    train_option = parse_rotation_option(rotate_train, allow_angles=False)
    test_option = parse_rotation_option(rotate_test, allow_angles=True)
    if not (np.isfinite(spacing) and 0.5 <= float(spacing) <= 10.0):
        raise InputError(f"spacing must lie between 0.5 and 10 mm, got {spacing!r}.")
    if label_interpolation is not None and label_interpolation not in LABEL_INTERPOLATIONS:
        raise InputError(f"label_interpolation must be one of {', '.join(LABEL_INTERPOLATIONS)}, "
                         f"got {label_interpolation!r}.")
    if dataset == "mni152" and label_interpolation == "nearest":
        raise InputError("mni152 labels come from linearly resampled tissue maps; label_interpolation "
                         "'nearest' applies to the hippocampus cases only. Leave it unset for mni152.")
    label_interpolation = label_interpolation or {"hippocampus": "nearest", "mni152": "linear"}[dataset]
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    # Case list and loader for the chosen source.
    if dataset == "hippocampus":
        case_ids, folder, metadata = _hippocampus_cases(cases, rng)
        load = lambda case_id, rotation: _rotate_loaded(_load_hippocampus(folder, case_id), rotation,  # noqa: E731
                                                        label_interpolation)
        licence_text = (folder / "LICENSE.md").read_text(encoding="utf-8")
    else:
        sources = _load_mni152_sources()
        count = cases if cases is not None else _DEFAULT_CASES["mni152"]
        case_ids = [f"mni152_{index:03d}" for index in range(count)]
        case_rngs = {case_id: np.random.default_rng([seed, index]) for index, case_id in enumerate(case_ids)}
        load = lambda case_id, rotation: _mni152_case(sources, float(spacing), rotation, case_rngs[case_id])  # noqa: E731
        licence_text = _MNI152_NOTICE
        metadata = {
            "name": "MNI152",
            "description": f"MNI ICBM152 2009 T1 template under random rigid transforms with bias field and noise, "
                           f"{float(spacing):g} mm; grey and white matter labels from the template's probability maps.",
            "reference": "Fonov et al., NeuroImage 54(1), 2011",
            "licence": "MNI ICBM152 template copyright notice, see LICENSE.md",
            "channel_names": {"0": "T1"},
            "labels": {"background": 0, "grey_matter": 1, "white_matter": 2},
        }

    # Split: shuffled with the seed, at least one case on each side.
    order = rng.permutation(len(case_ids))
    num_test = min(max(int(round(len(case_ids) * float(test_fraction))), 1), len(case_ids) - 1)
    test_ids = sorted(case_ids[index] for index in order[:num_test])
    train_ids = sorted(case_ids[index] for index in order[num_test:])

    # Everything is written to a hidden folder beside out_dir and moved there when complete,
    # so an error or Ctrl-C leaves no half-written dataset.
    _check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        num_test_written = _write_cases(staging, train_ids, test_ids, load, train_option, test_option, rng,
                                        metadata, licence_text,
                                        {"dataset": dataset, "seed": seed, "rotate_train": rotate_train,
                                         "rotate_test": rotate_test, "test_fraction": float(test_fraction),
                                         "label_interpolation": label_interpolation})
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Wrote %s example dataset to %s: %d training and %d test cases",
                dataset, out_dir, len(train_ids), num_test_written)
    return out_dir


def _write_cases(out_dir: Path, train_ids: list[str], test_ids: list[str], load, train_option: str,
                 test_option: str | list[float], rng: np.random.Generator, metadata: dict, licence_text: str,
                 settings: dict) -> int:
    """Write the cases, dataset.json and LICENSE.md into ``out_dir``; return the number of test cases."""
    for name in _DATASET_FOLDERS:
        (out_dir / name).mkdir()

    # Training cases.
    for case_id in train_ids:
        rotation = Rotation.random(random_state=rng).as_matrix() if train_option == "random" else np.eye(3)
        image, label, affine = load(case_id, rotation)
        _save_nifti(image, affine, out_dir / "imagesTr" / f"{case_id}_0000.nii.gz")
        _save_nifti(label, affine, out_dir / "labelsTr" / f"{case_id}.nii.gz")

    # Held-out cases, possibly several rotated versions of each.
    test_rotations = {}
    num_test_written = 0
    for case_id in test_ids:
        for name, rotation, record in _test_variants(case_id, test_option, rng):
            image, label, affine = load(case_id, rotation)
            _save_nifti(image, affine, out_dir / "imagesTs" / f"{name}_0000.nii.gz")
            _save_nifti(label, affine, out_dir / "labelsTs" / f"{name}.nii.gz")
            if record is not None:
                test_rotations[name] = record
            num_test_written += 1

    # dataset.json and the licence of the source.
    description = dict(metadata)
    description.update({
        "numTraining": len(train_ids),
        "file_ending": ".nii.gz",
        "numTest": num_test_written,
        "gmrseg_example": settings,
    })
    if test_rotations:
        description["test_rotations"] = test_rotations
    save_text_atomic(out_dir / "LICENSE.md", licence_text)
    save_json_atomic(out_dir / "dataset.json", description)
    return num_test_written


def _rotate_loaded(loaded: tuple[np.ndarray, np.ndarray, np.ndarray], rotation: np.ndarray,
                   label_interpolation: str = "nearest") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, label, affine = loaded
    if np.allclose(rotation, np.eye(3)):
        return image, label, affine
    return rotate_case(image, label, affine, rotation, label_interpolation=label_interpolation)
