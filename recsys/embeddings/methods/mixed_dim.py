"""``mixed_dim``: mixed-dimension embeddings (Ginart et al. 2021).

Ids are frequency ranks (vocab index 1..V by descending count, OOV index 0 in the hottest block).
They are split into blocks ``[s_i, s_{i+1})``; block i is a table of ``n_i x d_i`` with
``d_i = round4(base_dim * (p_i / p_0) ** alpha)`` where ``p_i`` is the mean popularity of one id
in the block: from the vocabulary counts when given, else from a Zipf(1) law ``p(r) ~ 1 / (r + 1)``
(the plan says which). Hot blocks keep large dims, rare blocks shrink (this is the paper's
``d ~ p ** alpha``; the issue's ``p ** -alpha`` read literally would grow rare blocks). Dims are
rounded to a multiple of 4 (at least 4) because FBGEMM's kernels need it.

One bag is split across the blocks: each block's table sum-pools its part of the bag, each
pooled block goes through its ``d_i -> D`` projection (none where ``d_i == D``), the results are
summed; projection commutes with the bag sum, so this equals projecting each value then pooling.
The collection divides by the LOGICAL bag length for ``mean``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from recsys.embeddings.combine import Combiner, Projected, Sum
from recsys.embeddings.methods.base import Chunk, FeatureMethod, uniform_bound
from recsys.embeddings.methods.family import BudgetChoice, BudgetProblem, BuildContext, Family, NaiveTables, bisect, offsets
from recsys.embeddings.plan import ProjectionSpec, TableSpec
from recsys.features.compression import FullCompression
from recsys.features.methods.mixed_dim import SCHEMA, MixedDimCompression

_EULER = 0.5772156649015329


def round4(x: float) -> int:
    return max(4, 4 * int(round(x / 4)))


def default_block_starts(cardinality: int, num_blocks: int) -> list[int]:
    """Geometric block starts ``[0, N^(1/K), N^(2/K), ...]`` (strictly increasing, < N)."""
    starts = [0]
    for i in range(1, num_blocks):
        s = max(int(round(cardinality ** (i / num_blocks))), starts[-1] + 1)
        starts.append(min(s, cardinality - (num_blocks - i)))
    return starts


def _harmonic(n: int) -> float:
    if n <= 0:
        return 0.0
    if n < 1000:
        return float(np.sum(1.0 / np.arange(1, n + 1)))
    return math.log(n) + _EULER + 1 / (2 * n) - 1 / (12 * n * n)


def block_popularity(starts: list[int], cardinality: int, counts: np.ndarray | None) -> list[float]:
    """Mean popularity of one id in each block (counts, or Zipf(1) over ranks ``r + 1``)."""
    ends = starts[1:] + [cardinality]
    if counts is not None:
        c = np.asarray(counts, dtype=np.float64)
        total = max(c.sum(), 1.0)
        return [float(c[s:e].sum()) / total / (e - s) for s, e in zip(starts, ends)]
    norm = _harmonic(cardinality)
    return [(_harmonic(e) - _harmonic(s)) / norm / (e - s) for s, e in zip(starts, ends)]


def mixed_dims(base_dim: int, alpha: float, popularity: list[float]) -> list[int]:
    """``round4(base_dim * (p_i / p_0) ** alpha)``, capped at base_dim."""
    p0 = popularity[0] if popularity[0] > 0 else max(popularity)
    return [min(base_dim, round4(base_dim * (p / p0) ** alpha)) if p > 0 else 4 for p in popularity]


class MixedDimMethod(FeatureMethod):
    """Args:
    feature (str): logical feature name.
    output_dim (int): embedding dim D.
    cardinality (int): N.
    block_starts (list[int]): first index of each block (``block_starts[0] == 0``).
    block_dims (list[int]): dim of each block (multiples of 4).
    multi_valued (bool): bags may hold several values.
    popularity_source (str): where the block dims came from (for the plan).
    """

    kind = "mixed_dim"

    def __init__(
        self,
        feature: str,
        output_dim: int,
        cardinality: int,
        block_starts: list[int],
        block_dims: list[int],
        multi_valued: bool = False,
        popularity_source: str = "given",
        device: torch.device | None = None,
    ):
        super().__init__(feature, output_dim, multi_valued)
        if block_starts[0] != 0 or any(a >= b for a, b in zip(block_starts, block_starts[1:])) or block_starts[-1] >= cardinality:
            raise ValueError(f"feature {feature}: block starts {block_starts} must be 0 < ... < {cardinality}, increasing")
        if any(d % 4 for d in block_dims):
            raise ValueError(f"feature {feature}: block dims {block_dims} must be multiples of 4 (FBGEMM)")
        self.cardinality = cardinality
        self.starts = list(block_starts)
        self.dims = list(block_dims)
        self.rows = [e - s for s, e in zip(self.starts, self.starts[1:] + [cardinality])]
        self.keys = [f"{feature}__md{i}" for i in range(len(self.starts))]
        self.popularity_source = popularity_source
        self.projections = nn.ParameterDict(
            {
                f"block{i}": nn.Parameter(torch.empty(d, output_dim, device=device))
                for i, d in enumerate(self.dims)
                if d != output_dim
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.projections.values():
            if p.device.type != "meta":
                # N(0, 1/d_in): a projected row keeps the variance of the table row.
                nn.init.normal_(p, 0.0, 1.0 / math.sqrt(p.shape[0]))

    def index_map(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, row in block) of each id."""
        starts = torch.tensor(self.starts, dtype=torch.int64, device=ids.device)
        block = torch.bucketize(ids, starts[1:], right=True)
        return block, ids - starts[block]

    def projection_specs(self) -> list[ProjectionSpec]:
        return [
            ProjectionSpec(f"{self.feature}.block{i}", d, self.output_dim)
            for i, d in enumerate(self.dims)
            if d != self.output_dim
        ]

    def tables(self) -> list[TableSpec]:
        a = uniform_bound(self.cardinality)
        return [
            TableSpec(f"{self.feature}__md{i}", rows, dim, (key,), False, -a, a)
            for i, (rows, dim, key) in enumerate(zip(self.rows, self.dims, self.keys))
        ]

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        num_blocks = len(self.starts)
        batch = lengths.numel()
        block, rows = self.index_map(values)  # (N,), (N,)
        sample = torch.repeat_interleave(torch.arange(batch, device=values.device), lengths, output_size=values.numel())
        block_lengths = torch.bincount(block * batch + sample, minlength=num_blocks * batch)  # (K * B,)
        # Values are in sample order; a stable sort by block keeps that order inside each block.
        order = torch.argsort(block, stable=True)
        return [(self.keys, rows[order], block_lengths)]

    def combiner(self) -> Combiner:
        # Projection commutes with the bag sum, so pooled blocks are projected, then summed.
        if not self.projections:
            return Sum(tuple(self.keys))  # every block at full dim
        names = tuple(f"projections.block{i}" if f"block{i}" in self.projections else None for i in range(len(self.keys)))
        return Projected(tuple(self.keys), names)

    def describe(self) -> tuple[str, str]:
        blocks = ", ".join(f"[{s},{s + n})x{d}" for s, n, d in zip(self.starts, self.rows, self.dims))
        return f"frequency blocks {blocks}", f"project to {self.output_dim}, sum ({self.popularity_source})"

    def extra_notes(self) -> list[str]:
        return [f"{self.feature}: mixed_dim block dims {self.dims} rounded to multiples of 4 (FBGEMM); popularity from {self.popularity_source}"]


def mixed_dim_layout(feature, compression: MixedDimCompression, counts: np.ndarray | None = None) -> tuple[list[int], list[int], str]:
    """Block starts, block dims and the popularity source of a mixed_dim feature."""
    n = int(feature.cardinality)
    starts = (
        [0, *compression.block_boundaries]
        if compression.block_boundaries is not None
        else default_block_starts(n, compression.num_blocks)
    )
    if compression.block_dims is not None:  # resolved earlier (recsys train writes them into the spec)
        return starts, list(compression.block_dims), "the spec's block_dims"
    if counts is not None and len(counts) != n:
        raise ValueError(f"feature {feature.name}: counts has {len(counts)} entries; cardinality is {n}")
    popularity = block_popularity(starts, n, counts)
    base = compression.base_dim or feature.embedding_dim
    source = "vocab counts" if counts is not None else "Zipf(1) assumption, no counts given"
    return starts, mixed_dims(base, compression.alpha, popularity), source


def _build(f, c: MixedDimCompression, ctx: BuildContext) -> MixedDimMethod:
    starts, dims, source = mixed_dim_layout(f, c, ctx.counts)
    return MixedDimMethod(f.name, f.embedding_dim, int(f.cardinality), starts, dims, f.multi_valued, source, ctx.device)


def _naive(m: MixedDimMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    out = 0
    offs = offsets(lengths)
    ends = m.starts[1:] + [m.cardinality]
    for i, (s, e) in enumerate(zip(m.starts, ends)):
        inside = (values >= s) & (values < e)
        rows = torch.where(inside, values - s, torch.zeros_like(values))
        part = t.bag(f"{m.feature}__md{i}")(rows, offs, per_sample_weights=inside.float())
        name = f"projections.block{i}"
        out = out + (part @ t.param(m.feature, name) if t.has_param(m.feature, name) else part)
    return out


def _solve(problem: BudgetProblem) -> BudgetChoice:
    """Two knobs: one ``alpha`` for all features, then a block-boundary scale ``g`` (block starts
    ``N ** (g * i / K)``) to fine-tune, since dims move in steps of 4."""
    num_blocks = problem.options.num_blocks

    def layout(f, alpha: float, g: float):
        n = int(f.cardinality)
        k = min(num_blocks, n - 1)
        if n < 8 or k < 2:
            return FullCompression()
        starts = [0]
        for i in range(1, k):
            starts.append(min(max(int(round(n ** (g * i / k))), starts[-1] + 1), n - (k - i)))
        return MixedDimCompression(kind="mixed_dim", num_blocks=k, alpha=alpha, block_boundaries=tuple(starts[1:]))

    def total(alpha: float, g: float) -> int:
        return problem.total({f.name: layout(f, alpha, g) for f in problem.features})

    # Bytes fall as alpha grows: bisect on -alpha.
    alpha = -bisect(lambda a: total(-a, 1.0), problem.budget, -1.0, -1e-4, steps=25)
    g = bisect(lambda g: total(alpha, g), problem.budget, 0.05, 1.0, steps=25)
    notes = [f"alpha {alpha:.4f}, block-boundary scale {g:.3f}; dims are multiples of 4 (FBGEMM)"]
    floor = total(1.0, 0.05)
    if problem.budget < floor * (1 - 0.05):
        full = sum(int(f.cardinality) * f.embedding_dim * 4 for f in problem.features)
        notes.append(
            f"target below mixed_dim's floor of {floor:,} B (ratio {floor / full:.4f}): every id keeps "
            "at least 4 floats (FBGEMM's minimum dim), so the ratio cannot go below ~4 / embedding_dim"
        )
    return BudgetChoice({f.name: layout(f, alpha, g) for f in problem.features}, notes=notes)


FAMILY = Family(
    schema=SCHEMA,
    build=_build,
    naive=_naive,
    solve=_solve,
    lookup_target=0.7,
    colour="#d62728",
    needs_counts=True,
)
