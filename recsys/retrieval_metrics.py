"""Full-corpus exact retrieval metrics: every query ranks EVERY catalogue item, two protocols.

    .venv/bin/python -m pytest tests/unit/test_retrieval_metrics.py -q

**Ranking.** A query (one evaluation row, or one user) has a vector ``u``, its targets ``T`` and
optionally an exclusion set ``E`` (CSR arrays). Item ``j`` scores ``s_j = <u, v_j>`` for every row
``j`` of the ``(V, D)`` item matrix, by batched matmul, chunked over queries so at most
``chunk_size x V`` scores exist at once (baselines hand in their own score blocks). No candidates
are sampled.

* **Exclusion**: items of ``E`` and of ``excluded_items`` (for every query, e.g. the OOV row 0)
  leave the ranking, EXCEPT the targets: a target listed in its own exclusion set (or in
  ``excluded_items``) stays ranked, so exclusion can never turn a hit into a miss by removing the
  answer.
* **Tie rule**: items are ordered by score, descending, and equal scores by LOWER item index
  first. ``exact_topk`` returns exactly this order (``torch.topk`` alone leaves ties
  unspecified); a target's rank uses the same rule, so "target in top-k" and "rank <= k" agree.
* **Rank**: ``rank(t) = 1 + #{j not excluded: s_j > s_t, or s_j == s_t and j < t}``, over the
  whole catalogue (never truncated at any k). Other targets count like any item.

**Protocol ``per_row``** (:class:`RetrievalEvaluator`): one query per evaluation row, one target
(the row's item). Means over rows::

    HitRate@k = Recall@k = 1[rank <= k]       (with one target they coincide; both reported)
    Precision@k = 1[rank <= k] / k
    NDCG@k    = 1[rank <= k] / log2(1 + rank) (the ideal DCG of one target is 1)
    MAP@k     = 1[rank <= k] / rank           (AP of one target)
    MRR       = 1 / rank                      (full rank, not truncated at any k)

**Protocol ``per_user``** (one query per user, all of its held-out items as targets, the LightGCN /
RecBole convention) is :class:`recsys.retrieval_protocols.PerUserEvaluator`; it shares the
counters, the ranking and the tie rule of this module.

Both protocols also report ``coverage@k = |union of the top-k lists| / (V - |excluded_items|)``
and, given training counts, recall by popularity third: ``recall@k/head`` etc. = the fraction of
(query, target) pairs whose target is in that third and in the query's top-k (``rows/head`` ...
count those pairs; with ``per_row`` they are rows). ``rows`` counts queries (rows or users).

**Popularity thirds** (:func:`popularity_thirds`), from the training counts: items sorted by
count, descending, ties by lower index; an item is *head* while the interactions of the items
ranked before it are fewer than 1/3 of all training interactions, *torso* while fewer than 2/3,
else *tail*. So the thirds split the INTERACTIONS (not the item count) into three near-equal
parts: the head is a handful of items, the tail most of the catalogue, items never seen in
training included.

**Popularity scores** (:func:`popularity_vectors`): score = training count, through the same
evaluator (users ``(N, 1)`` ones, items ``(V, 1)`` counts, float64 so counts are exact).

For several workers, each rank calls ``update`` on its own queries, then
``all_reduce(evaluator.sums, SUM)`` and ``all_reduce(evaluator.covered, MAX)`` (as uint8) make
every rank's ``compute()`` exact over all queries.
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
    "metric_names",
    "popularity_thirds",
    "popularity_vectors",
    "topk_lower_index",
    "union_csr",
    "user_item_csr",
]

DEFAULT_KS: tuple[int, ...] = (10, 50, 100)
THIRDS: tuple[str, ...] = ("head", "torso", "tail")
_SCORE_BUDGET = 1 << 24  # scores per chunk (64 MB of float32) when chunk_size is not given


def topk_lower_index(scores: torch.Tensor, k: int, *, floor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row of ``(n, V)`` scores, descending, ties by lower column index.

    ``torch.topk`` finds the k + 1 largest values; where the (k+1)-th differs from the k-th value
    ``c`` (no score outside the k picks equals ``c``: nearly every row of real scores) its first k
    picks are the answer. In rows where more scores equal ``c`` than places are left, every score
    ``> c`` is in and the lowest indices of the scores ``== c`` fill the rest. The k picks are then ordered by score, descending,
    ascending index within ties (a sort by index, then a stable sort by score).

    Args:
        scores: ``(n, V)``.
        k: list length.
        floor: for callers that drop every pick scoring ``<= floor`` (e.g. item-kNN's zero
            similarities): which of such tied picks fill the list is then left to ``torch.topk``.

    Returns:
        ``(values (n, k), indices (n, k))`` with ``k = min(k, V)``.
    """
    n, num_items = scores.shape
    k = min(k, num_items)
    if k == 0 or n == 0:
        empty = torch.empty((n, k), dtype=torch.int64, device=scores.device)
        return scores.new_empty((n, k)), empty
    # One more than k: the (k+1)-th largest equals the k-th exactly where more than k scores reach
    # the k-th value, i.e. where ties cross the cut (no extra pass over the scores).
    values, indices = torch.topk(scores, min(k + 1, num_items), dim=1)  # ties at the cut: any of them
    kth = values[:, k - 1 : k]  # (n, 1)
    tied = values[:, k] == kth[:, 0] if k < num_items else torch.zeros(n, dtype=torch.bool, device=scores.device)
    values, indices = values[:, :k], indices[:, :k].contiguous()
    if floor is not None:
        tied &= kth[:, 0] > floor
    ambiguous = tied.nonzero()[:, 0]
    if ambiguous.numel():
        sub, sub_kth = scores[ambiguous], kth[ambiguous]
        greater = sub > sub_kth
        equal = sub == sub_kth
        need = k - greater.sum(dim=1, keepdim=True)  # places left for ties at the k-th value
        take = greater | (equal & (torch.cumsum(equal, dim=1) <= need))  # exactly k per row
        indices[ambiguous] = take.nonzero()[:, 1].view(-1, k)
    indices = torch.sort(indices, dim=1).values  # ascending index ...
    values = scores.gather(1, indices)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices  # ... kept within ties
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


def _as_exclusion(exclude_indptr, exclude_indices, num_rows: int, name: str = "exclude_indptr") -> tuple[torch.Tensor, torch.Tensor] | None:
    if exclude_indptr is None:
        return None
    indptr = torch.as_tensor(np.asarray(exclude_indptr), dtype=torch.int64)
    indices = torch.as_tensor(np.asarray(exclude_indices), dtype=torch.int64)
    if indptr.numel() != num_rows + 1:
        raise ValueError(f"{name}: got {indptr.numel()} offsets for {num_rows} rows; a CSR needs rows + 1")
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


def union_csr(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the union of two :func:`user_item_csr` sets (same number of users), as one CSR."""
    (pa_, ia), (pb, ib) = a, b
    if pa_.size != pb.size:
        raise ValueError(f"union_csr: CSRs over {pa_.size - 1} and {pb.size - 1} users; give the same users")
    num_users = pa_.size - 1
    users = np.concatenate([np.repeat(np.arange(num_users), np.diff(pa_)), np.repeat(np.arange(num_users), np.diff(pb))])
    return user_item_csr(users, np.concatenate([ia, ib]), num_users)


class _Evaluator:
    """Counters and :meth:`compute` shared by both protocols (module docstring).

    ``sums`` layout, ``nk = len(ks)``: ``[queries, hit_rate x nk, recall x nk, precision x nk,
    ndcg x nk, map x nk, rr, third pairs x 3, third hits 3 x nk]``.
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
        self.sums = torch.zeros(5 + 8 * nk, dtype=torch.float64, device=device)
        self.covered = torch.zeros((nk, self.num_items), dtype=torch.uint8, device=device)

    @property
    def rows_per_chunk(self) -> int:
        """Queries scored at once (``chunk_size``, or ~16M scores per chunk)."""
        return self.chunk_size or max(1, _SCORE_BUDGET // max(self.num_items, 1))

    def _slot(self, name: str, i: int = 0) -> int:
        nk = len(self.ks)
        base = {"hit_rate": 1, "recall": 1 + nk, "precision": 1 + 2 * nk, "ndcg": 1 + 3 * nk, "map": 1 + 4 * nk}
        if name in base:
            return base[name] + i
        if name == "rr":
            return 1 + 5 * nk
        if name == "third_pairs":
            return 2 + 5 * nk + i
        return 5 + 5 * nk + i  # third hits: i = 3 * k_index + third

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        return users.to(self.item_vectors.dtype) @ self.item_vectors.T  # (n, V)

    def _count_thirds(self, pair_items: torch.Tensor, pair_hit: dict[int, torch.Tensor]) -> None:
        """Per-third pair counts and hits; ``pair_hit[k]`` True where the pair's target is in the top-k."""
        if self.thirds is None:
            return
        third = self.thirds[pair_items].to(torch.int64)  # (pairs,)
        base = self._slot("third_pairs")
        self.sums[base : base + 3] += torch.bincount(third, minlength=3).to(torch.float64)
        for i, k in enumerate(self.ks):
            at = self._slot("third_hits", 3 * i)
            self.sums[at : at + 3] += torch.bincount(third, weights=pair_hit[k].to(torch.float64), minlength=3)

    def _cover(self, top: torch.Tensor, valid_top: torch.Tensor) -> None:
        for i, k in enumerate(self.ks):
            self.covered[i, top[:, :k][valid_top[:, :k]]] = 1

    def compute(self) -> dict[str, float]:
        """The metrics (module docstring) as ``{"recall@10": ..., "mrr": ..., "rows": ...}``."""
        s = self.sums.tolist()
        rows = s[0]
        eligible = self.num_items - int(torch.unique(self.excluded_items).numel())
        out: dict[str, float] = {"rows": rows}
        per_row = (lambda x: x / rows) if rows else (lambda x: float("nan"))
        for i, k in enumerate(self.ks):
            out[f"recall@{k}"] = per_row(s[self._slot("recall", i)])
            out[f"hit_rate@{k}"] = per_row(s[self._slot("hit_rate", i)])
            out[f"precision@{k}"] = per_row(s[self._slot("precision", i)])
            out[f"ndcg@{k}"] = per_row(s[self._slot("ndcg", i)])
            out[f"map@{k}"] = per_row(s[self._slot("map", i)])
            out[f"coverage@{k}"] = int(self.covered[i].sum()) / eligible if eligible else float("nan")
        out["mrr"] = per_row(s[self._slot("rr")])
        if self.thirds is not None:
            for t, name in enumerate(THIRDS):
                third_rows = s[self._slot("third_pairs", t)]
                out[f"rows/{name}"] = third_rows
                for i, k in enumerate(self.ks):
                    hits = s[self._slot("third_hits", 3 * i + t)]
                    out[f"recall@{k}/{name}"] = hits / third_rows if third_rows else float("nan")
        return out


class RetrievalEvaluator(_Evaluator):
    """Protocol ``per_row``: accumulates exact full-corpus metrics over batches of evaluation rows.

    Args:
        item_vectors (torch.Tensor): ``(V, D)`` every catalogue item (row = item index).
        ks (Sequence[int]): cut-offs. Default ``(10, 50, 100)``.
        item_counts (np.ndarray | None): ``(V,)`` training counts, for the popularity thirds.
        excluded_items (Sequence[int] | torch.Tensor | None): never ranked (e.g. ``[0]``, the OOV row).
        chunk_size (int | None): rows scored at once.

    Attributes:
        sums (torch.Tensor): float64 sums (see :class:`_Evaluator`); all-reduce with SUM across ranks.
        covered (torch.Tensor): ``(len(ks), V)`` uint8 items seen in some top-k list; MAX across ranks.
    """

    protocol = "per_row"

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
        self._each_chunk(user_vectors.shape[0], targets, exclude_indptr, exclude_indices,
                         lambda start, stop: self._scores(user_vectors[start:stop]), owned=True)

    def update_scores(
        self,
        scores: torch.Tensor,
        targets: torch.Tensor | np.ndarray,
        exclude_indptr: np.ndarray | torch.Tensor | None = None,
        exclude_indices: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Like :meth:`update` for a model that is not a dot product: ``(n, V)`` scores of the rows."""
        if scores.ndim != 2 or scores.shape[1] != self.num_items:
            raise ValueError(f"scores: got shape {tuple(scores.shape)}; expected (n, {self.num_items}), one column per item")
        self._each_chunk(scores.shape[0], targets, exclude_indptr, exclude_indices, lambda start, stop: scores[start:stop])

    def _each_chunk(self, num_rows: int, targets, exclude_indptr, exclude_indices, score, owned: bool = False) -> None:
        targets = torch.from_numpy(np.array(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64))  # own copy
        targets = targets.to(self.item_vectors.device)
        if targets.shape != (num_rows,):
            raise ValueError(f"targets: got shape {tuple(targets.shape)}; expected ({num_rows},), one item per row")
        if num_rows and (targets.min() < 0 or targets.max() >= self.num_items):
            raise ValueError(f"targets must be item indices in [0, {self.num_items}); got {targets.min().item()}..{targets.max().item()}")
        exclude = _as_exclusion(exclude_indptr, exclude_indices, num_rows)
        chunk = self.rows_per_chunk
        for start in range(0, num_rows, chunk):
            stop = min(start + chunk, num_rows)
            self._update_chunk(score(start, stop), targets[start:stop], _rows(exclude, start, stop), owned)

    def _update_chunk(self, scores: torch.Tensor, targets: torch.Tensor, exclude, owned: bool = False) -> None:
        # One (n, V) buffer: excluded items are set to -inf in place (the targets' own scores put
        # back), which ranks them below every finite score, so no (n, V) mask is needed; the
        # lower-index tie rule is applied only in the rows where another item ties the target.
        n, device = scores.shape[0], scores.device
        rows = torch.arange(n, device=device)
        target_score = scores[rows, targets]  # (n,) before any exclusion
        if self.excluded_items.numel() or exclude is not None:
            if not owned:
                scores = scores.clone()  # the caller's scores stay as they were
            if self.excluded_items.numel():
                scores[:, self.excluded_items.to(device)] = float("-inf")
            if exclude is not None:
                indptr, indices = exclude
                counts = (indptr[1:] - indptr[:-1]).to(device)  # (n,)
                scores[torch.repeat_interleave(rows, counts), indices[int(indptr[0]) : int(indptr[-1])].to(device)] = float("-inf")
            scores[rows, targets] = target_score  # a target always stays ranked
        ts = target_score[:, None]  # (n, 1)
        greater = (scores > ts).sum(dim=1)  # (n,)
        ties = (scores == ts).sum(dim=1)  # (n,) the target itself included
        tied = (ties > 1).nonzero()[:, 0]
        if tied.numel():  # equal scores at a lower index rank before the target
            lower = torch.arange(self.num_items, device=device)[None, :] < targets[tied, None]
            greater[tied] += ((scores[tied] == ts[tied]) & lower).sum(dim=1)
        rank = 1 + greater.to(torch.float64)  # (n,)
        values, top = topk_lower_index(scores, self.ks[-1])  # (n, k_max)
        valid_top = values > float("-inf")  # excluded items fill the list only past the last ranked one

        s = self.sums
        s[0] += n
        pair_hit = {}
        for i, k in enumerate(self.ks):
            hit = rank <= k
            pair_hit[k] = hit
            s[self._slot("hit_rate", i)] += hit.sum()
            s[self._slot("recall", i)] += hit.sum()
            s[self._slot("precision", i)] += hit.sum().to(torch.float64) / k
            s[self._slot("ndcg", i)] += (hit / torch.log2(1 + rank)).sum()
            s[self._slot("map", i)] += (hit / rank).sum()
        s[self._slot("rr")] += (1.0 / rank).sum()
        self._cover(top, valid_top)
        self._count_thirds(targets, pair_hit)


def metric_names(ks: Sequence[int], thirds: bool = True) -> tuple[str, ...]:
    """The metric keys one evaluation yields (either protocol), without ``rows`` / ``rows/*``."""
    empty = RetrievalEvaluator(torch.zeros((2, 1)), ks, item_counts=np.ones(2, np.int64) if thirds else None)
    return tuple(k for k in empty.compute() if k != "rows" and not k.startswith("rows/"))


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
