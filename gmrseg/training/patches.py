"""Seeded patch sampling over a random-patch dataset, for exact resume and DDP.

``gmrseg.data.transforms.build_datasets`` returns a training dataset whose
items are random patches drawn with its transform's random state. This
wrapper reseeds that transform before every item from (seed, rank, epoch,
index). An epoch therefore yields the same patches whatever the number of
loader workers, each process draws its own patches, and a resumed run draws
the patches an uninterrupted one would have drawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["SeededPatchDataset"]


def _plain(value: Any) -> Any:
    """Return a MONAI ``MetaTensor`` as a plain tensor (faster to collate and to run)."""
    if hasattr(value, "as_tensor"):
        return value.as_tensor()
    return value


class SeededPatchDataset(Dataset):
    """``samples_per_epoch`` patches per epoch from a dataset of random patches.

    Args:
        source: map-style dataset, one item per case, each access a new random
            patch ``{"image", "label", ...}``; its ``transform`` (a MONAI
            ``Compose``) must support ``set_random_state``.
        samples_per_epoch: patches per epoch on this process.
        seed: base seed of the run.
        rank: process rank, so processes draw different patches.

    Call ``set_epoch`` before iterating over an epoch.
    """

    def __init__(self, source: Dataset, samples_per_epoch: int, seed: int, rank: int = 0) -> None:
        if len(source) < 1:
            raise ValueError("SeededPatchDataset needs at least one training case")
        if not hasattr(getattr(source, "transform", None), "set_random_state"):
            raise TypeError("the source dataset needs a MONAI transform with set_random_state")
        self.source = source
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    @property
    def num_cases(self) -> int:
        """Number of cases patches are drawn from."""
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = np.random.default_rng([self.seed, self.rank, self.epoch, index])
        case_index = int(generator.integers(len(self.source)))
        self.source.transform.set_random_state(seed=int(generator.integers(2**31 - 1)))

        sample = self.source[case_index]
        if isinstance(sample, list):  # several samples per case: keep the first
            sample = sample[0]
        return {"image": _plain(sample["image"]).float(), "label": _plain(sample["label"]).long()}
