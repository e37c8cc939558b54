"""The build half of a compression method: its :class:`Family`, declared once per method file.

``recsys/embeddings/methods/<kind>.py`` ends with ``FAMILY = Family(...)``: the kind's schema
(from :mod:`recsys.features.methods`), how a feature is built (``build``: the
:class:`~recsys.embeddings.methods.base.FeatureMethod` that declares index transform, physical
tables and combiner), its naive reference (``naive``: plain ``nn.EmbeddingBag`` / gathers, the
straightforward way), and the knob the budget solver turns (``solve``). The registry
(:mod:`recsys.embeddings.methods.registry`) maps every kind of :data:`recsys.features.methods.KINDS`
to its family; the builder, the solver, the naive collection, the benches, the sweep and the
report read it and never switch on kind strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from recsys.features.compression import FeatureGroup, FullCompression
from recsys.features.methods.base import MethodSchema

if TYPE_CHECKING:  # the spec types, for annotations only
    from recsys.embeddings.methods.base import FeatureMethod
    from recsys.embeddings.plan import TableSpec
    from recsys.features.spec import DatasetSpec, SparseFeature


@dataclass(frozen=True)
class BuildContext:
    """What a family's ``build`` may read besides the feature and its compression.

    Attributes:
        groups: the spec's shared groups by name (unified).
        counts: the feature's vocabulary counts (index-aligned; ``None`` when not loaded).
        device: where dense parameters are allocated (``meta`` allocates nothing).
    """

    groups: dict[str, FeatureGroup]
    counts: np.ndarray | None = None
    device: torch.device | str | None = None


class NaiveTables:
    """What a naive reference reads: one plain ``nn.EmbeddingBag`` per physical table (same
    weights as the compiled collection) and copies of the methods' dense parameters."""

    def __init__(self, tables: nn.ModuleDict, params: nn.ParameterDict):
        self._tables = tables
        self._params = params

    def bag(self, table: str) -> nn.EmbeddingBag:
        return self._tables[table.replace(".", "_")]

    def weight(self, table: str) -> torch.Tensor:
        return self.bag(table).weight

    def has_param(self, feature: str, name: str) -> bool:
        return naive_param_key(feature, name) in self._params

    def param(self, feature: str, name: str) -> nn.Parameter:
        return self._params[naive_param_key(feature, name)]


def naive_param_key(feature: str, name: str) -> str:
    """The naive collection's key of a method's dense parameter ``name`` (``projections.block0``)."""
    return f"{feature}__{name.replace('.', '_')}"


def offsets(lengths: torch.Tensor) -> torch.Tensor:
    """``nn.EmbeddingBag`` offsets (``include_last_offset``) of bag lengths."""
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])


def bag_sum(per_value: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-value rows ``(N, D)`` summed into their bags ``(B, D)``, written out with ``index_add``."""
    sample = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    return torch.zeros(lengths.numel(), per_value.shape[1], dtype=per_value.dtype).index_add(0, sample, per_value)


@dataclass
class BudgetProblem:
    """What a family's knob sees: the features to size and the bytes they may take.

    Attributes:
        spec: the whole data set spec.
        features: the vocabulary features the method sizes (raw-id features keep theirs, except
            for families with ``covers_raw_ids``).
        options: the method's typed budget options.
        budget: bytes the sized features may take together.
        counts: vocabulary counts per feature (may be empty).
        measure: exact bytes of one feature with a given compression (tables + dense parameters,
            measured on the built method, at :attr:`precision`).
        precision: the row precision every sized feature gets (``fp32`` / ``fp16``); the solver
            applies it to the compressions a knob makes, a knob that computes bytes itself reads it.
    """

    spec: "DatasetSpec"
    features: list["SparseFeature"]
    options: Any
    budget: int
    counts: dict[str, np.ndarray]
    measure: Callable[["SparseFeature", BaseModel], int]
    precision: str = "fp32"

    def total(self, choice: dict[str, BaseModel]) -> int:
        """Exact bytes of the features under ``choice`` (feature name -> compression)."""
        return sum(self.measure(f, choice[f.name]) for f in self.features)


@dataclass
class BudgetChoice:
    """A family's answer: a compression per sized feature (+ shared groups) and notes."""

    compressions: dict[str, BaseModel]
    groups: list[FeatureGroup] | None = None
    notes: list[str] = field(default_factory=list)


def bisect(fn: Callable[[float], int], target: int, lo: float, hi: float, steps: int = 40) -> float:
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


def per_feature_knob(
    make: Callable[["SparseFeature", float, Any], BaseModel | None], note: str | None = None, lo: float = 1e-9, hi: float = 1.0
) -> Callable[[BudgetProblem], BudgetChoice]:
    """The common knob: one scalar ``s`` for all features, bisected on the exact bytes.

    Args:
        make: ``(feature, s, options) -> compression`` (``None``: keep the feature full); the
            bytes must not decrease as ``s`` grows. ``s`` is about the fraction of the full rows.
        note: a line for the solution's notes.
    """

    def solve(problem: BudgetProblem) -> BudgetChoice:
        def choose(s: float) -> dict[str, BaseModel]:
            return {f.name: make(f, s, problem.options) or FullCompression() for f in problem.features}

        s = bisect(lambda s: problem.total(choose(s)), problem.budget, lo, hi)
        return BudgetChoice(choose(s), notes=[note] if note else [])

    return solve


NaiveFn = Callable[["FeatureMethod", NaiveTables, torch.Tensor, torch.Tensor], torch.Tensor]
BuildFn = Callable[["SparseFeature", BaseModel, BuildContext], "FeatureMethod"]
SharedTablesFn = Callable[["DatasetSpec", list["FeatureMethod"]], list["TableSpec"]]


@dataclass(frozen=True)
class Family:
    """One compression method, as everything outside its file sees it.

    Attributes:
        schema: the method's schema half (``recsys.features.methods.<kind>.SCHEMA``).
        build: ``(feature, compression, context) -> FeatureMethod``.
        naive: ``(method, tables, values, lengths) -> (B, D)`` SUM-pooled vectors, written the
            straightforward way (plain gathers, digits / masks spelled out) from the same weights.
        solve: the budget solver's knob, ``BudgetProblem -> BudgetChoice``.
        shared_tables: tables owned by groups rather than features (unified), or ``None``.
        covers_raw_ids: the solver sizes raw-id features too (they join the shared groups).
        baseline: the method is the full-table baseline (the solver notes nothing kept full).
        lookup_target: ``recsys bench lookup``'s target step-throughput ratio vs fused full tables.
        colour: the method's colour in the sweep's Pareto plot.
        needs_counts: the build reads vocabulary counts (frequency-aware methods).
    """

    schema: MethodSchema
    build: BuildFn
    naive: NaiveFn
    solve: Callable[[BudgetProblem], BudgetChoice]
    shared_tables: SharedTablesFn | None = None
    covers_raw_ids: bool = False
    baseline: bool = False
    lookup_target: float = 0.9
    colour: str = "#7f7f7f"
    needs_counts: bool = False

    @property
    def kind(self) -> str:
        return self.schema.kind
