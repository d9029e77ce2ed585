"""Dataset folders, image I/O and input checks (and, in sibling modules, preprocessing and transforms).

Only the light reading and validation API is re-exported here; import heavier
modules such as ``gmrseg.data.transforms`` directly.
"""

from gmrseg.data.dataset import Case, DatasetSpec, find_input_cases, load_dataset
from gmrseg.data.io import (
    ImageGeometry,
    read_dicom_series,
    read_image,
    read_label,
    write_probabilities,
    write_segmentation,
)
from gmrseg.data.validation import Problem, ValidationReport, validate_dataset

__all__ = [
    "Case",
    "DatasetSpec",
    "ImageGeometry",
    "Problem",
    "ValidationReport",
    "find_input_cases",
    "load_dataset",
    "read_dicom_series",
    "read_image",
    "read_label",
    "validate_dataset",
    "write_probabilities",
    "write_segmentation",
]
