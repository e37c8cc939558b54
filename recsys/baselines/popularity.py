"""Popularity: every user gets the items ranked by their training count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from recsys.baselines.base import Interactions

__all__ = ["Popularity", "FittedPopularity"]


@dataclass(frozen=True)
class FittedPopularity:
    counts: torch.Tensor  # (V,) float64: training rows per item, exact up to 2^53

    def scores(self, users: np.ndarray) -> torch.Tensor:
        return self.counts.expand(len(users), -1)  # (n, V), one row for all users


class Popularity:
    """Score = the item's number of training rows (ties: lower item index, the evaluator's rule).

    No hyperparameters; the same for every user, so it is what a catalogue's best sellers give.
    """

    name: ClassVar[str] = "popularity"
    label: ClassVar[str] = "popularity"
    grid: ClassVar[tuple[Mapping[str, Any], ...]] = ({},)

    def fit(self, train: Interactions, params: Mapping[str, Any], *, seed: int = 0, num_threads: int = 1) -> FittedPopularity:
        return FittedPopularity(torch.from_numpy(train.item_counts().astype(np.float64)))
