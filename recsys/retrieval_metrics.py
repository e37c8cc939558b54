"""Full-corpus exact retrieval metrics: every evaluation row ranks EVERY catalogue item.

    .venv/bin/python -m pytest tests/unit/test_retrieval_metrics.py -q

**Protocol.** Row ``r`` (one validation / test interaction) has a user vector ``u_r``, one target
item ``t_r`` and optionally an exclusion set ``E_r`` (the user's training items, CSR arrays).
Item ``j`` scores ``s_rj = <u_r, v_j>`` for every row ``j`` of the ``(V, D)`` item matrix, by
batched matmul, chunked over rows so at most ``chunk_size x V`` scores exist at once. No
candidates are sampled.

* **Exclusion**: items of ``E_r`` and of ``excluded_items`` (for every row, e.g. the OOV row 0)
  leave the ranking, EXCEPT the target: a target listed in its own exclusion set (or in
  ``excluded_items``) stays ranked, so exclusion can never turn a hit into a miss by removing the
  answer.
* **Tie rule**: items are ordered by score, descending, and equal scores by LOWER item index
  first. ``exact_topk`` returns exactly this order (``torch.topk`` alone leaves ties
  unspecified); the target's rank uses the same rule, so "target in top-k" and "rank <= k" agree.
* **Rank**: ``rank_r = 1 + #{j not excluded: s_rj > s_rt, or s_rj == s_rt and j < t_r}``, over the
  whole catalogue (never truncated at any k).

Metrics, averaged over rows (one target per row)::

    HitRate@k = Recall@k = mean 1[rank <= k]         (with one target per row they coincide;
                                                      both are reported under their usual names)
    NDCG@k    = mean 1[rank <= k] / log2(1 + rank)   (the ideal DCG of one target is 1)
    MRR       = mean 1 / rank                        (full rank, not truncated at any k)
    Coverage@k = |union over rows of the top-k lists| / (V - |excluded_items|)
    Recall@k/head, /torso, /tail: Recall@k over the rows whose target is in that third

**Popularity thirds** (:func:`popularity_thirds`), from the training counts: items sorted by
count, descending, ties by lower index; an item is *head* while the interactions of the items
ranked before it are fewer than 1/3 of all training interactions, *torso* while fewer than 2/3,
else *tail*. So the thirds split the INTERACTIONS (not the item count) into three near-equal
parts: the head is a handful of items, the tail most of the catalogue, items never seen in
training included.

**Popularity baseline** (:func:`popularity_vectors`): score = training count, through the same
evaluator (users ``(N, 1)`` ones, items ``(V, 1)`` counts, float64 so counts are exact).

For several workers, each rank calls :meth:`RetrievalEvaluator.update` on its own rows, then
``all_reduce(evaluator.sums, SUM)`` and ``all_reduce(evaluator.covered, MAX)`` (as uint8) make
every rank's :meth:`RetrievalEvaluator.compute` exact over all rows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_KS",
    "RetrievalEvaluator",
    "evaluate_retrieval",
    "exact_topk",
    "exclusion_rows",
    "popularity_thirds",
    "popularity_vectors",
    "topk_lower_index",
    "user_item_csr",
]

DEFAULT_KS: tuple[int, ...] = (10, 50, 100)
THIRDS: tuple[str, ...] = ("head", "torso", "tail")
_SCORE_BUDGET = 1 << 24  # scores per chunk (64 MB of float32) when chunk_size is not given


def topk_lower_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row of ``(n, V)`` scores, descending, ties by lower column index.

    ``torch.topk`` finds the k-th largest value ``c``; every score ``> c`` is in, and of the scores
    ``== c`` the lowest indices fill the remaining places; a stable descending sort then orders
    the k picks by score, keeping ascending index order within ties.

    Returns:
        ``(values (n, k), indices (n, k))`` with ``k = min(k, V)``.
    """
    n, num_items = scores.shape
    k = min(k, num_items)
    if k == 0 or n == 0:
        empty = torch.empty((n, k), dtype=torch.int64, device=scores.device)
        return scores.new_empty((n, k)), empty
    kth = torch.topk(scores, k, dim=1).values[:, -1:]  # (n, 1)
    greater = scores > kth  # (n, V)
    equal = scores == kth  # (n, V)
    need = k - greater.sum(dim=1, keepdim=True)  # (n, 1) places left for ties at the k-th value
    take = greater | (equal & (torch.cumsum(equal, dim=1) <= need))  # (n, V), exactly k per row
    indices = take.nonzero()[:, 1].view(n, k)  # (n, k) ascending index within each row
    values = scores.gather(1, indices)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), indices.gather(1, order)


def _exclusion_mask(
    num_rows: int,
    num_items: int,
    device: torch.device,
    exclude: tuple[torch.Tensor, torch.Tensor] | None,
    excluded_items: torch.Tensor | None,
    targets: torch.Tensor | None,
) -> torch.Tensor | None:
    """``(n, V)`` True where an item leaves a row's ranking (targets are never excluded)."""
    if exclude is None and excluded_items is None:
        return None
    mask = torch.zeros((num_rows, num_items), dtype=torch.bool, device=device)
    if excluded_items is not None and excluded_items.numel():
        mask[:, excluded_items.to(device)] = True
    if exclude is not None:
        indptr, indices = exclude
        counts = (indptr[1:] - indptr[:-1]).to(device)  # (n,)
        rows = torch.repeat_interleave(torch.arange(num_rows, device=device), counts)
        mask[rows, indices[int(indptr[0]) : int(indptr[-1])].to(device)] = True
    if targets is not None:
        mask[torch.arange(num_rows, device=device), targets] = False
    return mask


def _check_vectors(user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> None:
    if user_vectors.ndim != 2 or item_vectors.ndim != 2 or user_vectors.shape[1] != item_vectors.shape[1]:
        raise ValueError(
            f"user vectors {tuple(user_vectors.shape)} and item vectors {tuple(item_vectors.shape)}: "
            "give (N, D) and (V, D) with the same D"
        )
    for name, t in (("user vectors", user_vectors), ("item vectors", item_vectors)):
        if torch.isnan(t).any():
            raise ValueError(f"{name} hold NaN values; scores must be numbers for an exact ranking")


def _as_exclusion(exclude_indptr, exclude_indices, num_rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if exclude_indptr is None:
        return None
    indptr = torch.as_tensor(np.asarray(exclude_indptr), dtype=torch.int64)
    indices = torch.as_tensor(np.asarray(exclude_indices), dtype=torch.int64)
    if indptr.numel() != num_rows + 1:
        raise ValueError(f"exclude_indptr: got {indptr.numel()} offsets for {num_rows} rows; a CSR needs rows + 1")
    return indptr, indices


def exact_topk(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    *,
    exclude_indptr: np.ndarray | torch.Tensor | None = None,
    exclude_indices: np.ndarray | torch.Tensor | None = None,
    excluded_items: torch.Tensor | Sequence[int] | None = None,
    targets: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k items per user by matmul + the documented tie rule, chunked over users.

    Args:
        user_vectors: ``(N, D)``.
        item_vectors: ``(V, D)`` every catalogue item.
        k: list length (at most V).
        exclude_indptr, exclude_indices: per-row exclusion sets as CSR (``indptr (N + 1,)``).
        excluded_items: item indices excluded for every row.
        targets: ``(N,)`` items that stay ranked even when excluded.
        chunk_size: rows scored at once (default: ~16M scores per chunk).

    Returns:
        ``(scores (N, k), items (N, k))``, best first. Where fewer than k items remain after
        exclusion, the missing places hold item ``-1`` and score ``-inf``.
    """
    _check_vectors(user_vectors, item_vectors)
    num_rows, num_items = user_vectors.shape[0], item_vectors.shape[0]
    exclude = _as_exclusion(exclude_indptr, exclude_indices, num_rows)
    excluded = torch.as_tensor(excluded_items, dtype=torch.int64) if excluded_items is not None else None
    chunk = chunk_size or max(1, _SCORE_BUDGET // max(num_items, 1))
    items_t = item_vectors.T
    out_scores, out_items = [], []
    for start in range(0, num_rows, chunk):
        stop = min(start + chunk, num_rows)
        scores = user_vectors[start:stop].to(item_vectors.dtype) @ items_t  # (n, V)
        mask = _exclusion_mask(
            stop - start, num_items, scores.device, _rows(exclude, start, stop), excluded,
            targets[start:stop] if targets is not None else None,
        )
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        values, idx = topk_lower_index(scores, k)
        if mask is not None:
            dropped = mask.gather(1, idx)
            idx = idx.masked_fill(dropped, -1)
            values = values.masked_fill(dropped, float("-inf"))
        out_scores.append(values)
        out_items.append(idx)
    if not out_items:
        kk = min(k, num_items)
        return item_vectors.new_empty((0, kk)), torch.empty((0, kk), dtype=torch.int64)
    return torch.cat(out_scores), torch.cat(out_items)


def _rows(exclude: tuple[torch.Tensor, torch.Tensor] | None, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if exclude is None:
        return None
    indptr, indices = exclude
    return indptr[start : stop + 1], indices


def user_item_csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's distinct items (e.g. of the train split) as CSR: ``(indptr (num_users + 1,), items)``.

    Items of user ``u`` are ``indices[indptr[u]:indptr[u + 1]]``, ascending, without duplicates.
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    if users.size and (users.min() < 0 or users.max() >= num_users):
        raise ValueError(f"users must be indices in [0, {num_users}); got {users.min()}..{users.max()}")
    order = np.lexsort((items, users))
    su, si = users[order], items[order]
    keep = np.ones(su.size, bool)
    keep[1:] = (su[1:] != su[:-1]) | (si[1:] != si[:-1])
    su, si = su[keep], si[keep]
    indptr = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(su, minlength=num_users), out=indptr[1:])
    return indptr, si


def exclusion_rows(csr: tuple[np.ndarray, np.ndarray], users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exclusion sets of evaluation rows, by their user index, as CSR over the rows."""
    indptr, indices = csr
    users = np.asarray(users, np.int64)
    start = indptr[users]
    lengths = indptr[users + 1] - start
    row_indptr = np.zeros(users.size + 1, np.int64)
    np.cumsum(lengths, out=row_indptr[1:])
    within = np.arange(row_indptr[-1]) - np.repeat(row_indptr[:-1], lengths)
    return row_indptr, indices[np.repeat(start, lengths) + within]


def popularity_thirds(counts: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(V,)`` int8 third per item: 0 head, 1 torso, 2 tail, by cumulative training interactions.

    See the module docstring: sorted by count (descending, ties by lower index), an item is head
    while the count before it is < total / 3, torso while < 2 total / 3, else tail (all zero-count
    items are tail; with no interactions at all every item is tail).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    order = np.lexsort((np.arange(counts.size), -counts))  # by count desc, then index asc
    before = np.cumsum(counts[order]) - counts[order]  # (V,) interactions ranked before each item
    thirds_sorted = np.where(3 * before < total, 0, np.where(3 * before < 2 * total, 1, 2)).astype(np.int8)
    if total == 0:
        thirds_sorted[:] = 2
    out = np.empty(counts.size, np.int8)
    out[order] = thirds_sorted
    return out


def popularity_vectors(counts: np.ndarray | torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(users (N, 1), items (V, 1))`` float64 whose dot products are the items' training counts."""
    items = torch.as_tensor(np.asarray(counts, dtype=np.float64)).reshape(-1, 1)
    return torch.ones((num_rows, 1), dtype=torch.float64), items


class RetrievalEvaluator:
    """Accumulates exact full-corpus metrics over batches of evaluation rows.

    Args:
        item_vectors (torch.Tensor): ``(V, D)`` every catalogue item (row = item index).
        ks (Sequence[int]): cut-offs. Default ``(10, 50, 100)``.
        item_counts (np.ndarray | None): ``(V,)`` training counts, for the popularity thirds.
        excluded_items (Sequence[int] | torch.Tensor | None): never ranked (e.g. ``[0]``, the OOV row).
        chunk_size (int | None): rows scored at once.

    Attributes:
        sums (torch.Tensor): float64 sums (rows, hits, NDCG, reciprocal ranks, per-third rows and
            hits); all-reduce with SUM across ranks.
        covered (torch.Tensor): ``(len(ks), V)`` uint8 items seen in some top-k list; MAX across ranks.
    """

    def __init__(
        self,
        item_vectors: torch.Tensor,
        ks: Sequence[int] = DEFAULT_KS,
        item_counts: np.ndarray | None = None,
        excluded_items: Sequence[int] | torch.Tensor | None = None,
        chunk_size: int | None = None,
    ):
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks: got {list(ks)}; give positive cut-offs, e.g. [10, 50, 100]")
        self.item_vectors = item_vectors
        self.num_items = int(item_vectors.shape[0])
        self.ks = sorted(set(int(k) for k in ks))
        self.excluded_items = torch.as_tensor(excluded_items if excluded_items is not None else [], dtype=torch.int64)
        self.chunk_size = chunk_size
        if item_counts is not None and len(item_counts) != self.num_items:
            raise ValueError(f"item_counts: got {len(item_counts)} counts for {self.num_items} items; give one per item row")
        device = item_vectors.device
        self.thirds = torch.as_tensor(popularity_thirds(item_counts), device=device) if item_counts is not None else None
        nk = len(self.ks)
        # layout: [rows, hits(k) x nk, ndcg(k) x nk, rr, third rows x 3, third hits x 3 x nk]
        self.sums = torch.zeros(1 + 2 * nk + 1 + 3 + 3 * nk, dtype=torch.float64, device=device)
        self.covered = torch.zeros((nk, self.num_items), dtype=torch.uint8, device=device)

    def update(
        self,
        user_vectors: torch.Tensor,
        targets: torch.Tensor | np.ndarray,
        exclude_indptr: np.ndarray | torch.Tensor | None = None,
        exclude_indices: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Score ``(n, D)`` rows with targets ``(n,)`` and optional CSR exclusion sets.

        Raises:
            ValueError: shapes disagree, NaN vectors, or a target outside ``[0, V)``.
        """
        _check_vectors(user_vectors, self.item_vectors)
        targets = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets), dtype=torch.int64)
        targets = targets.to(self.item_vectors.device)
        num_rows = user_vectors.shape[0]
        if targets.shape != (num_rows,):
            raise ValueError(f"targets: got shape {tuple(targets.shape)}; expected ({num_rows},), one item per row")
        if num_rows and (targets.min() < 0 or targets.max() >= self.num_items):
            raise ValueError(f"targets must be item indices in [0, {self.num_items}); got {targets.min().item()}..{targets.max().item()}")
        exclude = _as_exclusion(exclude_indptr, exclude_indices, num_rows)
        chunk = self.chunk_size or max(1, _SCORE_BUDGET // max(self.num_items, 1))
        for start in range(0, num_rows, chunk):
            stop = min(start + chunk, num_rows)
            self._update_chunk(user_vectors[start:stop], targets[start:stop], _rows(exclude, start, stop))

    def _update_chunk(self, users: torch.Tensor, targets: torch.Tensor, exclude) -> None:
        n = users.shape[0]
        scores = users.to(self.item_vectors.dtype) @ self.item_vectors.T  # (n, V)
        excluded = self.excluded_items if self.excluded_items.numel() else None
        mask = _exclusion_mask(n, self.num_items, scores.device, exclude, excluded, targets)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        rows = torch.arange(n, device=scores.device)
        target_score = scores[rows, targets][:, None]  # (n, 1)
        lower = torch.arange(self.num_items, device=scores.device)[None, :] < targets[:, None]  # (n, V)
        better = (scores > target_score) | ((scores == target_score) & lower)
        if mask is not None:
            better &= ~mask
        rank = 1 + better.sum(dim=1).to(torch.float64)  # (n,)
        _, top = topk_lower_index(scores, self.ks[-1])  # (n, k_max)
        if mask is not None:
            valid_top = ~mask.gather(1, top)
        else:
            valid_top = torch.ones_like(top, dtype=torch.bool)

        nk = len(self.ks)
        s = self.sums
        s[0] += n
        for i, k in enumerate(self.ks):
            hit = rank <= k
            s[1 + i] += hit.sum()
            s[1 + nk + i] += (hit / torch.log2(1 + rank)).sum()
            picked = top[:, :k][valid_top[:, :k]]
            self.covered[i, picked] = 1
        s[1 + 2 * nk] += (1.0 / rank).sum()
        if self.thirds is not None:
            third = self.thirds[targets].to(torch.int64)  # (n,)
            base = 2 + 2 * nk
            s[base : base + 3] += torch.bincount(third, minlength=3).to(torch.float64)
            for i, k in enumerate(self.ks):
                hits = torch.bincount(third, weights=(rank <= k).to(torch.float64), minlength=3)
                s[base + 3 + 3 * i : base + 6 + 3 * i] += hits

    def compute(self) -> dict[str, float]:
        """The metrics (module docstring) as ``{"recall@10": ..., "mrr": ..., "rows": ...}``."""
        nk = len(self.ks)
        s = self.sums.tolist()
        rows = s[0]
        eligible = self.num_items - int(torch.unique(self.excluded_items).numel())
        out: dict[str, float] = {"rows": rows}
        per_row = (lambda x: x / rows) if rows else (lambda x: float("nan"))
        for i, k in enumerate(self.ks):
            out[f"recall@{k}"] = per_row(s[1 + i])
            out[f"hit_rate@{k}"] = per_row(s[1 + i])
            out[f"ndcg@{k}"] = per_row(s[1 + nk + i])
            out[f"coverage@{k}"] = int(self.covered[i].sum()) / eligible if eligible else float("nan")
        out["mrr"] = per_row(s[1 + 2 * nk])
        if self.thirds is not None:
            base = 2 + 2 * nk
            for t, name in enumerate(THIRDS):
                third_rows = s[base + t]
                out[f"rows/{name}"] = third_rows
                for i, k in enumerate(self.ks):
                    hits = s[base + 3 + 3 * i + t]
                    out[f"recall@{k}/{name}"] = hits / third_rows if third_rows else float("nan")
        return out


def evaluate_retrieval(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    targets: torch.Tensor | np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_indptr: np.ndarray | torch.Tensor | None = None,
    exclude_indices: np.ndarray | torch.Tensor | None = None,
    excluded_items: Sequence[int] | torch.Tensor | None = None,
    item_counts: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """All metrics of the module docstring for N rows in one call (see :class:`RetrievalEvaluator`)."""
    evaluator = RetrievalEvaluator(item_vectors, ks, item_counts=item_counts, excluded_items=excluded_items, chunk_size=chunk_size)
    evaluator.update(user_vectors, targets, exclude_indptr, exclude_indices)
    return evaluator.compute()
