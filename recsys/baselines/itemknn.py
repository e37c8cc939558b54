"""Item-kNN: cosine similarity between items over the training interactions, top-k neighbours.

With ``X`` the binary ``(U, V)`` training matrix (1 where user u has item i, duplicates once):

    sim(i, j) = |users of i and j| / sqrt(|users of i| * |users of j|)    (0 if either has none)
    N_K(i)    = the K items j != i with the highest sim(i, j) > 0, ties by lower index
    score(u, j) = sum over the user's training items i with j in N_K(i) of sim(i, j)

i.e. ``scores = X_u @ S_K`` with ``S_K[i, j] = sim(i, j)`` for ``j in N_K(i)``, else 0: each of the
user's items votes for its K nearest neighbours (the classic item-based CF of Sarwar et al. 2001 /
Deshpande & Karypis 2004 with cosine). An item is never its own neighbour. Similarities are
computed in float64 in blocks of items (at most ~16M similarities at once); the neighbour lists of
the largest K in the grid are built once and cut for the smaller ones (the same lists, since they
are ordered by the tie rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from recsys.baselines.base import Interactions
from recsys.retrieval_metrics import topk_lower_index

__all__ = ["ItemKNN", "FittedItemKNN", "item_neighbours"]

_BLOCK_SIMILARITIES = 1 << 24


def item_neighbours(matrix: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's top-``k`` cosine neighbours (module docstring), best first.

    Args:
        matrix: ``(U, V)`` binary user x item CSR.
        k: neighbours per item (at most V - 1).

    Returns:
        ``(neighbours (V, k) int64, similarities (V, k) float64)``; places past an item's last
        positive similarity hold neighbour ``-1`` and similarity 0.
    """
    x = matrix.astype(np.float64).tocsc()
    num_items = x.shape[1]
    k = max(0, min(k, num_items - 1))
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())  # (V,) sqrt(|users of i|)
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    xt = x.T.tocsr()  # (V, U)
    neighbours = np.full((num_items, k), -1, np.int64)
    similarities = np.zeros((num_items, k), np.float64)
    if k == 0:
        return neighbours, similarities
    block = max(1, _BLOCK_SIMILARITIES // max(num_items, 1))
    for start in range(0, num_items, block):
        stop = min(start + block, num_items)
        co = (xt[start:stop] @ x).toarray()  # (b, V) co-occurrence counts, exact in float64
        sim = co * inv[start:stop, None] * inv[None, :]
        sim[np.arange(stop - start), np.arange(start, stop)] = 0.0  # never its own neighbour
        values, idx = topk_lower_index(torch.from_numpy(sim), k, floor=0.0)  # zeros are dropped below
        values, idx = values.numpy(), idx.numpy()
        keep = values > 0
        neighbours[start:stop] = np.where(keep, idx, -1)
        similarities[start:stop] = np.where(keep, values, 0.0)
    return neighbours, similarities


def _neighbour_matrix(neighbours: np.ndarray, similarities: np.ndarray, k: int, num_items: int) -> sp.csr_matrix:
    nb, sim = neighbours[:, :k], similarities[:, :k]
    keep = nb >= 0
    rows = np.repeat(np.arange(num_items), keep.sum(axis=1))
    return sp.csr_matrix((sim[keep], (rows, nb[keep])), shape=(num_items, num_items))


@dataclass(frozen=True)
class FittedItemKNN:
    user_items: sp.csr_matrix  # (U, V) binary training matrix, float64
    similarity: sp.csr_matrix  # (V, V) S_K

    def scores(self, users: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((self.user_items[np.asarray(users)] @ self.similarity).toarray())  # (n, V) float64


class ItemKNN:
    """Item-based kNN with cosine similarity (module docstring); grid: ``neighbours``."""

    name: ClassVar[str] = "itemknn"
    label: ClassVar[str] = "item-kNN"
    grid: ClassVar[tuple[Mapping[str, Any], ...]] = tuple({"neighbours": k} for k in (20, 50, 100, 200))

    def __init__(self) -> None:
        # (train, K, lists): the grid's fits share one similarity pass over the same training rows
        self._cache: tuple[Interactions, int, tuple[np.ndarray, np.ndarray]] | None = None

    def fit(self, train: Interactions, params: Mapping[str, Any], *, seed: int = 0, num_threads: int = 1) -> FittedItemKNN:
        k = int(params["neighbours"])
        if k < 1:
            raise ValueError(f"itemknn.neighbours: got {k}; give a positive number of neighbours")
        matrix = train.matrix(np.float64)
        widest = max(k, max(int(p["neighbours"]) for p in self.grid))
        if self._cache is None or self._cache[0] is not train or self._cache[1] < k:
            self._cache = (train, widest, item_neighbours(matrix, widest))
        neighbours, similarities = self._cache[2]
        return FittedItemKNN(matrix, _neighbour_matrix(neighbours, similarities, k, train.num_items))
