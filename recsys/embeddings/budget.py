"""Budget solver: pick a method's hyperparameters so the plan fits a memory target.

``solve_budget(spec, "hashed", target_ratio=1/16)`` returns a :class:`BudgetSolution` whose
``spec`` is the input spec with solved compressions (and unified groups); its bytes are measured
on the compiled plan (weights + projections), never estimated. Each method's family declares the
knob it turns (``Family.solve`` in ``recsys/embeddings/methods/<kind>.py``), bisected on the exact
bytes of the built methods:

- ``hashed`` / ``multi_hash``: ``num_buckets = round(s * N)`` per feature (one ratio for all);
- ``qr``: per-feature target rows ``R = s * N`` -> ``num_collisions`` m, the smaller root of
  ``m + N / m = R`` (2 partitions cannot go below ``2 sqrt(N)`` rows nor above ~``N / 2``);
- ``mixed_dim``: one ``alpha`` for all features, then a boundary scale ``g`` (block starts
  ``N ** (g * i / K)``) to fine-tune, since dims move in steps of 4;
- ``unified``: one group per embedding dim, ``num_buckets`` straight from the budget.

Features where a method cannot save anything (tiny vocabularies) keep ``full``; raw-id
features keep their compression (unless the family covers raw ids, as unified's groups do).
When the target is out of the method's reach the solution is the closest plan and ``notes``
says why (e.g. mixed_dim needs >= 4 floats per id).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from recsys.embeddings.builder import build_method, compile_plan
from recsys.embeddings.methods.family import BudgetProblem
from recsys.embeddings.methods.registry import FAMILIES, family
from recsys.embeddings.plan import PRECISION_BYTES
from recsys.features.budget_options import BudgetOptions, parse_budget_options
from recsys.features.compression import FullCompression
from recsys.features.spec import DatasetSpec, SparseFeature

METHODS: tuple[str, ...] = tuple(FAMILIES)
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


def _feature_bytes(feature: SparseFeature, counts: np.ndarray | None = None) -> int:
    m = build_method(feature, {}, counts, device="meta")
    return sum(t.num_bytes for t in m.planned_tables()) + sum(p.num_bytes for p in getattr(m, "projection_specs", list)())


def solve_budget(
    spec: DatasetSpec | SparseFeature,
    method: str,
    *,
    target_bytes: int | None = None,
    target_ratio: float | None = None,
    counts: dict[str, np.ndarray] | None = None,
    options: dict | BudgetOptions | None = None,
    precision: str = "fp32",
) -> BudgetSolution:
    """Choose ``method``'s hyperparameters for every vocab feature so the plan fits the target.

    Args:
        spec: a data set spec, or one sparse feature.
        method: a registered kind (:data:`METHODS`; ``full`` returns the spec with full tables).
        target_bytes / target_ratio: exactly one; the ratio is of the full-table bytes.
        counts: vocab counts per feature (mixed_dim popularity).
        options: fixed hyperparameters of the method, e.g. ``{"num_hashes": 3}``,
            ``{"operation": "concat"}``, ``{"num_chunks": 4}``, typed per method by
            :mod:`recsys.features.budget_options` (a mapping or the typed options).
        precision: row precision of the sized features' tables, ``fp32`` or ``fp16`` (half the
            bytes per row, so about twice the rows for the same target); the ratio stays one of
            the FP32 full tables.

    Raises:
        ValueError: unknown method, both or neither target given, or a non-positive target;
            an unknown option or one the solver sets itself (``num_buckets``, ...), naming
            ``options.<key>``, the value and the allowed keys.
    """
    if isinstance(spec, SparseFeature):
        spec = DatasetSpec(name="feature", features=[spec])
    if method not in FAMILIES:
        raise ValueError(f"method {method!r}: allowed {list(METHODS)}")
    fam = family(method)
    if (target_bytes is None) == (target_ratio is None):
        raise ValueError("give exactly one of target_bytes or target_ratio")
    options = parse_budget_options(method, options)
    counts = counts or {}
    vocab = [f for f in spec.sparse if f.has_vocab]
    full_bytes = sum(int(f.cardinality) * f.embedding_dim * 4 for f in vocab)
    target = int(target_bytes if target_bytes is not None else round(target_ratio * full_bytes))
    if target <= 0:
        raise ValueError(f"target must be positive; got {target} bytes")
    notes: list[str] = []
    others = [f for f in spec.sparse if not f.has_vocab]
    if others:
        notes.append(f"raw-id features {[f.name for f in others]} keep their compression (no full-table baseline)")
    fixed = sum(_feature_bytes(f) for f in others) if not fam.covers_raw_ids else 0
    if precision not in PRECISION_BYTES:
        raise ValueError(f"precision {precision!r}: allowed {list(PRECISION_BYTES)}")

    def at_precision(compression: BaseModel) -> BaseModel:
        return compression.model_copy(update={"precision": precision})

    def measure(f: SparseFeature, compression: BaseModel) -> int:
        return _feature_bytes(f.model_copy(update={"compression": at_precision(compression)}), counts.get(f.name))

    choice = fam.solve(BudgetProblem(spec, vocab, options, target - fixed, counts, measure, precision))
    choice.compressions = {name: at_precision(c) for name, c in choice.compressions.items()}
    if precision != "fp32":
        notes.append(f"rows stored in {precision} ({PRECISION_BYTES[precision]} bytes per value); the ratio is of fp32 full tables")
    notes.extend(choice.notes)
    kept_full = [f.name for f in vocab if not fam.baseline and isinstance(choice.compressions.get(f.name), FullCompression)]
    if kept_full:
        notes.append(f"kept full (compression cannot save rows): {kept_full}")
    features = [
        f.model_copy(update={"compression": choice.compressions[f.name]}) if f.name in choice.compressions else f
        for f in spec.features
    ]
    groups = choice.groups if choice.groups is not None else spec.groups
    solved = spec.model_copy(update={"features": features, "groups": groups})
    achieved = compile_plan(solved, counts or None).total_bytes
    solution = BudgetSolution(method, solved, target, achieved, full_bytes, notes)
    if not solution.within_tolerance:
        solution.notes.append(
            f"could not land within {TOLERANCE:.0%} of the target ({solution.relative_error:+.1%}); see the notes above"
        )
    return solution
