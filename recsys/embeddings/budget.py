"""Budget solver: pick a method's hyperparameters so the plan fits a memory target.

``solve_budget(spec, "hashed", target_ratio=1/16)`` returns a :class:`BudgetSolution` whose
``spec`` is the input spec with solved compressions (and unified groups); its bytes are measured
on the compiled plan (weights + projections), never estimated. Each method has one continuous
knob ``s`` mapped to its hyperparameters, and ``s`` is found by bisection on the exact bytes:

- ``hashed`` / ``multi_hash``: ``num_buckets = round(s * N)`` per feature (one ratio for all);
- ``qr``: per-feature target rows ``R = s * N`` -> ``num_collisions`` m, the smaller root of
  ``m + N / m = R`` (2 partitions cannot go below ``2 sqrt(N)`` rows nor above ~``N / 2``);
- ``mixed_dim``: one ``alpha`` for all features, then a boundary scale ``g`` (block starts
  ``N ** (g * i / K)``) to fine-tune, since dims move in steps of 4;
- ``unified``: one group per embedding dim, ``num_buckets`` straight from the budget.

Features where a method cannot save anything (tiny vocabularies) keep ``full``; raw-id
features keep their compression. When the target is out of the method's reach the solution is
the closest plan and ``notes`` says why (e.g. mixed_dim needs >= 4 floats per id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from recsys.embeddings.builder import build_method, compile_plan
from recsys.features.budget_options import BudgetOptions, parse_budget_options
from recsys.features.compression import (
    FeatureGroup,
    FullCompression,
    HashedCompression,
    MixedDimCompression,
    MultiHashCompression,
    QRCompression,
    UnifiedCompression,
)
from recsys.features.spec import DatasetSpec, SparseFeature

METHODS = ("full", "hashed", "multi_hash", "qr", "mixed_dim", "unified")
TOLERANCE = 0.05


@dataclass
class BudgetSolution:
    """A solved spec and how close it lands."""

    method: str
    spec: DatasetSpec
    target_bytes: int
    achieved_bytes: int
    full_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def target_ratio(self) -> float:
        return self.target_bytes / self.full_bytes

    @property
    def achieved_ratio(self) -> float:
        return self.achieved_bytes / self.full_bytes

    @property
    def relative_error(self) -> float:
        return self.achieved_bytes / self.target_bytes - 1

    @property
    def within_tolerance(self) -> bool:
        return abs(self.relative_error) <= TOLERANCE

    def format(self) -> str:
        lines = [
            f"{self.method}: target {self.target_bytes:,} B (ratio {self.target_ratio:.4f}), achieved "
            f"{self.achieved_bytes:,} B (ratio {self.achieved_ratio:.4f}, {self.relative_error:+.1%})"
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _feature_bytes(feature: SparseFeature) -> int:
    m = build_method(feature, {}, None, device="meta")
    return sum(t.num_bytes for t in m.tables()) + sum(p.num_bytes for p in getattr(m, "projection_specs", list)())


def _bisect(fn: Callable[[float], int], target: int, lo: float, hi: float, steps: int = 40) -> float:
    """The s in [lo, hi] whose (non-decreasing) fn(s) is closest to target."""
    best, best_err = hi, abs(fn(hi) - target)
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = fn(mid)
        if abs(value - target) < best_err:
            best, best_err = mid, abs(value - target)
        if value < target:
            lo = mid
        else:
            hi = mid
    return best


def _qr_collisions(n: int, rows: float) -> int:
    """num_collisions m with m + ceil(n / m) ~ rows (smaller root), within [2, sqrt(n)]."""
    root = math.isqrt(n)
    if rows * rows < 4 * n:
        return max(2, root)
    m = (rows - math.sqrt(rows * rows - 4 * n)) / 2
    return int(min(max(2, round(m)), max(2, root)))


def solve_budget(
    spec: DatasetSpec | SparseFeature,
    method: str,
    *,
    target_bytes: int | None = None,
    target_ratio: float | None = None,
    counts: dict[str, np.ndarray] | None = None,
    options: dict | BudgetOptions | None = None,
) -> BudgetSolution:
    """Choose ``method``'s hyperparameters for every vocab feature so the plan fits the target.

    Args:
        spec: a data set spec, or one sparse feature.
        method: one of ``hashed``, ``multi_hash``, ``qr``, ``mixed_dim``, ``unified`` (``full``
            returns the spec with full tables).
        target_bytes / target_ratio: exactly one; the ratio is of the full-table bytes.
        counts: vocab counts per feature (mixed_dim popularity).
        options: fixed hyperparameters of the method, e.g. ``{"num_hashes": 3}``,
            ``{"operation": "concat"}``, ``{"num_chunks": 4}``, typed per method by
            :mod:`recsys.features.budget_options` (a mapping or the typed options).

    Raises:
        ValueError: unknown method, both or neither target given, or a non-positive target;
            an unknown option or one the solver sets itself (``num_buckets``, ...), naming
            ``options.<key>``, the value and the allowed keys.
    """
    if isinstance(spec, SparseFeature):
        spec = DatasetSpec(name="feature", features=[spec])
    if method not in METHODS:
        raise ValueError(f"method {method!r}: allowed {list(METHODS)}")
    if (target_bytes is None) == (target_ratio is None):
        raise ValueError("give exactly one of target_bytes or target_ratio")
    options = parse_budget_options(method, options)
    vocab = [f for f in spec.sparse if f.has_vocab]
    full_bytes = sum(int(f.cardinality) * f.embedding_dim * 4 for f in vocab)
    target = int(target_bytes if target_bytes is not None else round(target_ratio * full_bytes))
    if target <= 0:
        raise ValueError(f"target must be positive; got {target} bytes")
    notes: list[str] = []
    others = [f for f in spec.sparse if not f.has_vocab]
    if others:
        notes.append(f"raw-id features {[f.name for f in others]} keep their compression (no full-table baseline)")
    fixed = sum(_feature_bytes(f) for f in others) if method != "unified" else 0
    budget = target - fixed

    def with_compressions(choice: dict[str, object], groups: list[FeatureGroup] | None = None) -> DatasetSpec:
        features = [
            f.model_copy(update={"compression": choice[f.name]}) if f.name in choice else f for f in spec.features
        ]
        return spec.model_copy(update={"features": features, "groups": groups if groups is not None else spec.groups})

    def per_feature(make: Callable[[SparseFeature, float], object]) -> Callable[[float], dict]:
        return lambda s: {f.name: make(f, s) for f in vocab}

    def total(choice: dict) -> int:
        return sum(_feature_bytes(f.model_copy(update={"compression": choice[f.name]})) for f in vocab)

    groups = None
    if method == "full":
        choice = {f.name: FullCompression() for f in vocab}
    elif method in ("hashed", "multi_hash"):
        weights = method == "multi_hash" and options.importance_weights

        def make(f: SparseFeature, s: float):
            n = int(f.cardinality)
            buckets = max(1, round(s * n))
            if buckets >= n:
                return FullCompression()
            if method == "hashed":
                return HashedCompression(kind="hashed", num_buckets=buckets)
            return MultiHashCompression(kind="multi_hash", num_buckets=buckets, **options.model_dump())

        choose = per_feature(make)
        s = _bisect(lambda s: total(choose(s)), budget, 1e-9, 1.0)
        choice = choose(s)
        if weights:
            notes.append("importance-weight table has as many rows as the main table (num_weight_buckets default)")
    elif method == "qr":

        def make(f: SparseFeature, s: float):
            n = int(f.cardinality)
            if n < 8:
                return FullCompression()
            rows = s * n * (2 if options.operation == "concat" else 1)
            m = _qr_collisions(n, rows)
            if m >= n:
                return FullCompression()
            return QRCompression(kind="qr", num_collisions=m, **options.model_dump())

        choose = per_feature(make)
        s = _bisect(lambda s: total(choose(s)), budget, 1e-9, 1.0)
        choice = choose(s)
        notes.append("qr with 2 partitions spans ~2/sqrt(N) .. 1/2 of a feature's full rows (num_collisions in [2, sqrt(N)])")
    elif method == "mixed_dim":
        counts = counts or {}
        num_blocks = options.num_blocks

        def layout(f: SparseFeature, alpha: float, g: float):
            n = int(f.cardinality)
            k = min(num_blocks, n - 1)
            if n < 8 or k < 2:
                return FullCompression()
            starts = [0]
            for i in range(1, k):
                starts.append(min(max(int(round(n ** (g * i / k))), starts[-1] + 1), n - (k - i)))
            return MixedDimCompression(kind="mixed_dim", num_blocks=k, alpha=alpha, block_boundaries=tuple(starts[1:]))

        def total_md(alpha: float, g: float) -> int:
            out = 0
            for f in vocab:
                c = layout(f, alpha, g)
                m = build_method(f.model_copy(update={"compression": c}), {}, counts.get(f.name), device="meta")
                out += sum(t.num_bytes for t in m.tables()) + sum(p.num_bytes for p in getattr(m, "projection_specs", list)())
            return out

        # Bytes fall as alpha grows: bisect on -alpha.
        alpha = -_bisect(lambda a: total_md(-a, 1.0), budget, -1.0, -1e-4, steps=25)
        g = _bisect(lambda g: total_md(alpha, g), budget, 0.05, 1.0, steps=25)
        choice = {f.name: layout(f, alpha, g) for f in vocab}
        floor = total_md(1.0, 0.05)
        notes.append(f"alpha {alpha:.4f}, block-boundary scale {g:.3f}; dims are multiples of 4 (FBGEMM)")
        if budget < floor * (1 - TOLERANCE):
            notes.append(
                f"target below mixed_dim's floor of {floor:,} B (ratio {floor / full_bytes:.4f}): every id keeps "
                "at least 4 floats (FBGEMM's minimum dim), so the ratio cannot go below ~4 / embedding_dim"
            )
    elif method == "unified":
        chunks = options.num_chunks
        tables = options.num_tables
        members = [f for f in spec.sparse]
        by_dim: dict[int, list[SparseFeature]] = {}
        for f in members:
            by_dim.setdefault(f.embedding_dim, []).append(f)
        weight = {d: sum(int(f.cardinality) * d for f in fs if f.has_vocab) or 1 for d, fs in by_dim.items()}
        groups, choice = [], {}
        for d, fs in by_dim.items():
            share = budget * weight[d] / sum(weight.values())
            buckets = max(1, round(share / (d * 4 * tables / chunks)))
            name = f"unified_d{d}"
            groups.append(FeatureGroup(name=name, num_buckets=buckets, num_chunks=chunks, num_tables=tables))
            choice.update({f.name: UnifiedCompression(kind="unified", group=name) for f in fs})
        notes.append(f"one shared table per embedding dim, {chunks} chunks per feature, {tables} table(s) per group")
    else:  # pragma: no cover - METHODS is checked above
        raise AssertionError(method)

    kept_full = [f.name for f in vocab if method not in ("full",) and isinstance(choice.get(f.name), FullCompression)]
    if kept_full:
        notes.append(f"kept full (compression cannot save rows): {kept_full}")
    solved = with_compressions(choice, groups)
    achieved = compile_plan(solved, counts).total_bytes
    solution = BudgetSolution(method, solved, target, achieved, full_bytes, notes)
    if not solution.within_tolerance:
        solution.notes.append(
            f"could not land within {TOLERANCE:.0%} of the target ({solution.relative_error:+.1%}); see the notes above"
        )
    return solution
