"""Reading and writing images and labels: headers, geometry, bad files, output safety."""

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gmrseg.data.io import (
    ImageGeometry,
    capture_warnings,
    compare_grids,
    load_volume,
    read_dicom_series,
    read_image,
    read_label,
    write_probabilities,
    write_segmentation,
)
from gmrseg.errors import InputError

GEOMETRY_DATA = Path("/work/shared/data/geometry")
HEADER_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                 "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "dim")


def save_nifti(path, data, affine=None, *, nifti2=False, qform_code=1, sform_code=1, dtype=None):
    """Write a NIfTI file with explicit qform/sform codes and return its path."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    image = image_class(np.asarray(data), affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    if dtype is not None:
        image.set_data_dtype(dtype)
    nib.save(image, str(path))
    return Path(path)


def oblique_affine(spacing=(0.7, 0.7, 5.0), angle_degrees=30.0, origin=(-20.0, 15.0, 7.5)):
    angle = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def random_volume(shape=(12, 10, 8), seed=0):
    return np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)


def assert_same_header_geometry(reference_path, output_path):
    reference = nib.load(str(reference_path)).header
    output = nib.load(str(output_path)).header
    for key in HEADER_FIELDS:
        if key == "dim":
            assert np.array_equal(reference[key][1:4], output[key][1:4]), key
        elif key == "pixdim":
            assert np.array_equal(reference[key][:4], output[key][:4]), key
        else:
            assert np.array_equal(reference[key], output[key]), key


# Reading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
@pytest.mark.parametrize("nifti2", [False, True])
def test_read_image_nifti_versions(tmp_path, ending, nifti2):
    data = random_volume()
    path = save_nifti(tmp_path / f"image{ending}", data, oblique_affine(), nifti2=nifti2)

    array, geometry = read_image(path)

    assert array.shape == (1,) + data.shape
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array[0], data)
    np.testing.assert_allclose(geometry.affine, oblique_affine(), atol=1e-5)
    np.testing.assert_allclose(geometry.spacing, (0.7, 0.7, 5.0), rtol=1e-6)
    assert isinstance(geometry.header, nib.Nifti2Header if nifti2 else nib.Nifti1Header)
    assert geometry.paths == (path,)


def test_read_image_applies_scaling(tmp_path):
    stored = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(0.5, -10.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, str(path))

    array, _ = read_image(path)

    np.testing.assert_allclose(array[0], stored * 0.5 - 10.0)


def test_trailing_singleton_squeezed_with_warning(tmp_path):
    data = random_volume()[..., np.newaxis]
    path = save_nifti(tmp_path / "singleton.nii.gz", data)

    with capture_warnings() as messages:
        array, geometry = read_image(path)

    assert array.shape == (1, 12, 10, 8)
    assert geometry.shape == (12, 10, 8)
    assert any("singleton" in message and "singleton.nii.gz" in message for message in messages)


def test_4d_file_rejected_for_one_channel(tmp_path):
    path = save_nifti(tmp_path / "four_d.nii.gz", np.stack([random_volume(), random_volume(seed=1)], axis=-1))

    with pytest.raises(InputError, match=r"four_d\.nii\.gz: 4D image with 2 volumes .* where a 3D image is expected"):
        read_image(path, num_channels=1)
    with pytest.raises(InputError, match=r"does not average or pick volumes.*declares several channels"):
        read_image(path)
    with pytest.raises(InputError, match=r"where 3 channels are expected"):
        read_image(path, num_channels=3)


def test_4d_file_read_as_channels(tmp_path):
    first, second = random_volume(), random_volume(seed=1)
    path = save_nifti(tmp_path / "channels.nii.gz", np.stack([first, second], axis=-1))

    array, geometry = read_image(path, num_channels=2)

    assert array.shape == (2, 12, 10, 8)
    np.testing.assert_array_equal(array[1], second)
    assert geometry.shape == (12, 10, 8)


def test_4d_file_in_channel_list_rejected(tmp_path):
    first = save_nifti(tmp_path / "case_0000.nii.gz", random_volume())
    second = save_nifti(tmp_path / "case_0001.nii.gz", np.stack([random_volume()] * 2, axis=-1))

    with pytest.raises(InputError, match=r"case_0001\.nii\.gz: 4D file of shape \(12, 10, 8, 2\) where a 3D file is expected"):
        read_image([first, second])


def test_channels_on_different_grids_rejected(tmp_path):
    first = save_nifti(tmp_path / "case_0000.nii.gz", random_volume())
    shifted = np.eye(4)
    shifted[:3, 3] = (2.0, 0.0, 0.0)
    second = save_nifti(tmp_path / "case_0001.nii.gz", random_volume(), shifted)

    with pytest.raises(InputError) as error:
        read_image([first, second])

    message = str(error.value)
    assert "case_0001.nii.gz" in message
    assert "case_0000.nii.gz" in message
    assert "origin (0, 0, 0) vs (2, 0, 0)" in message


def test_channels_with_different_shapes_rejected(tmp_path):
    first = save_nifti(tmp_path / "case_0000.nii.gz", random_volume((12, 10, 8)))
    second = save_nifti(tmp_path / "case_0001.nii.gz", random_volume((12, 10, 9)))

    with pytest.raises(InputError, match=r"shape \(12, 10, 8\) vs \(12, 10, 9\)"):
        read_image([first, second])


def test_channels_with_float_noise_accepted(tmp_path):
    affine = oblique_affine()
    noisy = affine.copy()
    noisy[:3, :] *= 1.0 + 1e-6
    first = save_nifti(tmp_path / "case_0000.nii.gz", random_volume(), affine)
    second = save_nifti(tmp_path / "case_0001.nii.gz", random_volume(seed=3), noisy)

    array, _ = read_image([first, second])

    assert array.shape == (2, 12, 10, 8)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nonfinite_voxels_error(tmp_path, bad_value):
    data = random_volume()
    data[1, 2, 3] = bad_value
    data[4, 5, 6] = bad_value
    path = save_nifti(tmp_path / "bad values.nii.gz", data)

    with pytest.raises(InputError, match=r"bad values\.nii\.gz: 2 non-finite voxels"):
        read_image(path)


def test_nonfinite_voxels_warn_replaces_with_zero(tmp_path):
    data = random_volume()
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = -np.inf
    path = save_nifti(tmp_path / "nan.nii.gz", data)

    with capture_warnings() as messages:
        array, _ = read_image(path, nonfinite="warn")

    assert np.all(np.isfinite(array))
    assert array[0, 1, 2, 3] == 0
    assert array[0, 0, 0, 0] == 0
    assert any("nan.nii.gz" in message and "2 non-finite" in message for message in messages)


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_image_warns(tmp_path, value):
    path = save_nifti(tmp_path / "flat.nii.gz", np.full((8, 8, 8), value, dtype=np.float32))

    with capture_warnings() as messages:
        array, _ = read_image(path)

    assert np.all(array == value)
    assert any("flat.nii.gz" in message and "constant image" in message for message in messages)


def test_truncated_gzip_rejected(tmp_path):
    path = save_nifti(tmp_path / "full.nii.gz", random_volume((32, 32, 32)))
    content = path.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(content[: len(content) // 2])

    with pytest.raises(InputError, match=r"truncated\.nii\.gz: unreadable or truncated"):
        read_image(truncated)


def test_gzip_missing_trailer_rejected(tmp_path):
    # Only the gzip CRC/length trailer is lost: the voxels decode, the file is still incomplete.
    path = save_nifti(tmp_path / "full.nii.gz", random_volume((16, 16, 16)))
    cut = tmp_path / "no_trailer.nii.gz"
    cut.write_bytes(path.read_bytes()[:-4])

    with pytest.raises(InputError, match=r"no_trailer\.nii\.gz"):
        read_image(cut)


def test_corrupt_gzip_rejected(tmp_path):
    path = save_nifti(tmp_path / "full.nii.gz", random_volume((32, 32, 32)))
    content = bytearray(path.read_bytes())
    for index in range(2000, 2100):
        content[index] ^= 0xFF
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(bytes(content))

    with pytest.raises(InputError, match=r"corrupt\.nii\.gz"):
        read_image(corrupt)


def test_truncated_uncompressed_rejected(tmp_path):
    path = save_nifti(tmp_path / "full.nii", random_volume((16, 16, 16)))
    truncated = tmp_path / "short.nii"
    truncated.write_bytes(path.read_bytes()[:5000])

    with pytest.raises(InputError, match=r"short\.nii: unreadable or truncated"):
        read_image(truncated)


def test_not_nifti_rejected(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image" * 40))

    with pytest.raises(InputError, match=r"notes\.nii\.gz: not a NIfTI-1 or NIfTI-2 file"):
        read_image(path)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        read_image(tmp_path / "absent.nii.gz")


def test_unsupported_ending_rejected(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")

    with pytest.raises(InputError, match=r"unsupported file ending '\.png'"):
        read_image(path)


def test_qform_sform_kept_with_codes(tmp_path, caplog):
    data = random_volume()
    qform = oblique_affine(angle_degrees=10.0)
    sform = oblique_affine(angle_degrees=30.0)
    image = nib.Nifti1Image(data, sform)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    path = tmp_path / "both.nii.gz"
    nib.save(image, str(path))

    with caplog.at_level(logging.INFO, logger="gmrseg.data.io"):
        _, geometry = read_image(path)

    assert geometry.qform_code == 1
    assert geometry.sform_code == 2
    np.testing.assert_allclose(geometry.qform, qform, atol=1e-5)
    np.testing.assert_allclose(geometry.sform, sform, atol=1e-5)
    np.testing.assert_allclose(geometry.affine, sform, atol=1e-5)
    assert "qform (code 1) and sform (code 2) differ" in caplog.text


def test_qform_used_when_sform_code_zero(tmp_path):
    affine = oblique_affine()
    image = nib.Nifti1Image(random_volume(), affine)
    image.set_qform(affine, code=1)
    image.set_sform(np.diag([3.0, 3.0, 3.0, 1.0]), code=0)
    path = tmp_path / "qform_only.nii.gz"
    nib.save(image, str(path))

    _, geometry = read_image(path)

    np.testing.assert_allclose(geometry.affine, affine, atol=1e-5)
    assert geometry.sform_code == 0


def test_singular_affine_rejected(tmp_path):
    image = nib.Nifti1Image(random_volume(), np.eye(4))
    image.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    path = tmp_path / "flat_affine.nii.gz"
    nib.save(image, str(path))

    with pytest.raises(InputError, match=r"flat_affine\.nii\.gz: the affine is singular"):
        read_image(path)


# Labels ---------------------------------------------------------------------------------------


def labels_volume(shape=(12, 10, 8)):
    labels = np.zeros(shape, dtype=np.uint8)
    labels[3:7, 2:6, 2:5] = 1
    labels[7:9, 5:8, 4:6] = 2
    return labels


def test_read_label_integer(tmp_path):
    path = save_nifti(tmp_path / "label.nii.gz", labels_volume())

    labels = read_label(path, label_values={"background": 0, "a": 1, "b": 2})

    assert labels.dtype == np.int16
    np.testing.assert_array_equal(labels, labels_volume())


def test_read_label_exact_float_accepted(tmp_path):
    path = save_nifti(tmp_path / "float_label.nii.gz", labels_volume().astype(np.float32))

    labels = read_label(path, label_values=[0, 1, 2])

    np.testing.assert_array_equal(labels, labels_volume())


def test_read_label_interpolation_residue_rejected(tmp_path):
    data = labels_volume().astype(np.float32)
    data[4, 4, 3] = 0.99997
    path = save_nifti(tmp_path / "residue.nii.gz", data)

    with pytest.raises(InputError) as error:
        read_label(path, label_values=[0, 1, 2])

    message = str(error.value)
    assert "residue.nii.gz" in message
    assert "1 label voxels are not whole numbers" in message
    assert "0.99997" in message
    assert "nearest-neighbour" in message


def test_read_label_undeclared_values_listed(tmp_path):
    data = labels_volume()
    data[0, 0, 0] = 5
    path = save_nifti(tmp_path / "extra.nii.gz", data)

    with pytest.raises(InputError, match=r"extra\.nii\.gz: label values not declared in dataset.json: 5 \(1 voxels\)"):
        read_label(path, label_values={"background": 0, "a": 1, "b": 2})


def test_read_label_255_mask_suggests_remap(tmp_path):
    data = (labels_volume() > 0).astype(np.uint8) * 255
    path = save_nifti(tmp_path / "mask255.nii.gz", data)

    with pytest.raises(InputError, match=r"255.*0/255 mask; remap 255"):
        read_label(path, label_values={"background": 0, "lesion": 1})


def test_read_label_4d_rejected(tmp_path):
    path = save_nifti(tmp_path / "label4d.nii.gz", np.stack([labels_volume()] * 2, axis=-1))

    with pytest.raises(InputError, match=r"label4d\.nii\.gz: label file is 4D"):
        read_label(path)


def test_read_label_off_by_one_shape_rejected(tmp_path):
    image = save_nifti(tmp_path / "case_0000.nii.gz", random_volume((12, 10, 8)))
    label = save_nifti(tmp_path / "case.nii.gz", labels_volume((12, 10, 9)))
    _, geometry = read_image(image)

    with pytest.raises(InputError) as error:
        read_label(label, geometry)

    message = str(error.value)
    assert "case.nii.gz: label grid does not match" in message
    assert "case_0000.nii.gz" in message
    # The values follow the order of the names before them.
    assert "(image vs label: shape (12, 10, 8) vs (12, 10, 9)" in message


@pytest.mark.parametrize("change, expected", [
    ("origin", "origin"),
    ("spacing", "spacing"),
    ("direction", "direction"),
])
def test_read_label_grid_difference_rejected(tmp_path, change, expected):
    affine = oblique_affine()
    other = affine.copy()
    if change == "origin":
        other[:3, 3] += (0.5, 0.0, 0.0)
    elif change == "spacing":
        other[:3, 2] *= 1.2
    else:
        other = oblique_affine(angle_degrees=35.0)
    image = save_nifti(tmp_path / "case_0000.nii.gz", random_volume(), affine)
    label = save_nifti(tmp_path / "case.nii.gz", labels_volume(), other)
    _, geometry = read_image(image)

    with pytest.raises(InputError, match=rf"case\.nii\.gz: label grid does not match .*{expected} "):
        read_label(label, geometry)


def test_read_label_float_noise_accepted(tmp_path):
    affine = oblique_affine()
    noisy = affine + np.random.default_rng(0).uniform(-1e-6, 1e-6, size=(4, 4)) * np.r_[1, 1, 1, 0][:, None]
    image = save_nifti(tmp_path / "case_0000.nii.gz", random_volume(), affine)
    label = save_nifti(tmp_path / "case.nii.gz", labels_volume(), noisy)
    _, geometry = read_image(image)

    labels = read_label(label, geometry, label_values=[0, 1, 2])

    np.testing.assert_array_equal(labels, labels_volume())


def test_compare_grids_lists_each_difference():
    affine = oblique_affine()
    first = ImageGeometry(affine, (4, 4, 4), (0.7, 0.7, 5.0), affine, 1, affine, 1)
    other_affine = oblique_affine(spacing=(0.7, 0.7, 4.0), origin=(0.0, 0.0, 0.0))
    second = ImageGeometry(other_affine, (4, 4, 5), (0.7, 0.7, 4.0), other_affine, 1, other_affine, 1)

    differences = compare_grids(first, second)

    assert [difference.split()[0] for difference in differences] == ["shape", "spacing", "origin"]


# Writing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
@pytest.mark.parametrize("nifti2", [False, True])
def test_write_segmentation_keeps_header(tmp_path, ending, nifti2):
    image_path = save_nifti(tmp_path / f"image{ending}", random_volume(), oblique_affine(), nifti2=nifti2,
                            qform_code=2, sform_code=1)
    _, geometry = read_image(image_path)
    output = tmp_path / f"segmentation{ending}"

    write_segmentation(labels_volume(), geometry, output)

    written = nib.load(str(output))
    assert isinstance(written.header, nib.Nifti2Header if nifti2 else nib.Nifti1Header)
    assert written.header.get_data_dtype() == np.uint8
    assert written.header.get_slope_inter() == (None, None)
    assert (output.read_bytes()[:2] == b"\x1f\x8b") == (ending == ".nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels_volume())
    assert_same_header_geometry(image_path, output)


def test_write_segmentation_scaled_input_has_no_scaling(tmp_path):
    image = nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), np.eye(4))
    image.header.set_slope_inter(2.0, 5.0)
    image_path = tmp_path / "scaled.nii.gz"
    nib.save(image, str(image_path))
    _, geometry = read_image(image_path)
    output = tmp_path / "out.nii.gz"

    write_segmentation(np.ones((6, 5, 4), dtype=np.int64), geometry, output)

    written = nib.load(str(output))
    assert written.header.get_slope_inter() == (None, None)
    assert np.all(np.asarray(written.dataobj) == 1)


def test_write_segmentation_wide_values_use_int16(tmp_path):
    _, geometry = read_image(save_nifti(tmp_path / "image.nii.gz", random_volume()))
    labels = np.zeros((12, 10, 8), dtype=np.int64)
    labels[0, 0, 0] = 300
    output = tmp_path / "wide.nii.gz"

    write_segmentation(labels, geometry, output)

    written = nib.load(str(output))
    assert written.header.get_data_dtype() == np.int16
    assert np.asarray(written.dataobj)[0, 0, 0] == 300


def test_write_segmentation_refuses_input_path(tmp_path):
    image_path = save_nifti(tmp_path / "image.nii.gz", random_volume())
    _, geometry = read_image(image_path)
    before = image_path.read_bytes()

    with pytest.raises(InputError, match="never overwrites its inputs"):
        write_segmentation(labels_volume(), geometry, image_path, overwrite=True)

    assert image_path.read_bytes() == before


def test_write_segmentation_refuses_input_through_symlink(tmp_path):
    image_path = save_nifti(tmp_path / "image.nii.gz", random_volume())
    link = tmp_path / "link.nii.gz"
    link.symlink_to(image_path)
    _, geometry = read_image(image_path)

    with pytest.raises(InputError, match="never overwrites its inputs"):
        write_segmentation(labels_volume(), geometry, link, overwrite=True)


def test_write_segmentation_existing_output_kept(tmp_path):
    _, geometry = read_image(save_nifti(tmp_path / "image.nii.gz", random_volume()))
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"previous result")

    with pytest.raises(FileExistsError, match="out.nii.gz: output already exists"):
        write_segmentation(labels_volume(), geometry, output)
    assert output.read_bytes() == b"previous result"

    write_segmentation(labels_volume(), geometry, output, overwrite=True)
    np.testing.assert_array_equal(np.asarray(nib.load(str(output)).dataobj), labels_volume())


def test_write_segmentation_atomic_on_failure(tmp_path, monkeypatch):
    _, geometry = read_image(save_nifti(tmp_path / "image.nii.gz", random_volume()))
    output = tmp_path / "out.nii.gz"

    def failing_save(image, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_segmentation(labels_volume(), geometry, output)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["image.nii.gz"]


def test_write_segmentation_rejects_bad_arrays(tmp_path):
    _, geometry = read_image(save_nifti(tmp_path / "image.nii.gz", random_volume()))

    with pytest.raises(InputError, match=r"shape \(12, 10, 9\) does not match the image grid \(12, 10, 8\)"):
        write_segmentation(np.zeros((12, 10, 9), dtype=np.uint8), geometry, tmp_path / "a.nii.gz")
    with pytest.raises(InputError, match="non-integer values"):
        write_segmentation(np.full((12, 10, 8), 0.5), geometry, tmp_path / "b.nii.gz")
    with pytest.raises(InputError, match="use a .nii.gz or .nii ending"):
        write_segmentation(labels_volume(), geometry, tmp_path / "c.mha")


def test_paths_with_spaces_and_non_ascii(tmp_path):
    folder = tmp_path / "données patient 1"
    folder.mkdir()
    image_path = save_nifti(folder / "scan ñ 01.nii.gz", random_volume(), oblique_affine())
    _, geometry = read_image(image_path)
    output = tmp_path / "résultats ü" / "segmentation 01.nii.gz"

    write_segmentation(labels_volume(), geometry, output)

    assert output.exists()
    np.testing.assert_array_equal(read_label(output, geometry), labels_volume())


def test_write_probabilities_round_trip(tmp_path):
    image_path = save_nifti(tmp_path / "image.nii.gz", random_volume(), oblique_affine(), qform_code=1, sform_code=2)
    _, geometry = read_image(image_path)
    probabilities = np.random.default_rng(0).dirichlet(np.ones(3), size=(12, 10, 8)).astype(np.float32)
    probabilities = np.moveaxis(probabilities, -1, 0)
    output = tmp_path / "probabilities.nii.gz"

    write_probabilities(probabilities, geometry, output)

    written = nib.load(str(output))
    assert written.shape == (12, 10, 8, 3)
    assert written.header.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.moveaxis(np.asarray(written.dataobj), -1, 0), probabilities)
    assert_same_header_geometry(image_path, output)

    with pytest.raises(InputError, match="NaN or Inf"):
        write_probabilities(np.full((3, 12, 10, 8), np.nan, dtype=np.float32), geometry, tmp_path / "nan.nii.gz")


# Orientation and DICOM ------------------------------------------------------------------------


@pytest.mark.parametrize("axes_affine", [
    np.diag([-1.0, -1.0, 1.0, 1.0]),                                             # LPS
    np.array([[0, 0, -1.0, 0], [-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1]]),  # PIL
    np.diag([4.0, 4.0, 0.6, 1.0]),                                               # anisotropic
])
def test_orientations_round_trip(tmp_path, axes_affine):
    image_path = save_nifti(tmp_path / "image.nii.gz", random_volume(), axes_affine)
    _, geometry = read_image(image_path)
    output = tmp_path / "seg.nii.gz"

    write_segmentation(labels_volume(), geometry, output)

    np.testing.assert_allclose(nib.load(str(output)).affine, axes_affine, atol=1e-6)
    assert_same_header_geometry(image_path, output)


def write_dicom_series(folder, volume, spacing, origin, direction):
    """Write ``volume`` (Z, Y, X int16) as a DICOM series with SimpleITK."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1"
    for index in range(volume.shape[0]):
        slice_image = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        slice_image.SetMetaData("0020|000e", series_uid)
        slice_image.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1.2")
        slice_image.SetMetaData("0008|0060", "CT")
        slice_image.SetMetaData("0020|0032", "\\".join(f"{value:.6f}" for value in position))
        slice_image.SetMetaData("0020|0037", "\\".join(f"{value:.6f}" for value in direction[0::3] + direction[1::3]))
        slice_image.SetMetaData("0020|0013", str(index + 1))
        slice_image.SetMetaData("0028|0030", f"{spacing[1]:.6f}\\{spacing[0]:.6f}")
        slice_image.SetMetaData("0018|0050", f"{spacing[2]:.6f}")
        writer.SetFileName(str(folder / f"slice_{index:03d}.dcm"))
        writer.Execute(slice_image)


def test_read_dicom_series_ras_affine(tmp_path):
    import SimpleITK as sitk

    volume = np.random.default_rng(0).integers(-100, 100, size=(6, 8, 10)).astype(np.int16)  # (Z, Y, X)
    spacing = (0.8, 0.9, 2.5)
    origin = (10.0, -20.0, 30.0)
    angle = np.deg2rad(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    direction = tuple(rotation.flatten())
    folder = tmp_path / "dicom series"
    write_dicom_series(folder, volume, spacing, origin, direction)

    array, geometry = read_dicom_series(folder)

    assert array.shape == (1, 10, 8, 6)
    np.testing.assert_array_equal(array[0], np.transpose(volume, (2, 1, 0)))
    np.testing.assert_allclose(geometry.spacing, spacing, rtol=1e-5)
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag(spacing)
    expected[:3, 3] = (-10.0, 20.0, 30.0)
    np.testing.assert_allclose(geometry.affine, expected, atol=1e-4)

    # The same voxel maps to the same world point in ITK (LPS) and in the RAS affine.
    reference = sitk.ReadImage(sorted(str(path) for path in folder.iterdir()))
    point_lps = np.array(reference.TransformIndexToPhysicalPoint((3, 5, 4)))
    point_ras = geometry.affine @ np.array([3, 5, 4, 1.0])
    np.testing.assert_allclose(point_ras[:3], point_lps * [-1, -1, 1], atol=1e-4)

    output = tmp_path / "dicom seg.nii.gz"
    write_segmentation(np.ones((10, 8, 6), dtype=np.uint8), geometry, output)
    np.testing.assert_allclose(nib.load(str(output)).affine, geometry.affine, atol=1e-5)


def test_read_dicom_empty_folder_rejected(tmp_path):
    with pytest.raises(InputError, match="no DICOM series found"):
        read_dicom_series(tmp_path)


def test_itk_format_matches_nifti(tmp_path):
    import SimpleITK as sitk

    data = random_volume()
    nifti_path = save_nifti(tmp_path / "image.nii.gz", data, oblique_affine())
    image = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))
    affine = oblique_affine()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3] / spacing
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple(lps.flatten()))
    image.SetOrigin(tuple(np.array([-1.0, -1.0, 1.0]) * affine[:3, 3]))
    mha_path = tmp_path / "image.mha"
    sitk.WriteImage(image, str(mha_path))

    nifti_array, nifti_geometry = read_image(nifti_path)
    mha_array, mha_geometry = read_image(mha_path)

    np.testing.assert_array_equal(mha_array, nifti_array)
    assert compare_grids(nifti_geometry, mha_geometry) == []


# Real scans in awkward geometry ---------------------------------------------------------------


REAL_SCANS = [
    ("spinalcord_t2_psr", (60, 55, 52), (1.0, 1.0, 1.0), "PSR", 2, 1),
    ("spinalcord_t2s_aniso", (49, 54, 9), (0.5, 0.5, 7.5), "LAS", 2, 1),
    ("spleen_ct_5mm", (164, 166, 26), (0.794922, 0.794922, 5.0), "RAS", 0, 2),
]


@pytest.mark.skipif(not GEOMETRY_DATA.is_dir(), reason="real geometry scans not available")
@pytest.mark.parametrize("name, shape, spacing, orientation, qform_code, sform_code", REAL_SCANS)
def test_real_scan_round_trip(tmp_path, name, shape, spacing, orientation, qform_code, sform_code):
    image_path = GEOMETRY_DATA / f"{name}.nii.gz"
    label_path = GEOMETRY_DATA / f"{name}_label.nii.gz"

    array, geometry = read_image(image_path)
    labels = read_label(label_path, geometry, label_values=[0, 1])

    assert array.shape == (1,) + shape
    assert geometry.orientation == orientation
    np.testing.assert_allclose(geometry.spacing, spacing, rtol=1e-4)
    assert (geometry.qform_code, geometry.sform_code) == (qform_code, sform_code)
    np.testing.assert_allclose(geometry.affine, nib.load(str(image_path)).affine)
    assert labels.any()

    output = tmp_path / f"{name} prediction.nii.gz"
    write_segmentation(labels, geometry, output)

    assert_same_header_geometry(image_path, output)
    np.testing.assert_array_equal(np.asarray(nib.load(str(output)).dataobj), labels)


def test_load_volume_reports_scaled_dtype(tmp_path):
    path = save_nifti(tmp_path / "ints.nii.gz", labels_volume())

    volume = load_volume(path)

    assert volume.data.dtype == np.uint8
    assert volume.geometry.shape == (12, 10, 8)


def test_truncated_nii_header_rejected(tmp_path):
    path = save_nifti(tmp_path / "full.nii", random_volume())
    truncated = tmp_path / "header_cut.nii"
    truncated.write_bytes(path.read_bytes()[:100])

    with pytest.raises(InputError, match=r"header_cut\.nii"):
        read_image(truncated)


def test_no_world_coordinates_warns(tmp_path):
    image = nib.Nifti1Image(random_volume(), np.diag([2.0, 2.0, 3.0, 1.0]))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    path = tmp_path / "no_codes.nii.gz"
    nib.save(image, str(path))

    with capture_warnings() as messages:
        _, geometry = read_image(path)

    assert (geometry.qform_code, geometry.sform_code) == (0, 0)
    np.testing.assert_allclose(geometry.spacing, (2.0, 2.0, 3.0))
    assert any("no_codes.nii.gz: qform and sform codes are both 0" in message for message in messages)


def test_vector_layout_read_as_channels(tmp_path):
    data = np.stack([random_volume(), random_volume(seed=1), random_volume(seed=2)], axis=-1)[:, :, :, np.newaxis, :]
    path = save_nifti(tmp_path / "vector.nii.gz", data)

    array, _ = read_image(path, num_channels=3)

    assert array.shape == (3, 12, 10, 8)
    np.testing.assert_array_equal(array[2], data[:, :, :, 0, 2])


def test_2d_file_read_as_one_slice(tmp_path):
    path = save_nifti(tmp_path / "slice.nii.gz", random_volume((12, 10, 8))[:, :, 0])

    with capture_warnings() as messages:
        array, geometry = read_image(path)

    assert array.shape == (1, 12, 10, 1)
    assert geometry.shape == (12, 10, 1)
    assert any("2D image" in message for message in messages)


def test_read_label_nan_rejected(tmp_path):
    data = labels_volume().astype(np.float32)
    data[1, 1, 1] = np.nan
    path = save_nifti(tmp_path / "nan_label.nii.gz", data)

    with pytest.raises(InputError, match=r"nan_label\.nii\.gz: label file has 1 NaN or Inf voxels"):
        read_label(path)


def test_read_dicom_several_series_rejected(tmp_path):
    volume = np.zeros((2, 4, 5), dtype=np.int16)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    write_dicom_series(tmp_path / "one", volume, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    for path in (tmp_path / "one").iterdir():
        path.rename(tmp_path / path.name)
    import SimpleITK as sitk

    other = sitk.GetImageFromArray(np.ones((4, 5), dtype=np.int16))
    other.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.9.9")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "other.dcm"))
    writer.Execute(other)

    with pytest.raises(InputError, match=r"contains 2 DICOM series: .*Put each series in its own folder"):
        read_dicom_series(tmp_path)


def test_read_dicom_series_missing_slice_logged(tmp_path, caplog, capfd):
    volume = np.random.default_rng(0).integers(-100, 100, size=(6, 8, 10)).astype(np.int16)
    folder = tmp_path / "series"
    write_dicom_series(folder, volume, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    (folder / "slice_003.dcm").unlink()
    capfd.readouterr()

    with caplog.at_level("WARNING", logger="gmrseg.data.io"):
        array, _ = read_dicom_series(folder)

    assert array.shape[-1] == 5
    assert any("missing slices" in record.getMessage() and str(folder) in record.getMessage() for record in caplog.records)
    assert "Non uniform sampling" not in capfd.readouterr().err


def test_read_dicom_series_even_slices_not_logged(tmp_path, caplog):
    volume = np.random.default_rng(0).integers(-100, 100, size=(4, 8, 10)).astype(np.int16)
    folder = tmp_path / "series"
    write_dicom_series(folder, volume, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))

    with caplog.at_level("WARNING", logger="gmrseg.data.io"):
        read_dicom_series(folder)

    assert not [record for record in caplog.records if "missing slices" in record.getMessage()]
