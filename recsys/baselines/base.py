"""What every baseline shares: the training interactions and the two small interfaces.

A baseline is fitted on the training interactions only (user index, item index pairs of the
train split) and then scores the whole catalogue for a block of users; the ranking, the
exclusions and the metrics are the evaluator's (:mod:`recsys.retrieval_metrics`), exactly as for
the two-tower model. Scores depend on the user only, so under ``per_row`` the rows of one user
get the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Baseline", "Fitted", "Interactions"]


@dataclass(frozen=True)
class Interactions:
    """``(user, item)`` index pairs of one split, in row order (duplicates kept).

    Attributes:
        users: ``(n,)`` int64 user indices in ``[0, num_users)``.
        items: ``(n,)`` int64 item indices in ``[0, num_items)`` (catalogue rows).
        num_users: user index range (the user id's cardinality).
        num_items: catalogue rows (``items.parquet``), items never seen in training included.
    """

    users: np.ndarray
    items: np.ndarray
    num_users: int
    num_items: int

    def __post_init__(self) -> None:
        users, items = np.asarray(self.users, np.int64), np.asarray(self.items, np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"interactions: users {users.shape} and items {items.shape}; give two (n,) arrays")
        if users.size and (users.min() < 0 or users.max() >= self.num_users):
            raise ValueError(f"interactions: user indices {users.min()}..{users.max()} outside [0, {self.num_users})")
        if items.size and (items.min() < 0 or items.max() >= self.num_items):
            raise ValueError(f"interactions: item indices {items.min()}..{items.max()} outside [0, {self.num_items})")
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "items", items)

    def matrix(self, dtype: Any = np.float32) -> sp.csr_matrix:
        """``(num_users, num_items)`` binary CSR: 1 where the user has the item (duplicates count once)."""
        m = sp.csr_matrix(
            (np.ones(self.users.size, dtype), (self.users, self.items)), shape=(self.num_users, self.num_items)
        )
        m.sum_duplicates()
        m.data[:] = 1
        m.sort_indices()
        return m

    def item_counts(self) -> np.ndarray:
        """``(num_items,)`` int64 rows per item (duplicates counted): the popularity counts."""
        return np.bincount(self.items, minlength=self.num_items).astype(np.int64)


class Fitted(Protocol):
    """A fitted baseline."""

    def scores(self, users: np.ndarray) -> torch.Tensor:
        """``(n, V)`` scores of every catalogue item for ``users`` ``(n,)`` (higher is better)."""


class Baseline(Protocol):
    """A baseline: a name (the ``results.json`` prefix), a label, a small grid, a fit."""

    name: ClassVar[str]
    label: ClassVar[str]
    grid: ClassVar[tuple[Mapping[str, Any], ...]]

    def fit(self, train: Interactions, params: Mapping[str, Any], *, seed: int, num_threads: int) -> Fitted:
        """Fit on the training interactions with one grid point."""
