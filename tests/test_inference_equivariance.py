"""Test-time symmetries leave a GMR network's prediction unchanged up to float rounding.

GMRUNet commutes with the 48 cube symmetries on inputs whose sizes are
multiples of its size_divisor. The sliding window pads the volume so that the
same windows cover it under every symmetry, so the blended probabilities must
agree too, also for odd volume sizes and a non-cubic patch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_helpers import write_run_folder

from gmrseg.inference import Predictor
from gmrseg.inference.sliding_window import sliding_window_logits
from gmrseg.inference.tta import Symmetry, tta_symmetries
from gmrseg.networks.factory import build_network

TOLERANCE = 1e-5


def _tiny_gmrunet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("gmrunet", 1, 3, features=(4, 8, 16), kernel_sizes=3).eval()


@pytest.mark.parametrize(
    "roi, symmetry",
    [
        ((16, 16, 16), Symmetry((0, 1, 2), (0, 1, 2))),
        ((16, 16, 16), Symmetry((2, 0, 1), (1,))),
        ((16, 16, 8), Symmetry((1, 2, 0), (0, 2))),
    ],
)
def test_symmetry_changes_gmrunet_output_by_rounding_only(roi, symmetry):
    network = _tiny_gmrunet()
    image = torch.randn(1, 1, 21, 18, 11)
    reference = torch.softmax(sliding_window_logits(network, image, roi, overlap=0.5, sw_batch_size=4), dim=1)
    moved = torch.softmax(
        sliding_window_logits(network, image, roi, overlap=0.5, sw_batch_size=4, symmetry=symmetry), dim=1
    )
    assert (moved - reference).abs().max().item() < TOLERANCE


@pytest.mark.slow
def test_full_tta_equals_none_for_gmrunet(tmp_path):
    run = write_run_folder(
        tmp_path / "run", _tiny_gmrunet(), network_name="gmrunet",
        network_kwargs={"features": [4, 8, 16], "kernel_sizes": 3},
        labels={"background": 0, "a": 1, "b": 2}, patch_size=(16, 16, 16), normalization="zscore_nonzero",
    )
    image = np.random.default_rng(0).normal(size=(1, 21, 18, 17)).astype(np.float32)
    none = Predictor.from_run(run, device="cpu", tta="none").segment(image, np.eye(4))
    full = Predictor.from_run(run, device="cpu", tta="full").segment(image, np.eye(4))
    assert len(tta_symmetries("full")) == 48
    assert np.abs(full.probabilities - none.probabilities).max() < TOLERANCE
