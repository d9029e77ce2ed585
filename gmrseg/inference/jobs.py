"""Turn predict's ``--input`` and ``--output`` into a list of cases with their output paths.

Input forms:

- one NIfTI file (``.nii`` or ``.nii.gz``);
- a folder of NIfTI files, either with nnU-Net channel naming
  (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...) or one file per case;
- a DICOM series folder (no image files in it, DICOM files that GDCM recognises);
- other formats that SimpleITK reads (``.mha``, ``.nrrd``), one file per case.

Output forms: a file path ending in ``.nii`` or ``.nii.gz`` for one case (the
ending is kept as written), or a folder that receives ``CASE`` plus the input's
NIfTI ending (``.nii.gz`` for DICOM and other formats). Every output path is checked against every
input path before any work starts, so an input is never overwritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gmrseg.errors import InputError

__all__ = ["PredictionJob", "nifti_ending", "plan_jobs", "probabilities_path"]

logger = logging.getLogger(__name__)

_NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class PredictionJob:
    """One case to segment.

    Attributes:
        case_id: case name used for the output file and in messages.
        image_paths: NIfTI files, one per channel (empty for DICOM).
        dicom_folder: DICOM series folder, or None for NIfTI input.
        output: segmentation path.
        probabilities: probabilities path, or None when not requested.
    """

    case_id: str
    image_paths: tuple[Path, ...]
    dicom_folder: Path | None
    output: Path
    probabilities: Path | None

    @property
    def source(self) -> str:
        """Input path(s) as text, for messages."""
        if self.dicom_folder is not None:
            return str(self.dicom_folder)
        return ", ".join(str(path) for path in self.image_paths)

    @property
    def outputs(self) -> list[Path]:
        """Every file this job writes."""
        return [self.output] + ([self.probabilities] if self.probabilities is not None else [])


def nifti_ending(path: str | Path) -> str | None:
    """Return ``".nii.gz"`` or ``".nii"`` when ``path`` ends with it (any case), else None."""
    name = Path(path).name.lower()
    for ending in _NIFTI_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return ending
    return None


def probabilities_path(output: Path) -> Path:
    """Return the probabilities path next to a segmentation path: ``CASE.nii.gz`` -> ``CASE_probabilities.nii.gz``."""
    ending = nifti_ending(output) or ""
    stem = output.name[: len(output.name) - len(ending)]
    return output.with_name(f"{stem}_probabilities{output.name[len(stem):]}")


def _input_cases(
    input_path: Path, file_ending: str | None, num_channels: int
) -> list[tuple[str, tuple[Path, ...], Path | None]]:
    """Return ``(case_id, image paths, DICOM folder)`` for every case in the input."""
    from gmrseg.data.dataset import find_input_cases

    cases = find_input_cases(input_path, file_ending=file_ending, num_channels=num_channels)
    if not cases:
        raise InputError(f"no input cases found in {input_path}")

    found = []
    for case in cases:
        paths = tuple(Path(path) for path in case.image_paths)
        if len(paths) == 1 and paths[0].is_dir():
            found.append((case.case_id, (), paths[0]))
        else:
            found.append((case.case_id, paths, None))
    return found


def plan_jobs(
    input_path: str | Path,
    output_path: str | Path,
    *,
    num_channels: int = 1,
    file_ending: str | None = None,
    save_probabilities: bool = False,
) -> list[PredictionJob]:
    """List the cases of ``input_path`` with the file(s) each one writes under ``output_path``.

    Args:
        input_path: NIfTI file, folder of NIfTI files, or DICOM series folder.
        output_path: NIfTI file (one case) or folder.
        num_channels: channels the model expects; a folder with channel
            naming must provide ``CASE_0000`` .. ``CASE_{num_channels - 1:04d}``.
        file_ending: file ending of the training data, used to pick files in a folder.
        save_probabilities: also plan a ``CASE_probabilities`` file per case.

    Returns:
        Jobs sorted by case id.

    Raises:
        FileNotFoundError: when the input does not exist.
        InputError: when the output form does not fit the input, or an output
            path equals an input path.
    """
    input_path = Path(input_path)
    output_path = Path(output_path)
    cases = sorted(_input_cases(input_path, file_ending, num_channels), key=lambda case: case[0])

    # A NIfTI ending means one output file; anything else is a folder.
    output_ending = nifti_ending(output_path)
    if output_ending is not None and not output_path.is_dir():
        if len(cases) != 1:
            raise InputError(
                f"output {output_path} is a file but input {input_path} contains {len(cases)} cases; pass an output folder"
            )
        case_id, image_paths, dicom_folder = cases[0]
        outputs = {case_id: output_path}
    else:
        if output_path.suffix and not output_path.exists():
            raise InputError(
                f"output {output_path} has the ending {output_path.suffix!r}; "
                "write a NIfTI file (.nii or .nii.gz) or name an output folder without an ending"
            )
        if output_path.exists() and not output_path.is_dir():
            raise InputError(f"output {output_path} is an existing file but a folder is needed for the input {input_path}")
        if input_path.is_dir() and output_path.resolve() == input_path.resolve():
            raise InputError(
                f"output folder {output_path} is the input folder, where the next run would read the "
                "segmentations as scans. Choose another output folder"
            )
        outputs = {}
        for case_id, image_paths, dicom_folder in cases:
            # NIfTI inputs keep their ending; DICOM and other ITK formats become .nii.gz.
            ending = (nifti_ending(image_paths[0]) if image_paths else None) or ".nii.gz"
            outputs[case_id] = output_path / f"{case_id}{ending}"

    jobs = []
    for case_id, image_paths, dicom_folder in cases:
        output = outputs[case_id]
        jobs.append(
            PredictionJob(
                case_id=case_id,
                image_paths=image_paths,
                dicom_folder=dicom_folder,
                output=output,
                probabilities=probabilities_path(output) if save_probabilities else None,
            )
        )
    _reject_outputs_on_inputs(jobs)
    return jobs


def _reject_outputs_on_inputs(jobs: list[PredictionJob]) -> None:
    """Raise when an output path is an input file (or inside a DICOM input folder), or two jobs share an output."""
    inputs = {path.resolve() for job in jobs for path in job.image_paths}
    dicom_folders = [job.dicom_folder.resolve() for job in jobs if job.dicom_folder is not None]
    seen: dict[Path, str] = {}
    for job in jobs:
        for output in job.outputs:
            resolved = output.resolve()
            if resolved in inputs:
                raise InputError(
                    f"output {output} is the input file of case {job.case_id}; gmrseg never overwrites an input, "
                    "choose another output path or folder"
                )
            if any(folder == resolved.parent for folder in dicom_folders):
                raise InputError(
                    f"output {output} would be written inside the DICOM input folder; choose another output path"
                )
            if resolved in seen:
                raise InputError(f"cases {seen[resolved]} and {job.case_id} would both be written to {output}")
            seen[resolved] = job.case_id
