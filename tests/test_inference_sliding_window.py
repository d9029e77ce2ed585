"""Tests for the symmetric sliding-window layout, the TTA symmetries and the window blending."""

from __future__ import annotations

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from torch import nn

from gmrseg.inference.sliding_window import plan_window_layout, sliding_window_logits
from gmrseg.inference.tta import Symmetry, tta_symmetries


def _monai_starts(size: int, roi: int, overlaps) -> list[int]:
    """Window starts that MONAI uses on an axis of ``size`` voxels."""
    interval = _get_scan_interval((size,), (roi,), 1, overlaps)
    return sorted(window[0].start for window in dense_patch_slices((size,), (roi,), interval))


@pytest.mark.parametrize("roi", [8, 16, 20, 64, 96, 128])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_layout_grid_is_mirror_symmetric(roi, overlap):
    for size in range(1, 3 * roi + 7):
        layout = plan_window_layout((size,), (roi,), overlap)
        padded = layout.padded_size[0]
        starts = _monai_starts(padded, roi, layout.monai_overlap())
        assert padded >= size
        assert starts[-1] == padded - roi, (size, roi, overlap)
        assert starts == sorted(padded - roi - start for start in starts), (size, roi, overlap)
        assert layout.pad_before[0] + layout.pad_after[0] == padded - size
        assert layout.pad_after[0] - layout.pad_before[0] in (0, 1)


@pytest.mark.parametrize("roi", [16, 64, 128])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_layout_window_count_equals_monai(roi, overlap):
    max_step = int(roi * (1 - overlap))
    for size in range(roi + 1, 4 * roi):
        layout = plan_window_layout((size,), (roi,), overlap)
        assert layout.num_windows[0] == len(_monai_starts(size, roi, (overlap,)))
        assert layout.step[0] <= max_step


def test_layout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        plan_window_layout((10, 10, 10), (8, 8, 8), 1.0)
    with pytest.raises(ValueError, match="same length"):
        plan_window_layout((10, 10), (8, 8, 8), 0.5)


def test_symmetries_count_and_inverse():
    assert len(tta_symmetries("none")) == 1
    assert len(tta_symmetries("flip")) == 8
    assert len(tta_symmetries("full")) == 48
    assert len(set(tta_symmetries("full"))) == 48
    assert len(tta_symmetries("flip", spatial_dims=2)) == 4
    volume = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 3, 4, 5, 6)
    for symmetry in tta_symmetries("full"):
        moved = symmetry.apply(volume)
        assert tuple(moved.shape[2:]) == symmetry.apply_to_shape(volume.shape[2:])
        assert torch.equal(symmetry.invert(moved), volume)


def test_symmetry_rejects_unknown_mode():
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_symmetries("rotate")


class _Pointwise(nn.Module):
    """1x1x1 convolution: blending any set of windows must give the whole-volume result."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(2, 3, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("shape", [(23, 17, 11), (5, 9, 4), (40, 16, 33)])
def test_pointwise_network_matches_whole_volume(shape):
    network = _Pointwise().eval()
    image = torch.randn(1, 2, *shape)
    logits = sliding_window_logits(network, image, (16, 16, 8), overlap=0.5, sw_batch_size=3)
    with torch.no_grad():
        expected = network(image)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_symmetry_result_is_mapped_back():
    network = _Pointwise().eval()
    image = torch.randn(1, 2, 21, 18, 13)
    with torch.no_grad():
        expected = network(image)
    for symmetry in (Symmetry((2, 0, 1), (0, 2)), Symmetry((0, 1, 2), (1,))):
        logits = sliding_window_logits(network, image, (16, 16, 8), overlap=0.5, symmetry=symmetry)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_deep_supervision_list_uses_full_resolution():
    class _ListOutput(nn.Module):
        def forward(self, x):
            return [x[:, :1] * 2.0, x[:, :1, ::2, ::2, ::2]]

    image = torch.randn(1, 1, 12, 12, 12)
    logits = sliding_window_logits(_ListOutput(), image, (8, 8, 8), overlap=0.5)
    torch.testing.assert_close(logits, image * 2.0, atol=1e-5, rtol=1e-5)
