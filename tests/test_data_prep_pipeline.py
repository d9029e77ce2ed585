"""Preprocessing plan, normalization, on-disk cache and training datasets."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import gmrseg.data.io as data_io
from gmrseg.data.cache import cache_folder, preprocess_to_cache
from gmrseg.data.dataset import load_dataset
from gmrseg.data.preprocessing import (
    PreprocessingPlan,
    normalization_for_channel,
    plan_preprocessing,
    preprocess_case,
)
from gmrseg.data.transforms import build_datasets, build_training_transform, context_size
from gmrseg.errors import InputError


def _write_dataset(root, shapes, spacing, channel="MRI", foreground_radius=3, seed=0):
    """Write an nnU-Net v2 folder with one ball of class 1 and one of class 2 per case."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([*spacing, 1.0])
    for index, shape in enumerate(shapes):
        image = (rng.normal(100.0, 20.0, shape) + 300.0).astype(np.float32)
        grid = np.meshgrid(*[np.arange(size) for size in shape], indexing="ij")
        center = np.asarray(shape) // 2
        distance = sum((axis - c) ** 2 for axis, c in zip(grid, center))
        label = np.zeros(shape, np.uint8)
        label[distance <= foreground_radius**2] = 1
        label[(distance <= foreground_radius**2) & (grid[0] > center[0])] = 2
        image[label > 0] += 500.0
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case_{index:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{index:03d}.nii.gz")
    description = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, "left": 1, "right": 2},
        "numTraining": len(shapes),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return load_dataset(root)


def test_normalization_scheme_by_modality():
    assert normalization_for_channel("CT") == "ct"
    assert normalization_for_channel(" ct ") == "ct"
    assert normalization_for_channel("T1") == "zscore_nonzero"
    assert normalization_for_channel("MRI") == "zscore_nonzero"
    assert normalization_for_channel("noNorm") == "none"


def test_plan_iso_median_spacing(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(16, 16, 8)] * 3, (0.7, 0.7, 3.0))

    plan, fingerprint = plan_preprocessing(spec)
    anisotropic, _ = plan_preprocessing(spec, isotropic=False)
    explicit, _ = plan_preprocessing(spec, target_spacing=2.0)

    assert plan.target_spacing == pytest.approx((0.7, 0.7, 0.7))
    assert anisotropic.target_spacing == pytest.approx((0.7, 0.7, 3.0))
    assert explicit.target_spacing == (2.0, 2.0, 2.0)
    assert fingerprint["median_spacing"] == pytest.approx([0.7, 0.7, 3.0])
    assert fingerprint["median_resampled_shape"] == [16, 16, 31]
    assert fingerprint["axis_codes"] == {"RAS": 3}
    assert plan.normalization == [{"scheme": "zscore_nonzero"}]


def test_plan_ct_uses_foreground_statistics(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(12, 12, 12)] * 2, (1.0, 1.0, 1.0), channel="CT")

    plan, fingerprint = plan_preprocessing(spec)

    entry = plan.normalization[0]
    stats = fingerprint["foreground_intensity"]["0"]
    assert entry["scheme"] == "ct"
    assert entry["mean"] == pytest.approx(stats["mean"])
    assert 800 < entry["mean"] < 1000
    assert entry["lower"] == pytest.approx(stats["percentile_00_5"])
    assert entry["upper"] == pytest.approx(stats["percentile_99_5"])


def test_ct_normalization_clips_then_scores():
    plan = PreprocessingPlan(normalization=[{"scheme": "ct", "lower": -100.0, "upper": 200.0, "mean": 50.0, "std": 10.0}])
    image = np.array([-1000.0, 0.0, 50.0, 1000.0], np.float32).reshape(1, 4, 1, 1) * np.ones((1, 4, 2, 2), np.float32)

    result = preprocess_case(image, np.eye(4), plan)

    assert result.image[0, :, 0, 0].tolist() == pytest.approx([-15.0, -5.0, 0.0, 15.0])


def test_zscore_nonzero_keeps_zeros():
    rng = np.random.default_rng(1)
    image = np.zeros((1, 10, 10, 10), np.float32)
    image[0, 2:8, 2:8, 2:8] = rng.normal(50, 5, (6, 6, 6))
    image[0, 4, 4, 4] = 0.0
    plan = PreprocessingPlan(crop_to_nonzero=False)

    result = preprocess_case(image, np.eye(4), plan).image[0].numpy()

    inside = result[2:8, 2:8, 2:8][image[0, 2:8, 2:8, 2:8] != 0]
    assert result[0, 0, 0] == 0.0
    assert result[4, 4, 4] == 0.0
    assert inside.mean() == pytest.approx(0.0, abs=1e-5)
    assert inside.std() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("entry", [{"scheme": "zscore_nonzero"}, {"scheme": "zscore"},
                                   {"scheme": "ct", "lower": -100.0, "upper": 200.0, "mean": 50.0, "std": 10.0}])
def test_preprocessing_keeps_input_unchanged(entry, crop):
    # Orientation, crop and float32 input can all hand views of the caller's array down to
    # the normalization; none may write into it.
    rng = np.random.default_rng(2)
    image = np.zeros((1, 12, 10, 8), np.float32)
    image[0, 2:10, 2:8, 1:7] = rng.normal(50, 5, (8, 6, 6))
    original = image.copy()
    plan = PreprocessingPlan(normalization=[entry], crop_to_nonzero=crop)

    for affine in (np.eye(4), np.diag([-1.0, -1.0, 1.0, 1.0])):
        result = preprocess_case(image, affine, plan).image
        np.testing.assert_array_equal(image, original)
        assert not np.allclose(result.numpy().mean(), original.mean())


def test_plan_dict_round_trip():
    plan = PreprocessingPlan(orientation="LPS", target_spacing=(1.5, 1.5, 1.5),
                             normalization=[{"scheme": "zscore_nonzero"}, {"scheme": "none"}])

    copy = PreprocessingPlan.from_dict(json.loads(json.dumps(plan.to_dict())))

    assert copy == plan
    assert copy.digest() == plan.digest()
    assert PreprocessingPlan(target_spacing=(1.0, 1.0, 1.0)).digest() != plan.digest()


def test_plan_rejects_bad_values():
    with pytest.raises(InputError, match="unknown key"):
        PreprocessingPlan.from_dict({"spacing": [1, 1, 1]})
    with pytest.raises(InputError, match="orientation"):
        PreprocessingPlan(orientation="RRS")
    with pytest.raises(InputError, match="target_spacing"):
        PreprocessingPlan(target_spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="CT normalization"):
        PreprocessingPlan(normalization=[{"scheme": "ct", "lower": 0.0}])


def test_context_size_keeps_parity():
    assert context_size((16, 16, 16), rotation=False, scale_range=0.0) == (16, 16, 16)
    assert context_size((16, 16, 16), rotation=True, scale_range=0.0) == (28, 28, 28)
    assert context_size((15, 16, 17), rotation=True, scale_range=0.15) == (33, 32, 33)


def _count_reads(monkeypatch):
    calls = {"image": 0, "label": 0}
    original_image, original_label = data_io.read_image, data_io.read_label

    def read_image(*args, **kwargs):
        calls["image"] += 1
        return original_image(*args, **kwargs)

    def read_label(*args, **kwargs):
        calls["label"] += 1
        return original_label(*args, **kwargs)

    monkeypatch.setattr(data_io, "read_image", read_image)
    monkeypatch.setattr(data_io, "read_label", read_label)
    return calls


def test_second_epoch_and_run_skip_nifti(tmp_path, monkeypatch):
    spec = _write_dataset(tmp_path / "ds", [(20, 20, 20)] * 4, (1.0, 1.0, 1.0))
    plan = PreprocessingPlan()
    calls = _count_reads(monkeypatch)
    options = dict(patch_size=(16, 16, 16), num_classes=3, augmentation={"scale": False, "intensity": False})

    train, val = build_datasets(spec.training[:3], spec.training[3:], plan, tmp_path / "cache", **options)
    after_build = dict(calls)
    for _ in range(2):
        for index in range(len(train)):
            train[index]
        val[0]
    train_again, _ = build_datasets(spec.training[:3], spec.training[3:], plan, tmp_path / "cache", **options)
    train_again[0]

    assert after_build == {"image": 4, "label": 4}
    assert calls == {"image": 4, "label": 4}
    assert len(list(cache_folder(tmp_path / "cache", plan).glob("*.npz"))) == 4


def test_cache_rebuilds_changed_source(tmp_path, monkeypatch):
    spec = _write_dataset(tmp_path / "ds", [(12, 12, 12)] * 2, (1.0, 1.0, 1.0))
    plan = PreprocessingPlan()
    preprocess_to_cache(spec.training, plan, tmp_path / "cache")
    calls = _count_reads(monkeypatch)

    label_path = spec.training[0].label_path
    nifti = nib.load(label_path)
    nib.save(nib.Nifti1Image(np.asarray(nifti.dataobj), nifti.affine), label_path)
    preprocess_to_cache(spec.training, plan, tmp_path / "cache")

    assert calls == {"image": 1, "label": 1}


def test_patches_shape_dtype_and_padding(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(10, 12, 9)] * 2, (1.0, 1.0, 1.0))

    train, val = build_datasets(spec.training[:1], spec.training[1:], PreprocessingPlan(), tmp_path / "cache",
                                patch_size=(16, 16, 16), num_classes=3)
    sample = train[0]

    assert sample["image"].shape == (1, 16, 16, 16)
    assert sample["image"].dtype == torch.float32
    assert sample["label"].shape == (1, 16, 16, 16)
    assert sample["label"].dtype == torch.int16
    assert sample["case_id"] == "case_000"
    assert val[0]["image"].shape == (1, 10, 12, 9)


def test_foreground_fraction_of_centres(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(40, 40, 40)] * 2, (1.0, 1.0, 1.0), foreground_radius=2)
    augmentation = {"scale": False, "flip": False, "intensity": False, "foreground_fraction": 1 / 3}
    train, _ = build_datasets(spec.training[:1], spec.training[1:], PreprocessingPlan(), tmp_path / "cache",
                              patch_size=(8, 8, 8), num_classes=3, augmentation=augmentation, seed=3)

    centres = [int(train[0]["label"][0, 4, 4, 4] > 0) for _ in range(300)]

    assert 0.25 < np.mean(centres) < 0.42


def test_patches_reproducible_by_seed(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(24, 24, 24)] * 2, (1.0, 1.0, 1.0))
    options = dict(patch_size=(16, 16, 16), num_classes=3, augmentation={"rotation": True, "probability": 0.5})

    def patches(seed):
        train, _ = build_datasets(spec.training[:1], spec.training[1:], PreprocessingPlan(), tmp_path / "cache",
                                  seed=seed, **options)
        return [train[0]["image"].clone() for _ in range(4)]

    first, again, other = patches(7), patches(7), patches(8)

    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_rotated_patch_has_no_empty_corners(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(64, 64, 64)], (1.0, 1.0, 1.0), foreground_radius=2)
    transform = build_training_transform((16, 16, 16), 3, rotation=True, probability=1.0, foreground_fraction=1.0,
                                         flip=False, intensity=False)
    transform.set_random_state(seed=0)
    item = preprocess_to_cache(spec.training, PreprocessingPlan(), tmp_path / "cache")[0]

    for _ in range(5):
        patch = transform(item)
        assert patch["image"].shape == (1, 16, 16, 16)
        assert int((patch["image"] == 0).sum()) == 0
        assert int((patch["label"] > 0).sum()) > 0


def test_label_transform_applied(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(16, 16, 16)] * 2, (1.0, 1.0, 1.0))

    def merge_sides(label):
        return np.where(label == 2, 1, label).astype(np.int16)

    train, val = build_datasets(spec.training[:1], spec.training[1:], PreprocessingPlan(), tmp_path / "cache",
                                patch_size=(16, 16, 16), num_classes=2, label_transform=merge_sides)

    assert set(torch.unique(val[0]["label"]).tolist()) == {0, 1}
    assert set(torch.unique(train[0]["label"]).tolist()) <= {0, 1}


def test_label_above_num_classes_raises(tmp_path):
    spec = _write_dataset(tmp_path / "ds", [(16, 16, 16)] * 2, (1.0, 1.0, 1.0))

    with pytest.raises(InputError, match="num_classes=2"):
        build_datasets(spec.training[:1], spec.training[1:], PreprocessingPlan(), tmp_path / "cache",
                       patch_size=(16, 16, 16), num_classes=2)


def _field_of_view_sample(size=(20, 24, 28)):
    image = torch.full((1, *size), 2.5)
    label = torch.ones((1, *size), dtype=torch.int16)
    return {"image": image, "label": label}


def test_field_of_view_cut_blanks_beyond_oblique_planes():
    from gmrseg.data.transforms import RandFieldOfViewCutd

    cut = RandFieldOfViewCutd(prob=1.0, max_planes=1, max_fraction=0.4)
    cut.set_random_state(seed=3)
    fractions = []
    for _ in range(20):
        sample = _field_of_view_sample()
        out = cut(sample)
        blank = out["image"][0] == 0.0
        fractions.append(float(blank.float().mean()))

        # Image and label are blanked on the same voxels, and the input is left alone.
        assert torch.equal(blank, out["label"][0] == 0)
        assert torch.all(sample["image"] == 2.5)

        # The blank region is a half-space: convex along every grid line, so each
        # row is one run of blank voxels touching an edge of the patch.
        rows = blank.reshape(-1, blank.shape[-1]).numpy()
        for row in rows[rows.any(axis=1)]:
            first, last = np.flatnonzero(row)[[0, -1]]
            assert row[first:last + 1].all()
            assert first == 0 or last == row.size - 1

    fractions = np.array(fractions)
    assert np.all(fractions <= 0.4 + 0.01)
    assert fractions.max() > 0.1


def test_field_of_view_cut_probability_zero_and_seeded():
    from gmrseg.data.transforms import RandFieldOfViewCutd

    never = RandFieldOfViewCutd(prob=0.0)
    assert torch.all(never(_field_of_view_sample())["image"] == 2.5)

    first, second = RandFieldOfViewCutd(prob=1.0), RandFieldOfViewCutd(prob=1.0)
    first.set_random_state(seed=7)
    second.set_random_state(seed=7)
    for _ in range(3):
        assert torch.equal(first(_field_of_view_sample())["image"], second(_field_of_view_sample())["image"])


@pytest.mark.parametrize("kwargs", [{"prob": 1.5}, {"max_planes": 0}, {"max_fraction": 1.0}])
def test_field_of_view_cut_rejects_bad_settings(kwargs):
    from gmrseg.data.transforms import RandFieldOfViewCutd

    with pytest.raises(InputError):
        RandFieldOfViewCutd(**kwargs)


def test_training_chain_applies_field_of_view_last(tmp_path):
    from gmrseg.data.transforms import RandFieldOfViewCutd

    chain = build_training_transform((16, 16, 16), 3, field_of_view=True)
    assert isinstance(chain.transforms[-2], RandFieldOfViewCutd)
    assert not any(isinstance(t, RandFieldOfViewCutd) for t in build_training_transform((16, 16, 16), 3).transforms)


def _patch_starts(overhang, shape=(40, 30, 20), patch=(16, 16, 16), draws=200):
    """Where each drawn patch starts, per axis, for a volume whose voxels hold their own x, y, z."""
    from gmrseg.data.transforms import RandForegroundPatchd

    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    volume = torch.as_tensor(np.stack(grids) + 1.0, dtype=torch.float32)  # +1: 0 marks padding
    label = torch.zeros((1, *shape), dtype=torch.int16)
    indices = [np.arange(int(np.prod(shape)))]
    sampler = RandForegroundPatchd(["image"], patch, patch, [1.0], overhang=overhang)
    sampler.set_random_state(seed=0)
    starts = []
    for _ in range(draws):
        image = sampler({"image": volume, "label": label, "label_class_indices": indices})["image"]
        inside = image[0] > 0
        first = [int(image[axis][inside].min()) - 1 for axis in range(3)]
        # Voxels before the volume's first voxel are padding: count them as a negative start.
        pad = [int(np.argmax(inside.any(dim=tuple(a for a in range(3) if a != axis)).numpy())) for axis in range(3)]
        starts.append([f - p for f, p in zip(first, pad)])
    return np.array(starts)


def test_patches_stay_inside_without_overhang():
    starts = _patch_starts(0.0)
    assert starts.min() >= 0
    assert np.all(starts + 16 <= np.array([40, 30, 20]))


def test_overhang_limit_at_each_edge():
    starts = _patch_starts(0.5)
    ends = starts + 16
    shape = np.array([40, 30, 20])

    # Up to half the patch (8 voxels) may hang over either edge, and draws do reach both limits.
    assert starts.min(axis=0).tolist() == [-8, -8, -8]
    assert (ends - shape).max(axis=0).tolist() == [8, 8, 8]
    assert starts.min() >= -8
    assert (ends - shape).max() <= 8


def test_overhang_rejects_values_above_half():
    from gmrseg.data.transforms import RandForegroundPatchd

    with pytest.raises(InputError, match="overhang"):
        RandForegroundPatchd(["image"], (8, 8, 8), (8, 8, 8), [1.0], overhang=0.6)
