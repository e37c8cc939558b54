"""The ``per_user`` protocol and the queries of a split under either protocol.

    .venv/bin/python -m pytest tests/unit/test_retrieval_metrics.py -q

Ranking, exclusion, tie rule, the ``per_row`` protocol and the counters both protocols share are in
:mod:`recsys.retrieval_metrics`.

**Protocol ``per_user``** (:class:`PerUserEvaluator`, the LightGCN / RecBole convention): one
query per user with at least one held-out item; ``T`` = the user's DISTINCT held-out items of the
split. With ``hits@k`` = targets among the top-k list and ``p`` the 1-based list position, means
over users::

    Recall@k    = hits@k / |T|
    Precision@k = hits@k / k
    HitRate@k   = 1[hits@k > 0]
    NDCG@k      = sum_{hit at p <= k} 1/log2(1 + p) / sum_{p=1}^{min(|T|, k)} 1/log2(1 + p)
    MAP@k       = sum_{hit at p <= k} (hits@p / p) / min(|T|, k)
    MRR         = 1 / rank of the best-ranked target (full rank)

A split's rows become the evaluators' queries through :func:`split_queries`
(:class:`Queries`); :func:`exclusion_for` says which splits' items leave a user's ranking under
``model.eval_exclude``; :func:`new_evaluator` picks the protocol's evaluator; :func:`rank_scores`
feeds any scorer (the baselines) through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from recsys.retrieval_metrics import (
    DEFAULT_KS,
    RetrievalEvaluator,
    _as_exclusion,
    _check_vectors,
    _Evaluator,
    _exclusion_mask,
    _rows,
    exclusion_rows,
    topk_lower_index,
    union_csr,
    user_item_csr,
)

__all__ = [
    "EXCLUDABLE",
    "PROTOCOLS",
    "PerUserEvaluator",
    "Queries",
    "evaluate_per_user",
    "exclusion_for",
    "new_evaluator",
    "rank_scores",
    "split_queries",
]

PROTOCOLS: tuple[str, ...] = ("per_row", "per_user")


class PerUserEvaluator(_Evaluator):
    """Protocol ``per_user``: one query per user, all of the user's held-out items as targets.

    Same arguments and attributes as :class:`RetrievalEvaluator`; :meth:`update` takes the users'
    targets as CSR (``target_indptr (n + 1,)``, distinct items per user, at least one each).
    """

    protocol = "per_user"

    def update(
        self,
        user_vectors: torch.Tensor,
        target_indptr: np.ndarray | torch.Tensor,
        target_indices: np.ndarray | torch.Tensor,
        exclude_indptr: np.ndarray | torch.Tensor | None = None,
        exclude_indices: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Score ``(n, D)`` users against their held-out items ``T_u`` (CSR) with exclusions ``E_u``.

        Raises:
            ValueError: shapes disagree, NaN vectors, a user without targets, or a target outside ``[0, V)``.
        """
        _check_vectors(user_vectors, self.item_vectors)
        self._each_chunk(user_vectors.shape[0], target_indptr, target_indices, exclude_indptr, exclude_indices,
                         lambda start, stop: self._scores(user_vectors[start:stop]))

    def update_scores(
        self,
        scores: torch.Tensor,
        target_indptr: np.ndarray | torch.Tensor,
        target_indices: np.ndarray | torch.Tensor,
        exclude_indptr: np.ndarray | torch.Tensor | None = None,
        exclude_indices: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Like :meth:`update` for a model that is not a dot product: ``(n, V)`` scores of the users."""
        if scores.ndim != 2 or scores.shape[1] != self.num_items:
            raise ValueError(f"scores: got shape {tuple(scores.shape)}; expected (n, {self.num_items}), one column per item")
        self._each_chunk(scores.shape[0], target_indptr, target_indices, exclude_indptr, exclude_indices,
                         lambda start, stop: scores[start:stop])

    def _each_chunk(self, num_users: int, target_indptr, target_indices, exclude_indptr, exclude_indices, score) -> None:
        targets = _as_exclusion(target_indptr, target_indices, num_users, "target_indptr")
        if targets is None:
            raise ValueError("target_indptr: give each user's held-out items as CSR")
        tptr, tidx = targets
        counts = tptr[1:] - tptr[:-1]
        if num_users and int(counts.min()) < 1:
            raise ValueError(f"target_indptr: user {int(torch.argmin(counts))} of this batch has no held-out item; per_user ranks only users with one or more")
        used = tidx[int(tptr[0]) : int(tptr[-1])]
        if used.numel() and (used.min() < 0 or used.max() >= self.num_items):
            raise ValueError(f"targets must be item indices in [0, {self.num_items}); got {used.min().item()}..{used.max().item()}")
        exclude = _as_exclusion(exclude_indptr, exclude_indices, num_users)
        chunk = self.rows_per_chunk
        for start in range(0, num_users, chunk):
            stop = min(start + chunk, num_users)
            self._update_chunk(score(start, stop), (tptr[start : stop + 1], tidx), _rows(exclude, start, stop))

    def _update_chunk(self, scores: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor], exclude) -> None:
        n, device = scores.shape[0], scores.device
        tptr, tidx = targets
        is_target = torch.zeros((n, self.num_items), dtype=torch.bool, device=device)  # (n, V)
        lengths = (tptr[1:] - tptr[:-1]).to(device)
        is_target[torch.repeat_interleave(torch.arange(n, device=device), lengths), tidx[int(tptr[0]) : int(tptr[-1])].to(device)] = True
        excluded = self.excluded_items if self.excluded_items.numel() else None
        mask = _exclusion_mask(n, self.num_items, device, exclude, excluded, None)
        if mask is not None:
            mask &= ~is_target  # targets always stay ranked
            scores = scores.masked_fill(mask, float("-inf"))
        num_targets = is_target.sum(dim=1).to(torch.float64)  # (n,) distinct held-out items
        _, top = topk_lower_index(scores, self.ks[-1])  # (n, k_max), k_max <= V
        valid_top = ~mask.gather(1, top) if mask is not None else torch.ones_like(top, dtype=torch.bool)
        hit_at = is_target.gather(1, top).to(torch.float64)  # (n, k_max) 1 where position p holds a target
        width = top.shape[1]
        position = torch.arange(1, width + 1, dtype=torch.float64, device=device)  # (k_max,)
        discount = 1.0 / torch.log2(1 + position)
        ideal = torch.cumsum(discount, 0)  # ideal DCG of min(|T|, k) targets, by that count
        cum_hits = torch.cumsum(hit_at, dim=1)  # (n, k_max)
        precision_at = cum_hits / position  # (n, k_max)

        # the best-ranked target (highest score, then lowest index) and its full rank
        target_scores = scores.masked_fill(~is_target, float("-inf"))
        best = target_scores.max(dim=1, keepdim=True).values  # (n, 1)
        best_item = (is_target & (scores == best)).to(torch.uint8).argmax(dim=1, keepdim=True)  # first = lowest index
        lower = torch.arange(self.num_items, device=device)[None, :] < best_item
        better = (scores > best) | ((scores == best) & lower)
        if mask is not None:
            better &= ~mask
        best_rank = 1 + better.sum(dim=1).to(torch.float64)  # (n,)

        # list position of every (user, target) pair, for the popularity thirds
        pair_rows, pair_items = is_target.nonzero(as_tuple=True)
        position_of = torch.full((n, self.num_items), width + 1, dtype=torch.int32, device=device)
        position_of.scatter_(1, top, torch.arange(1, width + 1, dtype=torch.int32, device=device).expand(n, width).contiguous())
        pair_position = position_of[pair_rows, pair_items]

        s = self.sums
        s[0] += n
        pair_hit = {}
        for i, k in enumerate(self.ks):
            kk = min(k, width)
            hits = cum_hits[:, kk - 1]  # (n,)
            limit = torch.clamp(num_targets, max=k)  # min(|T|, k)
            s[self._slot("hit_rate", i)] += (hits > 0).sum()
            s[self._slot("recall", i)] += (hits / num_targets).sum()
            s[self._slot("precision", i)] += hits.sum() / k
            dcg = (hit_at[:, :kk] * discount[:kk]).sum(dim=1)
            s[self._slot("ndcg", i)] += (dcg / ideal[(limit.to(torch.int64) - 1).clamp(max=width - 1)]).sum()
            s[self._slot("map", i)] += ((precision_at[:, :kk] * hit_at[:, :kk]).sum(dim=1) / limit).sum()
            pair_hit[k] = pair_position <= k
        s[self._slot("rr")] += (1.0 / best_rank).sum()
        self._cover(top, valid_top)
        self._count_thirds(pair_items, pair_hit)


def evaluate_per_user(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    target_indptr: np.ndarray | torch.Tensor,
    target_indices: np.ndarray | torch.Tensor,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_indptr: np.ndarray | torch.Tensor | None = None,
    exclude_indices: np.ndarray | torch.Tensor | None = None,
    excluded_items: Sequence[int] | torch.Tensor | None = None,
    item_counts: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """The ``per_user`` metrics of N users in one call (see :class:`PerUserEvaluator`)."""
    evaluator = PerUserEvaluator(item_vectors, ks, item_counts=item_counts, excluded_items=excluded_items, chunk_size=chunk_size)
    evaluator.update(user_vectors, target_indptr, target_indices, exclude_indptr, exclude_indices)
    return evaluator.compute()


# -- the queries of a split under a protocol ---------------------------------------------------------


@dataclass(frozen=True)
class Queries:
    """What one evaluation split asks under a protocol, in the form the evaluators take.

    ``per_row``: one query per row (``users[q]``, ``targets[q]`` its item). ``per_user``: one query
    per user with at least one held-out item, ascending user index (``users[q]``; its distinct
    held-out items ``targets[target_indptr[q]:target_indptr[q + 1]]``). ``exclude`` holds each
    USER's exclusion set (CSR over user indices, or None); :meth:`block` expands it to the queries.
    """

    protocol: str
    users: np.ndarray
    targets: np.ndarray
    target_indptr: np.ndarray | None = None
    exclude: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.users.size)

    @property
    def pairs(self) -> int:
        """(query, target) pairs: rows for ``per_row``, distinct held-out (user, item) pairs for ``per_user``."""
        return int(self.targets.size)

    def block(self, start: int, stop: int) -> tuple[Any, ...]:
        """The evaluator's arguments after the vectors / scores for queries ``[start, stop)``."""
        users = self.users[start:stop]
        eptr = eidx = None
        if self.exclude is not None:
            eptr, eidx = exclusion_rows(self.exclude, users)
        if self.protocol == "per_row":
            return self.targets[start:stop], eptr, eidx
        tptr = self.target_indptr[start : stop + 1]
        return tptr - tptr[0], self.targets[tptr[0] : tptr[-1]], eptr, eidx


def split_queries(
    protocol: str, users: np.ndarray, items: np.ndarray, num_users: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> Queries:
    """The :class:`Queries` of a split's ``(user, item)`` rows (row order) under ``protocol``.

    Raises:
        ValueError: an unknown protocol (names the allowed ones).
    """
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    if protocol == "per_row":
        return Queries(protocol, users, items, None, exclude)
    if protocol == "per_user":
        held_out = user_item_csr(users, items, num_users)
        query_users = np.flatnonzero(np.diff(held_out[0]))
        tptr, tidx = exclusion_rows(held_out, query_users)
        return Queries(protocol, query_users, tidx, tptr, exclude)
    raise ValueError(f"model.eval_protocol: got {protocol!r}; allowed: {', '.join(PROTOCOLS)}")


def new_evaluator(protocol: str, item_vectors: torch.Tensor, ks: Sequence[int], **kwargs: Any) -> "_Evaluator":
    """:class:`RetrievalEvaluator` (``per_row``) or :class:`PerUserEvaluator` (``per_user``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"model.eval_protocol: got {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    return (RetrievalEvaluator if protocol == "per_row" else PerUserEvaluator)(item_vectors, ks, **kwargs)


def rank_scores(evaluator: "_Evaluator", queries: Queries, scores_of: Callable[[np.ndarray], torch.Tensor]) -> None:
    """Feed every query to ``evaluator`` with scores from ``scores_of(users) -> (n, V)``, chunked."""
    chunk = evaluator.rows_per_chunk
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        evaluator.update_scores(scores_of(queries.users[start:stop]), *queries.block(start, stop))


EXCLUDABLE: tuple[str, ...] = ("train", "validation")


def exclusion_for(
    split: str, exclude: Sequence[str], seen: Callable[[str], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Each user's exclusion set when ``split`` is ranked with ``model.eval_exclude`` = ``exclude``.

    The test split leaves out the items of every split named in ``exclude``; the validation split
    only the training items (if ``train`` is named): validation never excludes itself.
    ``seen(name)`` gives a split's :func:`user_item_csr`. None: nothing is excluded.
    """
    names = [name for name in exclude if split == "test" or name == "train"]
    if not names:
        return None
    out = seen(names[0])
    for name in names[1:]:
        out = union_csr(out, seen(name))
    return out
