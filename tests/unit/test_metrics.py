"""Reference metrics against naive definitions, torchmetrics and torch.

    .venv/bin/python -m pytest tests/unit/test_metrics.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from recsys import metrics


def naive_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """O(n^2) Mann-Whitney: every (positive, negative) pair, a tie counts one half."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    diff = pos[:, None] - neg[None, :]  # (P, N)
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("distinct", [3, 20, None])  # few distinct scores = many ties
def test_auc_matches_pairwise_reference_with_ties(seed: int, distinct: int | None) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.3).astype(np.float64)
    scores = rng.normal(size=400) + labels
    if distinct is not None:
        scores = np.round(scores * distinct / 8) / distinct
    assert metrics.auc(labels, scores) == pytest.approx(naive_auc(labels, scores), abs=1e-12)


def test_auc_matches_torchmetrics() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(5000) < 0.25).astype(np.int64)
    scores = 1 / (1 + np.exp(-(rng.normal(size=5000) + 1.2 * labels)))
    expected = BinaryAUROC(thresholds=None)(torch.from_numpy(scores), torch.from_numpy(labels)).item()
    assert metrics.auc(labels, scores) == pytest.approx(expected, abs=1e-6)


def test_auc_edge_cases() -> None:
    y = np.array([0, 0, 1, 1])
    assert metrics.auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert metrics.auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert metrics.auc(y, np.full(4, 0.7)) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        metrics.auc(np.ones(3), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="must match"):
        metrics.auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_logloss_matches_torch_bce() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.99, 2000)
    y = (rng.random(2000) < p).astype(np.float64)
    expected = torch.nn.functional.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(y)).item()
    assert metrics.logloss(y, p) == pytest.approx(expected, rel=1e-12)


def test_logloss_clips_and_validates() -> None:
    assert np.isfinite(metrics.logloss(np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        metrics.logloss(np.array([1.0]), np.array([1.5]))


def test_recall_at_k() -> None:
    top = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert metrics.recall_at_k(top, np.array([3, 0, 7])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="top_items must have shape"):
        metrics.recall_at_k(top[0], np.array([3]))
