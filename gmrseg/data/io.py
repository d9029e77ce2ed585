"""Read and write images and labels, and every check on a single file or a case's grid.

This module is the one place where gmrseg decides whether an input file is
usable: readability (truncated or corrupt files), dimensionality (3D, trailing
singleton dimensions, real 4D files), non-finite intensities, label values,
and whether channels and labels share one voxel grid. The dataset validator
calls the same ``check_*`` functions, so training, prediction and
``gmrseg validate`` apply identical rules.

NIfTI-1 and NIfTI-2 (``.nii``, ``.nii.gz``) are read with nibabel. A gzip
stream is decompressed in full before parsing, so a truncated or corrupt
``.nii.gz`` raises an error (SimpleITK 2.x fills the missing part of a
truncated gzip with zeros without any error, so it is never used for NIfTI).
DICOM series and other ITK formats (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``)
are read with SimpleITK and converted from ITK's LPS convention to a RAS+
affine.

Affines follow nibabel: voxel index (i, j, k) to RAS+ world coordinates in mm.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from gmrseg.errors import InputError
from gmrseg.utils.files import atomic_write_path

__all__ = [
    "GRID_TOLERANCE",
    "NIFTI_ENDINGS",
    "ITK_ENDINGS",
    "ImageGeometry",
    "LoadedVolume",
    "capture_warnings",
    "check_channel_layout",
    "check_finite",
    "check_label_values",
    "check_not_constant",
    "check_same_grid",
    "compare_grids",
    "file_ending",
    "is_dicom_folder",
    "load_volume",
    "read_dicom_series",
    "read_image",
    "read_label",
    "write_probabilities",
    "write_segmentation",
]

logger = logging.getLogger(__name__)

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".mha", ".mhd", ".nrrd", ".nhdr")

# Relative tolerance when comparing two grids. Headers written by different
# tools for the same grid differ by float32 rounding (about 1e-7 relative);
# 1e-4 accepts that and still catches a 0.05 mm shift on a 400 mm origin.
GRID_TOLERANCE = 1e-4

# ITK (LPS+) to nibabel (RAS+) world coordinates: negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_NIFTI1_HEADER_SIZE = 348
_NIFTI2_HEADER_SIZE = 540
_GZIP_MAGIC = b"\x1f\x8b"

# Metadata key that ITK's series reader sets when slice positions are not evenly spaced.
_UNEVEN_SLICES_KEY = "ITK_non_uniform_sampling_deviation"

_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError, HeaderDataError, MemoryError)

_warning_sinks: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("gmrseg_io_warnings", default=None)


@dataclass
class ImageGeometry:
    """Voxel grid of an image as read from disk, with what is needed to write on it again.

    Attributes:
        affine: 4x4 float64 array mapping voxel indices (i, j, k) to RAS+ world
            coordinates in mm, chosen by nibabel's rule (sform when its code is
            above 0, else qform, else the pixdim diagonal).
        shape: spatial shape (X, Y, Z) in voxels.
        spacing: voxel size along each array axis in mm (norms of the affine's
            columns, which equal pixdim for a valid header).
        qform: 4x4 qform affine stored in the header (also when its code is 0).
        qform_code: NIfTI qform code (0 unknown, 1 scanner, 2 aligned, 3 Talairach, 4 MNI).
        sform: 4x4 sform affine stored in the header (also when its code is 0).
        sform_code: NIfTI sform code.
        header: nibabel header of the first file (``Nifti1Header`` or
            ``Nifti2Header``); for images read with SimpleITK a new NIfTI-1
            header with qform and sform code 1. Writers copy it so that
            outputs keep the NIfTI version and units. None is allowed when an
            ImageGeometry is built by hand; writers then start a new header.
        paths: source files (one per channel; for DICOM the folder then its files).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    qform: np.ndarray
    qform_code: int
    sform: np.ndarray
    sform_code: int
    header: Any = None
    paths: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def origin(self) -> tuple[float, float, float]:
        """World coordinates (RAS+, mm) of the centre of voxel (0, 0, 0)."""
        return tuple(float(value) for value in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS+ directions of the array axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def orientation(self) -> str:
        """Axis codes such as "RAS", "LPS" or "PSR" (the closest world axis of each array axis)."""
        return "".join(nib.aff2axcodes(self.affine))

    def describe(self) -> str:
        """Return a one-line summary: shape, spacing, orientation and origin."""
        return (f"shape {self.shape}, spacing {_format_vector(self.spacing)} mm, orientation {self.orientation}, "
                f"origin {_format_vector(self.origin)} mm")


@dataclass
class LoadedVolume:
    """One file's voxels and grid, after the readability and dimensionality checks.

    Attributes:
        data: voxel values with scl_slope/scl_inter applied, shape (X, Y, Z) or
            (X, Y, Z, C) for a real 4D file. Integer files without scaling keep
            their stored integer dtype; everything else is floating point.
        geometry: the file's grid.
    """

    data: np.ndarray
    geometry: ImageGeometry


# Warnings -------------------------------------------------------------------------------------


@contextlib.contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Collect the warnings this module emits inside the ``with`` block.

    Warnings are still logged; the yielded list also receives each message,
    so a caller such as the dataset validator can report them per file.
    """
    messages: list[str] = []
    token = _warning_sinks.set(messages)
    try:
        yield messages
    finally:
        _warning_sinks.reset(token)


def _warn(message: str) -> None:
    logger.warning(message)
    sink = _warning_sinks.get()
    if sink is not None:
        sink.append(message)


# Small helpers ----------------------------------------------------------------------------------


def _format_vector(values: Iterable[float], digits: int = 4) -> str:
    return "(" + ", ".join(f"{float(value):.{digits}g}" for value in values) + ")"


def _format_matrix(matrix: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{value:.6g}" for value in row) for row in np.asarray(matrix)) + "]"


def file_ending(path: str | os.PathLike) -> str:
    """Return the image ending of ``path`` (``.nii.gz``, ``.nii``, ``.mha``, ...) or its last suffix.

    The comparison ignores case, and ``.nii.gz`` is recognised as one ending.
    """
    name = Path(path).name.lower()
    for ending in NIFTI_ENDINGS + ITK_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(path).suffix.lower()


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Return True when ``path`` is a folder that contains at least one DICOM series readable by SimpleITK."""
    path = Path(path)
    if not path.is_dir():
        return False
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _geometry_from_nifti_header(header, shape: tuple[int, ...], paths: tuple[Path, ...]) -> ImageGeometry:
    """Build an ImageGeometry from a NIfTI header, choosing the affine as nibabel does."""
    qform, qform_code = header.get_qform(coded=True)
    sform, sform_code = header.get_sform(coded=True)
    qform_code = int(qform_code)
    sform_code = int(sform_code)

    # get_qform/get_sform return None when the code is 0; keep the stored values anyway.
    qform_stored = header.get_qform()
    sform_stored = header.get_sform()
    affine = header.get_best_affine().astype(np.float64)
    name = paths[0].name if paths else "image"

    if qform_code > 0 and sform_code > 0 and not np.allclose(qform, sform, rtol=GRID_TOLERANCE, atol=GRID_TOLERANCE):
        logger.info("%s: qform (code %d) and sform (code %d) differ; using the sform as nibabel does. "
                    "qform %s, sform %s", name, qform_code, sform_code, _format_matrix(qform), _format_matrix(sform))
    if qform_code == 0 and sform_code == 0:
        _warn(f"{paths[0] if paths else 'image'}: qform and sform codes are both 0, so the header has no "
              f"world coordinates; using the voxel sizes only ({_format_vector(header.get_zooms()[:3])} mm). "
              f"Outputs keep this header, but orientation-dependent steps assume RAS.")

    return _make_geometry(affine, shape, qform_stored, qform_code, sform_stored, sform_code, header, paths)


def _make_geometry(affine: np.ndarray, shape: Sequence[int], qform: np.ndarray, qform_code: int, sform: np.ndarray,
                   sform_code: int, header, paths: tuple[Path, ...]) -> ImageGeometry:
    affine = np.asarray(affine, dtype=np.float64)
    where = paths[0] if paths else "image"
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{where}: the affine is not a finite 4x4 matrix: {_format_matrix(affine)}. "
                         f"Fix the file's qform/sform (for example with nibabel or fslorient).")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{where}: the affine is singular (voxel size {_format_vector(spacing)} mm): "
                         f"{_format_matrix(affine)}. Fix the file's pixdim and qform/sform.")
    return ImageGeometry(
        affine=affine,
        shape=tuple(int(size) for size in shape[:3]),
        spacing=tuple(float(value) for value in spacing),
        qform=np.asarray(qform, dtype=np.float64),
        qform_code=int(qform_code),
        sform=np.asarray(sform, dtype=np.float64),
        sform_code=int(sform_code),
        header=header,
        paths=tuple(paths),
    )


# Reading ----------------------------------------------------------------------------------------


def _parse_nifti_bytes(raw: bytes, path: Path):
    """Parse an uncompressed NIfTI-1 or NIfTI-2 byte string into a nibabel image."""
    if len(raw) < _NIFTI1_HEADER_SIZE:
        raise InputError(f"{path}: not a NIfTI file or truncated: only {len(raw)} bytes, a NIfTI header needs "
                         f"{_NIFTI1_HEADER_SIZE}. Re-export or re-download the file.")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if _NIFTI1_HEADER_SIZE in sizes:
        image_class = nib.Nifti1Image
    elif _NIFTI2_HEADER_SIZE in sizes:
        image_class = nib.Nifti2Image
    else:
        raise InputError(f"{path}: not a NIfTI-1 or NIfTI-2 file (header size field is not 348 or 540). "
                         f"Convert it to NIfTI, or use an ending SimpleITK reads ({', '.join(ITK_ENDINGS)}).")
    return image_class.from_bytes(raw)


def _load_nifti(path: Path) -> tuple[np.ndarray, Any]:
    """Read a whole NIfTI file; return (scaled data, header). Every decoding failure is an InputError."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == _GZIP_MAGIC
        if compressed:
            # Read the whole stream: gzip checks the length and CRC at the end, so a truncated
            # or corrupt file fails here instead of yielding zeros.
            with gzip.open(path, "rb") as handle:
                image = _parse_nifti_bytes(handle.read(), path)
        elif file_ending(path) == ".nii":
            # nibabel raises when fewer bytes than the header promises are present.
            image = nib.load(str(path), mmap=False)
            if not isinstance(image, nib.Nifti1Image):
                raise InputError(f"{path}: not a NIfTI-1 or NIfTI-2 file ({type(image).__name__}).")
        else:
            image = _parse_nifti_bytes(path.read_bytes(), path)
        data = np.asanyarray(image.dataobj)
    except InputError:
        raise
    except _READ_ERRORS as error:
        raise InputError(f"{path}: unreadable or truncated NIfTI file ({type(error).__name__}: {error}). "
                         f"Re-export or re-download the file; gmrseg does not fill missing voxels.") from error
    return data, image.header


def _read_series(sitk, path: Path, file_names):
    """Read DICOM slices as one volume; report uneven slice spacing through ``logging``, not ITK's stderr."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(file_names)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)

    # ITK stacks the slices at even spacing and sets this key when their positions disagree.
    if image.HasMetaDataKey(_UNEVEN_SLICES_KEY):
        logger.warning("%s: slice positions are unevenly spaced, or slices are missing. The volume is read with "
                       "even spacing, so anatomy near a gap is misplaced. Check the series for missing slices.",
                       path)
    return image


def _load_with_simpleitk(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read an ITK-format file (or a DICOM folder) and return (data (X, Y, Z[, C]), geometry)."""
    import SimpleITK as sitk

    try:
        if path.is_dir():
            series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not series_ids:
                raise InputError(f"{path}: no DICOM series found in this folder. Pass a folder that contains the "
                                 f"DICOM files of one series, or a NIfTI file.")
            if len(series_ids) > 1:
                counts = {sid: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), sid)) for sid in series_ids}
                listing = ", ".join(f"{sid} ({count} files)" for sid, count in counts.items())
                raise InputError(f"{path}: contains {len(series_ids)} DICOM series: {listing}. "
                                 f"Put each series in its own folder and pass that folder.")
            file_names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_ids[0])
            image = _read_series(sitk, path, file_names)
            paths = (path,) + tuple(Path(name) for name in file_names)
        else:
            image = sitk.ReadImage(str(path))
            paths = (path,)
    except InputError:
        raise
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: unreadable image ({message}). Check that the file is complete and in a "
                         f"format SimpleITK reads.") from error

    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"{path}: {image.GetDimension()}D image; gmrseg reads 3D images with optional channels.")

    # SimpleITK arrays are (Z, Y, X[, components]); gmrseg uses (X, Y, Z[, C]).
    data = sitk.GetArrayFromImage(image)
    data = np.transpose(data, (2, 1, 0, 3)) if data.ndim == 4 else np.transpose(data, (2, 1, 0))

    # ITK: world_LPS = origin + direction @ diag(spacing) @ index.
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    affine = _LPS_TO_RAS @ lps

    header = nib.Nifti1Header()
    header.set_data_shape(data.shape[:3])
    header.set_xyzt_units("mm")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    geometry = _make_geometry(affine, data.shape, header.get_qform(), 1, header.get_sform(), 1, header, paths)
    return np.ascontiguousarray(data), geometry


def load_volume(path: str | os.PathLike) -> LoadedVolume:
    """Read one image file (or DICOM folder) with the readability and dimensionality checks.

    Trailing singleton dimensions beyond the third are squeezed with a
    warning, so (X, Y, Z, 1) is a 3D image. A 2D file is read as one slice
    (X, Y, 1) with a warning. A real 4D file is returned as (X, Y, Z, C);
    callers decide whether channels are allowed.

    Args:
        path: ``.nii``/``.nii.gz`` (nibabel), an ITK format (``.mha``, ``.mhd``,
            ``.nrrd``, ``.nhdr``) or a folder with one DICOM series (SimpleITK).

    Returns:
        LoadedVolume with scaled voxel values and the file's geometry.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputError: unreadable, truncated or corrupt file, unsupported ending,
            more than 4 non-singleton dimensions, or an invalid affine.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found.")

    ending = file_ending(path)
    if path.is_dir() or ending in ITK_ENDINGS:
        data, geometry = _load_with_simpleitk(path)
    elif ending in NIFTI_ENDINGS:
        data, header = _load_nifti(path)
        geometry = None
    else:
        raise InputError(f"{path}: unsupported file ending {ending!r}; gmrseg reads "
                         f"{', '.join(NIFTI_ENDINGS + ITK_ENDINGS)} files and DICOM series folders.")

    # Dimensionality: squeeze trailing singleton dimensions; a 2D image becomes one slice.
    original_shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 5 and data.shape[3] == 1:
        # NIfTI stores vector components in the fifth dimension with a singleton time axis.
        data = data[:, :, :, 0, :]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
        _warn(f"{path}: 2D image of shape {original_shape}; read as a single slice {data.shape}.")
    elif data.shape != original_shape:
        _warn(f"{path}: shape {original_shape} has trailing singleton dimensions; read as {data.shape}.")
    if data.ndim > 4:
        raise InputError(f"{path}: {data.ndim}D data of shape {original_shape}; gmrseg reads 3D images or 4D "
                         f"images whose fourth dimension is the channel.")
    if data.ndim < 2 or min(data.shape[:3]) < 1:
        raise InputError(f"{path}: empty or 1D image of shape {original_shape}.")

    if geometry is None:
        geometry = _geometry_from_nifti_header(header, data.shape, (path,))
    return LoadedVolume(data=data, geometry=geometry)


# Checks shared by the readers and the dataset validator -----------------------------------------


def compare_grids(reference: ImageGeometry, other: ImageGeometry, tolerance: float = GRID_TOLERANCE) -> list[str]:
    """List how two grids differ: shape, spacing, direction or origin, each with both values.

    Shapes must be equal. Spacing is compared relative to the larger voxel
    size, direction cosines absolutely, and origins relative to the larger of
    1 mm and the origins' magnitude; ``tolerance`` (default 1e-4) is the
    relative tolerance for all three.

    Returns:
        An empty list when the grids match within the tolerance.
    """
    differences = []
    if tuple(reference.shape) != tuple(other.shape):
        differences.append(f"shape {tuple(reference.shape)} vs {tuple(other.shape)}")

    spacing_a = np.asarray(reference.spacing)
    spacing_b = np.asarray(other.spacing)
    if np.max(np.abs(spacing_a - spacing_b)) > tolerance * max(spacing_a.max(), spacing_b.max()):
        differences.append(f"spacing {_format_vector(spacing_a, 6)} vs {_format_vector(spacing_b, 6)} mm")

    if np.max(np.abs(reference.direction - other.direction)) > tolerance:
        differences.append(f"direction {_format_matrix(reference.direction)} vs {_format_matrix(other.direction)} "
                           f"({reference.orientation} vs {other.orientation})")

    origin_a = np.asarray(reference.origin)
    origin_b = np.asarray(other.origin)
    scale = max(1.0, np.abs(origin_a).max(), np.abs(origin_b).max())
    if np.max(np.abs(origin_a - origin_b)) > tolerance * scale:
        differences.append(f"origin {_format_vector(origin_a, 7)} vs {_format_vector(origin_b, 7)} mm")
    return differences


def check_same_grid(reference: ImageGeometry, other: ImageGeometry, *, what: str = "image",
                    tolerance: float = GRID_TOLERANCE) -> None:
    """Raise an InputError naming both files and both values when two grids differ.

    Args:
        reference: grid of the first image (first channel).
        other: grid to compare with it (another channel, or a label).
        what: word used in the message for ``other`` ("channel", "label").
        tolerance: relative tolerance, see :func:`compare_grids`.
    """
    differences = compare_grids(reference, other, tolerance)
    if not differences:
        return
    reference_path = reference.paths[0] if reference.paths else "reference image"
    other_path = other.paths[0] if other.paths else what
    raise InputError(f"{other_path}: {what} grid does not match {reference_path} (image vs {what}: "
                     f"{'; '.join(differences)}). "
                     f"Each {what} must be on the same voxel grid as the image; resample it onto the image "
                     f"(nearest-neighbour for labels) or fix its header.")


def check_finite(data: np.ndarray, path: str | os.PathLike, *, nonfinite: str = "error") -> np.ndarray:
    """Check for NaN or Inf voxels; raise, or warn and replace them with 0.

    Args:
        data: voxel values (any shape).
        path: file the values came from, for the message.
        nonfinite: "error" raises an InputError; "warn" logs a warning and
            returns a copy with NaN and Inf replaced by 0.

    Returns:
        ``data`` unchanged when every voxel is finite (or the array is
        integer), else the repaired copy in "warn" mode.
    """
    if nonfinite not in ("error", "warn"):
        raise ValueError(f"nonfinite must be 'error' or 'warn', got {nonfinite!r}")
    if not np.issubdtype(data.dtype, np.floating):
        return data

    finite = np.isfinite(data)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == 0:
        return data

    nan_count = int(np.count_nonzero(np.isnan(data)))
    detail = f"{bad} non-finite voxels ({nan_count} NaN, {bad - nan_count} Inf) of {data.size}"
    if nonfinite == "error":
        raise InputError(f"{path}: {detail}. Fix the file (set those voxels to a finite value). From Python, "
                         "read_image(..., nonfinite='warn') replaces them with 0.")
    _warn(f"{path}: {detail}; replaced with 0.")
    return np.where(finite, data, 0).astype(data.dtype, copy=False)


def check_not_constant(channel: np.ndarray, path: str | os.PathLike) -> None:
    """Warn, naming the file, when every voxel of ``channel`` has one value."""
    if channel.size and channel.min() == channel.max():
        _warn(f"{path}: constant image (every voxel is {float(channel.flat[0]):g}); it carries no information "
              f"and normalization leaves it at 0.")


def check_channel_layout(volume: LoadedVolume, path: str | os.PathLike, *, num_files: int,
                         num_channels: int | None) -> None:
    """Check one file's dimensionality against how the case stores its channels.

    Args:
        volume: the file as returned by :func:`load_volume`.
        path: the file, for the message.
        num_files: number of files of the case; with more than one, each file
            is one channel and must be 3D.
        num_channels: channels expected for the case. None accepts any number
            of 3D files but treats a single 4D file as an error, because
            multi-channel input must be requested explicitly.

    Raises:
        InputError: a 4D file where a 3D file is expected, or a single file
            whose channel count differs from ``num_channels``. gmrseg never
            averages the volumes of a 4D file or picks one of them.
    """
    found = volume.data.shape[3] if volume.data.ndim == 4 else 1
    if num_files > 1 and volume.data.ndim == 4:
        raise InputError(f"{path}: 4D file of shape {volume.data.shape} where a 3D file is expected (one file per "
                         f"channel). Split it into 3D files, one per channel.")
    if num_files > 1 or found == (num_channels or 1):
        return
    if found > 1:
        expected = "a 3D image is" if (num_channels or 1) == 1 else f"{num_channels} channels are"
        hint = (" A 4D file is read as channels only where the model or dataset declares several channels."
                if num_channels is None else "")
        raise InputError(f"{path}: 4D image with {found} volumes (shape {volume.data.shape}) where {expected} "
                         f"expected. gmrseg does not average or pick volumes: extract the volume you need into "
                         f"a 3D file, or, if the volumes are channels (modalities), split them into CASE_0000, "
                         f"CASE_0001, ... files and declare each in dataset.json's channel_names.{hint}")
    raise InputError(f"{path}: 3D image with one channel, but {num_channels} channels are expected. Pass one file "
                     f"per channel (CASE_0000, CASE_0001, ...) or a 4D file whose last dimension holds the channels.")


def _declared_values(label_values: Mapping[str, int] | Iterable[int] | None) -> set[int] | None:
    if label_values is None:
        return None
    values = label_values.values() if isinstance(label_values, Mapping) else label_values
    return {int(value) for value in values}


def check_label_values(data: np.ndarray, path: str | os.PathLike,
                       label_values: Mapping[str, int] | Iterable[int] | None = None) -> np.ndarray:
    """Check that a label array contains only whole numbers that are declared; return it as int16.

    Floating-point labels are accepted only when every voxel is exactly an
    integer (0.0, 1.0, ...). A value such as 0.99997 (left by linear
    interpolation) is an error: truncating it would silently turn
    foreground into background.

    Args:
        data: label voxels, any numeric dtype.
        path: label file, for the message.
        label_values: allowed values (a dataset's ``{name: value}`` map or an
            iterable of ints); None skips that check.

    Returns:
        The labels as an int16 array of the same shape.

    Raises:
        InputError: NaN/Inf, non-integer values, values outside int16, or
            values that are not declared.
    """
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            raise InputError(f"{path}: label file has {bad} NaN or Inf voxels; labels must be whole numbers.")
        residue = data != np.round(data)
        count = int(np.count_nonzero(residue))
        if count:
            examples = ", ".join(f"{value:.6g}" for value in np.unique(data[residue])[:5])
            raise InputError(f"{path}: {count} label voxels are not whole numbers (for example {examples}). "
                             f"Labels were probably resampled with linear interpolation; resample them with "
                             f"nearest-neighbour interpolation. gmrseg does not round or truncate labels.")
    elif not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        raise InputError(f"{path}: label data type {data.dtype} is not numeric.")

    values = np.unique(data)
    info = np.iinfo(np.int16)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise InputError(f"{path}: label values must lie in [{info.min}, {info.max}]; "
                         f"found {values.min():g} to {values.max():g}.")
    values = values.astype(np.int64)

    declared = _declared_values(label_values)
    if declared is not None:
        undeclared = sorted(set(values.tolist()) - declared)
        if undeclared:
            counts = {value: int(np.count_nonzero(data == value)) for value in undeclared[:10]}
            listing = ", ".join(f"{value} ({count} voxels)" for value, count in counts.items())
            more = f" and {len(undeclared) - 10} more" if len(undeclared) > 10 else ""
            hint = "Declare them in dataset.json 'labels' or fix the label file."
            if set(values.tolist()) <= {0, 255} and 255 not in declared:
                hint = ("The file looks like a 0/255 mask; remap 255 to the declared foreground value "
                        "(for example 1) before use.")
            raise InputError(f"{path}: label values not declared in dataset.json: {listing}{more}; "
                             f"declared {sorted(declared)}. {hint}")

    return data.astype(np.int16, copy=False)


# Public readers ---------------------------------------------------------------------------------


def read_image(paths: str | os.PathLike | Sequence[str | os.PathLike], *, nonfinite: str = "error",
               num_channels: int | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """Read one image as float32 channels ``(C, X, Y, Z)`` with every file check applied.

    Args:
        paths: one file, one 4D file whose last dimension contains the channels,
            a list with one 3D file per channel (all on the same grid), or a
            folder holding one DICOM series.
        nonfinite: "error" (default) rejects NaN/Inf voxels; "warn" replaces
            them with 0 and logs a warning naming the file and the count.
        num_channels: expected number of channels. None accepts a list of
            any number of 3D files but rejects a single 4D file, so a
            multi-volume file is read as channels only when the caller asks
            for them. A real 4D file where one channel is expected is an
            error: gmrseg never averages volumes or picks one.

    Returns:
        (array, geometry): float32 array (C, X, Y, Z) with scl_slope/scl_inter
        applied, and the grid of the first file.

    Raises:
        FileNotFoundError: a file does not exist.
        InputError: unreadable file, wrong dimensionality, channels on
            different grids, NaN/Inf in "error" mode, or a channel count that
            differs from ``num_channels``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(path) for path in paths]
    if not paths:
        raise InputError("read_image needs at least one path, got an empty list.")
    if num_channels is not None and num_channels < 1:
        raise ValueError(f"num_channels must be at least 1, got {num_channels}")

    if num_channels is not None and len(paths) > 1 and len(paths) != num_channels:
        raise InputError(f"{', '.join(str(path) for path in paths)}: {len(paths)} channel files given, "
                         f"{num_channels} expected.")

    # Read every file; a list of files means one 3D file per channel.
    channels: list[np.ndarray] = []
    geometry: ImageGeometry | None = None
    for path in paths:
        volume = load_volume(path)
        check_channel_layout(volume, path, num_files=len(paths), num_channels=num_channels)
        if geometry is None:
            geometry = volume.geometry
        else:
            check_same_grid(geometry, volume.geometry, what="channel")
        data = volume.data if volume.data.ndim == 4 else volume.data[..., np.newaxis]
        for index in range(data.shape[3]):
            channels.append(data[..., index])

    # Intensities: non-finite voxels, constant channels.
    array = np.empty((len(channels),) + tuple(geometry.shape), dtype=np.float32)
    for index, channel in enumerate(channels):
        source = paths[index] if len(paths) > 1 else paths[0]
        where = source if len(channels) == len(paths) else f"{source} (channel {index})"
        channel = check_finite(channel.astype(np.float32, copy=False), where, nonfinite=nonfinite)
        check_not_constant(channel, where)
        array[index] = channel

    if len(paths) > 1:
        geometry.paths = tuple(paths)
    return array, geometry


def read_label(path: str | os.PathLike, geometry: ImageGeometry | None = None,
               label_values: Mapping[str, int] | Iterable[int] | None = None) -> np.ndarray:
    """Read a label map as int16 ``(X, Y, Z)``, checked against the image grid and the declared values.

    Args:
        path: label file (3D; a trailing singleton dimension is squeezed).
        geometry: grid of the matching image; when given, shape must be equal
            and spacing, direction and origin equal within :data:`GRID_TOLERANCE`.
        label_values: declared values (``{name: value}`` or an iterable); when
            given, any other value is an error listing the values found.

    Returns:
        int16 array (X, Y, Z).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputError: unreadable file, 4D labels, non-integer or undeclared
            values, or a grid that differs from ``geometry``.
    """
    path = Path(path)
    volume = load_volume(path)
    if volume.data.ndim != 3:
        raise InputError(f"{path}: label file is 4D with shape {volume.data.shape}; labels must be one 3D map "
                         f"of integer class values.")
    if geometry is not None:
        check_same_grid(geometry, volume.geometry, what="label")
    return check_label_values(volume.data, path, label_values)


def read_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, ImageGeometry]:
    """Read the single DICOM series in ``folder`` with SimpleITK as float32 ``(1, X, Y, Z)``.

    Rescale slope and intercept are applied by SimpleITK, and the LPS
    direction and origin are converted to a RAS+ affine. The geometry's
    header is a fresh NIfTI-1 header with qform and sform code 1 (scanner).

    Raises:
        InputError: no series, several series, unreadable files, or NaN/Inf.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; pass the folder that contains one DICOM series.")
    return read_image(folder, num_channels=1)


# Writers ----------------------------------------------------------------------------------------


def _check_output_path(path: Path, geometry: ImageGeometry, overwrite: bool) -> None:
    ending = file_ending(path)
    if ending not in NIFTI_ENDINGS:
        raise InputError(f"{path}: outputs are written as NIfTI; use a .nii.gz or .nii ending (got {ending!r}).")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name ending in .nii.gz or .nii.")

    # Never write over an input, even with overwrite=True.
    target = path.resolve()
    for source in geometry.paths:
        source = Path(source)
        same = source.exists() and path.exists() and os.path.samefile(source, path)
        if same or source.resolve() == target:
            raise InputError(f"{path}: output path is the input file {source}; gmrseg never overwrites its "
                             f"inputs. Choose another output path.")

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output already exists; it was kept. Pass overwrite=True (--overwrite) "
                              f"to replace it.")


def _output_header(geometry: ImageGeometry, shape: tuple[int, ...], dtype: np.dtype, intent: str):
    """Header for an output on ``geometry``: same NIfTI version, qform/sform and codes, no scaling."""
    if geometry.header is not None and isinstance(geometry.header, nib.Nifti1Header):
        header = geometry.header.copy()
    else:
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)

    # Keep the stored qform/sform verbatim when they already match; rewrite only what differs.
    if not np.array_equal(header.get_qform(), geometry.qform):
        header.set_qform(geometry.qform, code=int(geometry.qform_code))
    if not np.array_equal(header.get_sform(), geometry.sform):
        header.set_sform(geometry.sform, code=int(geometry.sform_code))
    header["qform_code"] = int(geometry.qform_code)
    header["sform_code"] = int(geometry.sform_code)
    if not np.allclose(header.get_best_affine(), geometry.affine, rtol=GRID_TOLERANCE, atol=GRID_TOLERANCE):
        # The geometry's affine no longer matches its header fields: store the affine in both forms.
        header.set_qform(geometry.affine, code=max(int(geometry.qform_code), 1))
        header.set_sform(geometry.affine, code=max(int(geometry.sform_code), 1))

    # Outputs are stored unscaled, with no display range inherited from the image.
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    header.set_intent(intent)
    header["descrip"] = b"gmrseg"
    return header


def _save_nifti(data: np.ndarray, header, path: Path) -> None:
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    # affine=None keeps the header's qform/sform exactly as prepared.
    image = image_class(data, None, header=header)
    with atomic_write_path(path) as temporary:
        nib.save(image, str(temporary))


def write_segmentation(array: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike, *,
                       overwrite: bool = False) -> Path:
    """Write a label map on the grid ``geometry`` describes, atomically.

    The output has exactly ``geometry``'s shape, affine, qform and sform with
    their codes, and the NIfTI version of the source header. Values are stored
    unscaled as uint8 when they fit in 0..255, else int16 (int32 beyond).
    The ending (``.nii`` or ``.nii.gz``) decides compression.

    Args:
        array: integer labels (X, Y, Z); floats are accepted only when every
            value is a whole number.
        geometry: grid to write on, usually from :func:`read_image`.
        path: output file.
        overwrite: replace an existing output file. An input file listed in
            ``geometry.paths`` is never replaced.

    Returns:
        The output path.

    Raises:
        InputError: wrong shape, non-integer values, bad ending, or ``path``
            is one of the inputs.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3 or tuple(array.shape) != tuple(geometry.shape):
        raise InputError(f"{path}: segmentation shape {array.shape} does not match the image grid "
                         f"{tuple(geometry.shape)}.")
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise InputError(f"{path}: segmentation has non-integer values; pass integer class labels.")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
            or array.dtype == np.bool_):
        raise InputError(f"{path}: segmentation data type {array.dtype} is not numeric.")
    _check_output_path(path, geometry, overwrite)

    # Smallest integer type that can store the values.
    low = int(array.min()) if array.size else 0
    high = int(array.max()) if array.size else 0
    if low >= 0 and high <= 255:
        dtype = np.dtype(np.uint8)
    elif np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
        dtype = np.dtype(np.int16)
    else:
        dtype = np.dtype(np.int32)

    header = _output_header(geometry, tuple(geometry.shape), dtype, "label")
    _save_nifti(array.astype(dtype), header, path)
    return path


def write_probabilities(array: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike, *,
                        overwrite: bool = False) -> Path:
    """Write per-class probabilities ``(C, X, Y, Z)`` as a 4D float32 NIfTI ``(X, Y, Z, C)``, atomically.

    Geometry, header version, path checks and atomicity are as in
    :func:`write_segmentation`.

    Raises:
        InputError: wrong shape, NaN/Inf values, bad ending, or ``path`` is one
            of the inputs.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(geometry.shape):
        raise InputError(f"{path}: probabilities must have shape (C, {', '.join(map(str, geometry.shape))}), "
                         f"got {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{path}: probabilities contain NaN or Inf, so nothing was written.")
    _check_output_path(path, geometry, overwrite)

    data = np.ascontiguousarray(np.moveaxis(array.astype(np.float32, copy=False), 0, -1))
    header = _output_header(geometry, data.shape, np.dtype(np.float32), "vector")
    _save_nifti(data, header, path)
    return path
