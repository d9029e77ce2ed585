"""Rotated copies of held-out cases: the test sets of the rotation-robustness benchmark.

Each test set is a folder with ``imagesTs/CASE_XXXX.nii.gz`` and
``labelsTs/CASE.nii.gz`` holding every selected held-out case under one
rotation setting:

- ``upright``: the cases as written by the example data (byte copies);
- ``x015``, ``y015``, ``z015``, ...: each case rotated by one angle about one
  world axis (x, y or z of RAS+), through the centre of the volume;
- ``random``: each case under ``random_per_case`` uniform random 3D rotations
  (case ids ``CASE_r0``, ``CASE_r1``, ...).

Rotation uses :func:`gmrseg.data.example_data.rotate_case`: the image is
resampled with linear and the label with nearest-neighbour interpolation onto
a grid with the source's axes and spacing, enlarged so nothing is cut off,
and the affine keeps the volume centre at its world position. Voxels from
outside the source volume are 0. Rotations by 90 and 180 degrees are exact
voxel permutations up to float rounding.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

from gmrseg.data.dataset import Case
from gmrseg.data.example_data import rotate_case
from gmrseg.errors import InputError
from gmrseg.utils.files import atomic_write_path, save_json_atomic

__all__ = ["AXES", "RotationSetting", "build_rotation_settings", "write_rotated_test_sets"]

logger = logging.getLogger(__name__)

AXES = ("x", "y", "z")


@dataclass(frozen=True)
class RotationSetting:
    """One test set: a rotation applied to every selected held-out case.

    Attributes:
        name: folder and table name (``upright``, ``x015``, ``random``).
        axis: ``"x"``, ``"y"`` or ``"z"`` for a rotation about one axis,
            ``None`` for the upright and the random set.
        angle_deg: rotation angle in degrees (0 for upright, None for random).
    """

    name: str
    axis: str | None
    angle_deg: float | None

    @property
    def is_random(self) -> bool:
        """True for the set of uniform random 3D rotations."""
        return self.angle_deg is None

    def to_dict(self) -> dict:
        """Return the plain-data form stored in the benchmark's results."""
        return {"name": self.name, "axis": self.axis, "angle_deg": self.angle_deg}


def _angle_name(axis: str, angle_deg: float) -> str:
    sign = "m" if angle_deg < 0 else ""
    return f"{axis}{sign}{abs(angle_deg):03g}"


def build_rotation_settings(angles_deg: Sequence[float], *, random_rotations: bool) -> list[RotationSetting]:
    """List the test sets: upright, each nonzero angle about each axis, then random.

    Args:
        angles_deg: rotation angles in degrees; 0 (or any multiple of 360)
            adds nothing beyond the upright set, which is always first.
        random_rotations: add the set of uniform random 3D rotations last.

    Raises:
        InputError: an angle that is not finite, or the same angle twice.
    """
    settings = [RotationSetting("upright", None, 0.0)]
    seen: set[float] = set()
    for angle in angles_deg:
        angle = float(angle)
        if not math.isfinite(angle):
            raise InputError(f"rotation angles must be finite numbers of degrees, got {angle}")
        if angle in seen:
            raise InputError(f"rotation angle {angle:g} is listed twice; give each angle once")
        seen.add(angle)
        if angle % 360.0 == 0.0:
            continue
        settings.extend(RotationSetting(_angle_name(axis, angle), axis, angle) for axis in AXES)
    if random_rotations:
        settings.append(RotationSetting("random", None, None))
    return settings


def _save_like(array: np.ndarray, affine: np.ndarray, source: nib.Nifti1Image, path: Path) -> None:
    """Write ``array`` with ``affine`` as NIfTI, keeping the source's units and codes (atomic)."""
    header = source.header.copy()
    image = nib.Nifti1Image(array, affine, header=header)
    qform_code = int(source.header["qform_code"]) or 1
    sform_code = int(source.header["sform_code"]) or 1
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    image.set_data_dtype(array.dtype)
    # Scaling copied from the source header would distort the resampled values.
    image.header.set_slope_inter(None, None)
    with atomic_write_path(path) as temporary:
        nib.save(image, temporary)


def _rotate_and_write(case: Case, rotation: np.ndarray, case_id: str, out_dir: Path, file_ending: str) -> None:
    """Rotate every channel and the label of ``case`` and write them under ``out_dir``."""
    label_source = nib.load(case.label_path)
    label = np.asarray(label_source.dataobj)
    if not np.issubdtype(label.dtype, np.integer):
        rounded = np.rint(label)
        if not np.allclose(label, rounded):
            raise InputError(f"{case.label_path}: label map has non-integer values; cannot rotate it")
        label = rounded.astype(np.int16)

    for channel, image_path in enumerate(case.image_paths):
        source = nib.load(image_path)
        if len(source.shape) != 3:
            raise InputError(
                f"{image_path}: expected a 3D image (one file per channel), got shape {source.shape}"
            )
        if not np.allclose(source.affine, label_source.affine, atol=1e-4):
            raise InputError(f"{image_path} and {case.label_path} have different affines; cannot rotate the case")
        data = np.asarray(source.dataobj, dtype=np.float32)
        moved_image, moved_label, affine = rotate_case(data, label if channel == 0 else None,
                                                       label_source.affine, rotation)
        _save_like(moved_image, affine, source, out_dir / "imagesTs" / f"{case_id}_{channel:04d}{file_ending}")
        if moved_label is not None:
            _save_like(moved_label.astype(label.dtype), affine, label_source,
                       out_dir / "labelsTs" / f"{case_id}{file_ending}")


def _copy_case(case: Case, out_dir: Path, file_ending: str) -> None:
    for channel, image_path in enumerate(case.image_paths):
        with atomic_write_path(out_dir / "imagesTs" / f"{case.case_id}_{channel:04d}{file_ending}") as temporary:
            shutil.copyfile(image_path, temporary)
    with atomic_write_path(out_dir / "labelsTs" / f"{case.case_id}{file_ending}") as temporary:
        shutil.copyfile(case.label_path, temporary)


def write_rotated_test_sets(
    cases: Sequence[Case],
    settings: Sequence[RotationSetting],
    out_dir: str | Path,
    *,
    file_ending: str = ".nii.gz",
    random_per_case: int = 1,
    seed: int = 0,
) -> dict[str, Path]:
    """Write one folder per rotation setting, each holding every case of ``cases`` rotated.

    Args:
        cases: held-out cases with one 3D file per channel and a label file.
        settings: test sets from :func:`build_rotation_settings`.
        out_dir: parent folder. Set ``NAME`` is written to ``out_dir/NAME``
            with ``imagesTs/``, ``labelsTs/`` and ``rotations.json``, which
            stores the 3x3 rotation matrix (world RAS+ axes) of each written case.
        file_ending: file ending of the dataset (``.nii.gz`` or ``.nii``).
        random_per_case: random rotations per case in the ``random`` set.
        seed: seed of the random rotations.

    Returns:
        Set name to its folder, in the order of ``settings``.

    Raises:
        InputError: no cases, a case without a label, or an invalid argument.
    """
    if not cases:
        raise InputError("no held-out cases to rotate; the dataset needs test cases in imagesTs/ and labelsTs/")
    missing = [case.case_id for case in cases if case.label_path is None]
    if missing:
        raise InputError(f"held-out cases without a label in labelsTs/: {', '.join(missing)}; "
                         "the rotation benchmark needs a reference for every test case")
    if isinstance(random_per_case, bool) or not isinstance(random_per_case, int) or random_per_case < 1:
        raise InputError(f"random rotations per case must be a positive integer, got {random_per_case!r}")
    if file_ending not in (".nii.gz", ".nii"):
        raise InputError(f"rotated test sets are written as NIfTI; file ending must be .nii.gz or .nii, "
                         f"got {file_ending!r}")

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    folders: dict[str, Path] = {}
    for setting in settings:
        folder = out_dir / setting.name
        records: dict[str, dict] = {}
        for case in cases:
            if setting.name == "upright":
                _copy_case(case, folder, file_ending)
                records[case.case_id] = {"source": case.case_id, "matrix": np.eye(3).tolist()}
                continue

            if setting.is_random:
                variants = [(f"{case.case_id}_r{index}", Rotation.random(random_state=rng).as_matrix())
                            for index in range(random_per_case)]
            else:
                variants = [(case.case_id,
                             Rotation.from_euler(setting.axis, setting.angle_deg, degrees=True).as_matrix())]
            for case_id, rotation in variants:
                _rotate_and_write(case, rotation, case_id, folder, file_ending)
                records[case_id] = {"source": case.case_id, "matrix": rotation.tolist()}

        save_json_atomic(folder / "rotations.json", {"setting": setting.to_dict(), "cases": records})
        folders[setting.name] = folder
        logger.info("Wrote test set %s: %d case(s)", setting.name, len(records))
    return folders
