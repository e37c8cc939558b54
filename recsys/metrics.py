"""Reference quality metrics in numpy: exact binary AUC, logloss, recall@k.

    .venv/bin/python -m pytest tests/unit/test_metrics.py

These are the reference implementations: the synthetic generator's oracle uses them, training
and benchmarks compare against them. They are exact (no binning, no sampling) and take 1-D
arrays of any length that fits in memory (``auc`` sorts once: O(n log n)).
"""

from __future__ import annotations

import numpy as np


def _check_pair(labels: np.ndarray, scores: np.ndarray, scores_name: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).ravel()  # (n,)
    scores = np.asarray(scores, dtype=np.float64).ravel()  # (n,)
    if labels.shape != scores.shape:
        raise ValueError(f"labels has {labels.size} values and {scores_name} {scores.size}; they must match")
    bad = ~((labels == 0.0) | (labels == 1.0))
    if bad.any():
        raise ValueError(f"labels must be 0 or 1; got {labels[bad][:3].tolist()} (and {int(bad.sum())} in all)")
    if np.isnan(scores).any():
        raise ValueError(f"{scores_name} holds {int(np.isnan(scores).sum())} NaN values; all must be numbers")
    return labels, scores


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact area under the ROC curve (Mann-Whitney U), tied scores counted as one half.

    Ranks all scores once, gives each group of tied scores the average of its ranks, and
    returns ``(sum of positive ranks - P (P + 1) / 2) / (P N)``.

    Args:
        labels: ``(n,)`` 0/1 click labels.
        scores: ``(n,)`` any real scores (probabilities, logits); higher means more likely 1.

    Returns:
        The probability that a random positive scores above a random negative (ties: 1/2).

    Raises:
        ValueError: shapes differ, a label is not 0/1, a score is NaN, or only one class occurs.
    """
    labels, scores = _check_pair(labels, scores, "scores")
    n_pos = float(labels.sum())
    n_neg = float(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {int(n_pos)} positives and {int(n_neg)} negatives")
    order = np.argsort(scores, kind="mergesort")  # (n,)
    sorted_scores = scores[order]  # (n,)
    # Tie groups: [starts[g], ends[g]) hold equal scores; their 1-based ranks average to (s + e + 1) / 2.
    new_group = np.empty(sorted_scores.size, dtype=bool)  # (n,)
    new_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)  # (G,)
    ends = np.append(starts[1:], sorted_scores.size)  # (G,)
    group_rank = (starts + ends + 1) / 2.0  # (G,)
    ranks = np.repeat(group_rank, ends - starts)  # (n,) rank of sorted_scores[i]
    pos_rank_sum = float(np.dot(ranks, labels[order]))
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy ``-mean(y log p + (1 - y) log(1 - p))`` in nats.

    Args:
        labels: ``(n,)`` 0/1 labels.
        probabilities: ``(n,)`` predicted click probabilities in ``[0, 1]``.
        eps: probabilities are clipped to ``[eps, 1 - eps]`` so a confident miss costs a finite
            ``-log(eps)`` instead of infinity. Default 1e-12.

    Raises:
        ValueError: shapes differ, a label is not 0/1, or a probability lies outside ``[0, 1]``.
    """
    labels, p = _check_pair(labels, probabilities, "probabilities")
    if labels.size == 0:
        raise ValueError("logloss needs at least one row; got 0")
    if (p < 0).any() or (p > 1).any():
        raise ValueError(f"probabilities must lie in [0, 1]; got min {p.min():.6g}, max {p.max():.6g}")
    p = np.clip(p, eps, 1.0 - eps)  # (n,)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)))


def recall_at_k(top_items: np.ndarray, true_items: np.ndarray) -> float:
    """Fraction of rows whose true item is among that row's top-k items.

    Args:
        top_items: ``(n, k)`` retrieved item ids per row (any order).
        true_items: ``(n,)`` the item each row actually interacted with.

    Raises:
        ValueError: the row counts differ or ``top_items`` is not 2-D.
    """
    top_items = np.asarray(top_items)
    true_items = np.asarray(true_items).ravel()
    if top_items.ndim != 2 or top_items.shape[0] != true_items.size:
        raise ValueError(
            f"top_items must have shape (n, k) with n = len(true_items) = {true_items.size}; got {top_items.shape}"
        )
    if true_items.size == 0:
        raise ValueError("recall_at_k needs at least one row; got 0")
    hits = (top_items == true_items[:, None]).any(axis=1)  # (n,)
    return float(hits.mean())
