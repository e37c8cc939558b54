"""Classic retrieval baselines beside every two-tower run: popularity, item-kNN, ALS.

    .venv/bin/python -m pytest tests/unit/baselines -q

``model.baselines`` names them (default all three; item-kNN and ALS only while the catalogue has
at most ``model.baseline_max_items`` items). Each is fitted on the SAME training rows as the
model, its few hyperparameters are chosen on the validation split from the small grid of its
class (the best validation value of the selection metric, ties to the earlier grid point), and
the chosen fit is ranked on validation and test by the SAME evaluator with the same protocol,
exclusions and tie rule (:mod:`recsys.retrieval_protocols`). Everything is deterministic given
the seed.

A new baseline is one module with a class that has ``name``, ``label``, ``grid`` and ``fit``
(:class:`~recsys.baselines.base.Baseline`) plus one line in :data:`BASELINES`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from recsys.baselines.als import ALS
from recsys.baselines.base import Baseline, Fitted, Interactions
from recsys.baselines.itemknn import ItemKNN
from recsys.baselines.popularity import Popularity
from recsys.retrieval_protocols import Queries, new_evaluator, rank_scores

__all__ = ["BASELINES", "Baseline", "BaselineResult", "Fitted", "Interactions", "evaluate_baselines", "rank_fitted"]

# name -> class; the order is the summary line's order.
BASELINES: dict[str, type] = {cls.name: cls for cls in (ALS, ItemKNN, Popularity)}
# Fitted on the training matrix, so a huge catalogue would cost more than the model's run.
SCALES_WITH_CATALOGUE: frozenset[str] = frozenset({"als", "itemknn"})


@dataclass(frozen=True)
class BaselineResult:
    """One baseline's outcome: the chosen grid point, its metrics per split, the grid's scores."""

    name: str
    label: str
    params: Mapping[str, Any]
    validation: dict[str, float]
    test: dict[str, float] | None
    grid: list[dict[str, Any]] = field(default_factory=list)  # [{"params": ..., select: value}]
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """What ``results.json`` keeps besides the metrics."""
        return {"label": self.label, "params": dict(self.params), "grid": self.grid, "seconds": round(self.seconds, 3)}


def rank_fitted(
    fitted: Fitted, queries: Queries, protocol: str, num_items: int, ks: Sequence[int],
    item_counts: np.ndarray | None, excluded_items: Sequence[int],
) -> dict[str, float]:
    """All metrics of one fitted baseline on one split's queries (the model's evaluator)."""
    evaluator = new_evaluator(protocol, torch.zeros((num_items, 1)), ks, item_counts=item_counts, excluded_items=excluded_items)
    rank_scores(evaluator, queries, fitted.scores)
    return evaluator.compute()


def evaluate_baselines(
    names: Sequence[str],
    train: Interactions,
    validation: Queries,
    test: Queries | None,
    *,
    ks: Sequence[int],
    select: str,
    item_counts: np.ndarray | None = None,
    excluded_items: Sequence[int] = (0,),
    seed: int = 0,
    num_threads: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, BaselineResult]:
    """Fit, choose on validation, and rank each named baseline (module docstring).

    Args:
        names: keys of :data:`BASELINES`, in the caller's order.
        train: the training rows.
        validation / test: the splits' queries (their protocol and exclusions included).
        ks: cut-offs; ``select``: the validation metric that picks a grid point (e.g. ``recall@20``).
        item_counts: training counts for the popularity thirds.
        excluded_items: never ranked (the OOV row 0).
        seed: ALS's random state. num_threads: threads for the fits.
        log: called with one line per baseline.

    Raises:
        ValueError: an unknown name or a selection metric the evaluation does not yield.
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"model.baselines: got {unknown}; allowed: {sorted(BASELINES)}")
    out: dict[str, BaselineResult] = {}
    rank = lambda fitted, queries: rank_fitted(  # noqa: E731
        fitted, queries, queries.protocol, train.num_items, ks, item_counts, excluded_items
    )
    for name in names:
        baseline = BASELINES[name]()
        start = time.perf_counter()
        best = None
        grid = []
        for params in baseline.grid:
            fitted = baseline.fit(train, params, seed=seed, num_threads=num_threads)
            metrics = rank(fitted, validation)
            if select not in metrics:
                raise ValueError(f"baseline selection metric {select!r} is not among {sorted(metrics)}")
            grid.append({"params": dict(params), select: metrics[select]})
            if best is None or metrics[select] > best[1][select]:
                best = (params, metrics, fitted)
        params, val_metrics, fitted = best
        test_metrics = rank(fitted, test) if test is not None else None
        result = BaselineResult(name, baseline.label, params, val_metrics, test_metrics, grid, time.perf_counter() - start)
        out[name] = result
        if log is not None:
            chosen = ", ".join(f"{k} {v}" for k, v in params.items()) or "no hyperparameters"
            shown = f"; test {select} {test_metrics[select]:.4f}" if test_metrics else ""
            log(f"baseline {baseline.label}: {chosen} (of {len(baseline.grid)}); validation {select} "
                f"{val_metrics[select]:.4f}{shown} ({result.seconds:.1f} s)")
    return out
