"""``hashed``: the hashing trick, row ``h_f(x) mod B`` of one ``B x D`` table."""

from __future__ import annotations

import torch

from recsys.embeddings.combine import Concat
from recsys.embeddings.hashing import hash_ids, stable_seed
from recsys.embeddings.methods.base import Chunk, FeatureMethod, uniform_bound
from recsys.embeddings.methods.family import Family, NaiveTables, offsets, per_feature_knob
from recsys.embeddings.plan import TableSpec
from recsys.features.methods.hashed import SCHEMA, HashedCompression


class HashedMethod(FeatureMethod):
    """Args:
    feature (str): logical feature name (also seeds the hash).
    output_dim (int): embedding dim D.
    num_buckets (int): rows B.
    multi_valued (bool): bags may hold several values.
    """

    kind = "hashed"

    def __init__(self, feature: str, output_dim: int, num_buckets: int, multi_valued: bool = False):
        super().__init__(feature, output_dim, multi_valued)
        self.num_buckets = num_buckets
        self.seed = stable_seed(feature, 0)
        self.key = f"{feature}__hashed"

    def index_map(self, ids: torch.Tensor) -> torch.Tensor:
        return hash_ids(ids, self.seed, self.num_buckets)

    def tables(self) -> list[TableSpec]:
        a = uniform_bound(self.num_buckets)
        return [TableSpec(f"{self.feature}__hashed", self.num_buckets, self.output_dim, (self.key,), False, -a, a)]

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        return [([self.key], self.index_map(values), lengths)]

    def combiner(self) -> Concat:
        return Concat((self.key,))

    def describe(self) -> tuple[str, str]:
        return f"splitmix64(x, seed) mod {self.num_buckets}", "identity"


def _naive(m: HashedMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return t.bag(f"{m.feature}__hashed")(hash_ids(values, m.seed, m.num_buckets), offsets(lengths))


def _size(f, s: float, options) -> HashedCompression | None:
    """The knob: ``num_buckets = round(s * N)`` (``None``: as many rows as full, keep full)."""
    n = int(f.cardinality)
    buckets = max(1, round(s * n))
    return HashedCompression(kind="hashed", num_buckets=buckets) if buckets < n else None


FAMILY = Family(
    schema=SCHEMA,
    build=lambda f, c, ctx: HashedMethod(f.name, f.embedding_dim, c.num_buckets, f.multi_valued),
    naive=_naive,
    solve=per_feature_knob(_size),
    lookup_target=0.9,
    colour="#1f77b4",
)
