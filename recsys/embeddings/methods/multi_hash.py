"""``multi_hash``: k hashes into one shared ``B``-row table, combined by sum or concat.

With ``importance_weights`` this is the hash embedding of Svenstrup et al. (2017): a second hashed
table of ``num_weight_buckets`` rows holds k learned weights per id, and the id's vector is
``sum_i w_i(x) E[h_i(x)]`` (or the concat of the weighted probes). The weighting is a product of
two lookups, so it is applied per value, then pooled: through the ``EmbeddingBagCollection`` for
single-valued features (a bag of one is its value) and through an ``EmbeddingCollection`` for
multi-valued bags. The weight table is ``round_up(k, 4)`` wide (FBGEMM); the padding columns are
unused and counted in the plan.

Unweighted ``sum`` is folded into the lookup: the k probes of every value go into ONE physical
bag (``k`` times as long, probes interleaved), so the table's sum pooling adds them and the
kernel returns one ``(B, D)`` output instead of k to be added afterwards.
"""

from __future__ import annotations

import math

import torch

from recsys.embeddings.hashing import hash_ids, hash_ids_many, stable_seed
from recsys.embeddings.combine import Combiner, Concat, PerValue, Weighted
from recsys.embeddings.methods.base import Chunk, FeatureMethod, uniform_bound
from recsys.embeddings.methods.family import BudgetChoice, BudgetProblem, Family, NaiveTables, offsets, per_feature_knob
from recsys.embeddings.plan import TableSpec
from recsys.features.methods.multi_hash import SCHEMA, MultiHashCompression

# Importance weights start at 1 +- this (ones-centred): the probes start equally weighted.
WEIGHT_INIT_SPREAD = 0.5


class MultiHashMethod(FeatureMethod):
    """Args:
    feature (str): logical feature name (seeds the k hashes).
    output_dim (int): embedding dim D.
    num_buckets (int): rows B of the shared table.
    num_hashes (int): k probes.
    combiner (str): ``sum`` (table dim D) or ``concat`` (table dim D / k).
    importance_weights (bool): learn per-id probe weights.
    num_weight_buckets (int | None): rows of the weight table (default B).
    multi_valued (bool): bags may hold several values.
    """

    kind = "multi_hash"

    def __init__(
        self,
        feature: str,
        output_dim: int,
        num_buckets: int,
        num_hashes: int = 2,
        combiner: str = "sum",
        importance_weights: bool = False,
        num_weight_buckets: int | None = None,
        multi_valued: bool = False,
    ):
        super().__init__(feature, output_dim, multi_valued)
        if combiner == "concat" and (output_dim % num_hashes or (output_dim // num_hashes) % 4):
            raise ValueError(
                f"feature {feature}: combiner 'concat' needs embedding_dim {output_dim} to split into "
                f"{num_hashes} equal parts of a multiple of 4"
            )
        self.num_buckets = num_buckets
        self.num_hashes = num_hashes
        self.combiner_kind = combiner
        self.importance_weights = importance_weights
        self.num_weight_buckets = num_weight_buckets or num_buckets
        self.probe_dim = output_dim if combiner == "sum" else output_dim // num_hashes
        self.weight_dim = 4 * math.ceil(num_hashes / 4)
        self.seeds = [stable_seed(feature, i) for i in range(num_hashes)]
        self.weight_seed = stable_seed(feature, 1000)
        # Unweighted sum: one physical feature whose bags hold the k probes of every value.
        self.folded = combiner == "sum" and not importance_weights
        self.keys = [f"{feature}__mhsum"] if self.folded else [f"{feature}__mh{i}" for i in range(num_hashes)]
        self.weight_key = f"{feature}__mhw"
        self.per_value = importance_weights and multi_valued

    def index_maps(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [hash_ids(ids, s, self.num_buckets) for s in self.seeds]

    def tables(self) -> list[TableSpec]:
        # Sum of k probes (each weighted by ~1) has the variance of one U(-a, a) row.
        a = uniform_bound(self.num_buckets)
        if self.combiner_kind == "sum":
            a /= math.sqrt(self.num_hashes * (1 + WEIGHT_INIT_SPREAD**2 / 3 if self.importance_weights else 1))
        out = [TableSpec(f"{self.feature}__mh", self.num_buckets, self.probe_dim, tuple(self.keys), self.per_value, -a, a)]
        if self.importance_weights:
            out.append(
                TableSpec(
                    f"{self.feature}__mhw",
                    self.num_weight_buckets,
                    self.weight_dim,
                    (self.weight_key,),
                    self.per_value,
                    1 - WEIGHT_INIT_SPREAD,
                    1 + WEIGHT_INIT_SPREAD,
                )
            )
        return out

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        k = self.num_hashes
        if self.folded:
            # (N, k) row-major: the k probes of each value side by side, so each bag stays contiguous.
            return [(self.keys, hash_ids_many(values, self.seeds, self.num_buckets, interleave=True).reshape(-1), lengths * k)]
        chunks: list[Chunk] = [(self.keys, hash_ids_many(values, self.seeds, self.num_buckets).reshape(-1), lengths.repeat(k))]
        if self.importance_weights:
            chunks.append(([self.weight_key], hash_ids(values, self.weight_seed, self.num_weight_buckets), lengths))
        return chunks

    def combiner(self) -> Combiner:
        if not self.importance_weights:
            # Folded sum: one key (the table's sum pooling added the probes); concat: side by side.
            return Concat(tuple(self.keys))
        # The weighting is a product of two lookups: per value for bags; for single-valued
        # features the pooled weight row IS the id's row (zeros for an empty bag).
        weighted = Weighted(tuple(self.keys), self.weight_key, self.combiner_kind)
        return PerValue(weighted) if self.per_value else weighted

    def describe(self) -> tuple[str, str]:
        t = f"{self.num_hashes} x splitmix64(x, seed_i) mod {self.num_buckets}"
        c = self.combiner_kind
        if self.importance_weights:
            t += f"; weights: splitmix64 mod {self.num_weight_buckets}"
            c = f"weighted {c}" + (" per value, then pooled" if self.per_value else "")
        return t, c


def _naive(m: MultiHashMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    table = t.bag(f"{m.feature}__mh")
    offs = offsets(lengths)
    rows = [hash_ids(values, s, m.num_buckets) for s in m.seeds]
    if m.importance_weights:
        w = t.weight(f"{m.feature}__mhw")[hash_ids(values, m.weight_seed, m.num_weight_buckets)]  # (N, 4)
        parts = [table(r, offs, per_sample_weights=w[:, i]) for i, r in enumerate(rows)]
    else:
        parts = [table(r, offs) for r in rows]
    return sum(parts[1:], parts[0]) if m.combiner_kind == "sum" else torch.cat(parts, 1)


def _size(f, s: float, options) -> MultiHashCompression | None:
    """The knob: ``num_buckets = round(s * N)`` (the weight table, if any, as many rows)."""
    n = int(f.cardinality)
    buckets = max(1, round(s * n))
    return MultiHashCompression(kind="multi_hash", num_buckets=buckets, **options.model_dump()) if buckets < n else None


def _solve(problem: BudgetProblem) -> BudgetChoice:
    choice = per_feature_knob(_size)(problem)
    if problem.options.importance_weights:
        choice.notes.append("importance-weight table has as many rows as the main table (num_weight_buckets default)")
    return choice


FAMILY = Family(
    schema=SCHEMA,
    build=lambda f, c, ctx: MultiHashMethod(
        f.name, f.embedding_dim, c.num_buckets, c.num_hashes, c.combiner, c.importance_weights, c.num_weight_buckets, f.multi_valued
    ),
    naive=_naive,
    solve=_solve,
    # Two probes: twice the kernel work of hashed.
    lookup_target=0.6,
    colour="#ff7f0e",
)
