"""``unified``: feature multiplexing (Coleman et al. 2023).

A group owns ``num_tables`` shared ``num_buckets x (D / num_chunks)`` tables. Every feature of
the group hashes each id ``num_chunks`` times, with seeds from its own name and the chunk index,
reads chunk c from table ``c mod num_tables`` and concatenates the chunks into its D-dim vector.
To TorchRec a shared table is ONE table read by many physical features, so the planner shards it
as one table.
"""

from __future__ import annotations

import torch

from recsys.embeddings.combine import Concat
from recsys.embeddings.hashing import hash_ids, hash_ids_many, stable_seed
from recsys.embeddings.methods.base import Chunk, FeatureMethod, uniform_bound
from recsys.embeddings.plan import TableSpec


def group_table_names(group: str, num_tables: int) -> list[str]:
    return [f"{group}__shared{t}" for t in range(num_tables)]


def group_tables(group: str, num_buckets: int, chunk_dim: int, num_tables: int, feature_names: list[list[str]]) -> list[TableSpec]:
    """The shared tables of a group; ``feature_names[t]`` are the physical features reading table t."""
    a = uniform_bound(num_buckets)
    return [
        TableSpec(name, num_buckets, chunk_dim, tuple(feature_names[t]), False, -a, a)
        for t, name in enumerate(group_table_names(group, num_tables))
    ]


class UnifiedMethod(FeatureMethod):
    """Args:
    feature (str): logical feature name (seeds its hashes).
    output_dim (int): embedding dim D (all features of a group share it).
    group (str): the group name.
    num_buckets (int): rows of each shared table.
    num_chunks (int): lookups per id, each ``D / num_chunks`` wide.
    num_tables (int): shared tables; chunk c reads table ``c mod num_tables``.
    multi_valued (bool): bags may hold several values.
    """

    kind = "unified"

    def __init__(
        self,
        feature: str,
        output_dim: int,
        group: str,
        num_buckets: int,
        num_chunks: int = 1,
        num_tables: int = 1,
        multi_valued: bool = False,
    ):
        super().__init__(feature, output_dim, multi_valued)
        self.group = group
        self.num_buckets = num_buckets
        self.num_chunks = num_chunks
        self.num_tables = num_tables
        self.seeds = [stable_seed(feature, c) for c in range(num_chunks)]
        self.keys = [f"{feature}__u{c}" for c in range(num_chunks)]
        names = group_table_names(group, num_tables)
        self.table_of_key = {k: names[c % num_tables] for c, k in enumerate(self.keys)}

    def index_maps(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [hash_ids(ids, s, self.num_buckets) for s in self.seeds]

    def tables(self) -> list[TableSpec]:
        return []  # the group's shared tables are built once, by the builder

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        # (num_chunks, N) in one pass, flattened chunk-major: the chunks' values one after the other.
        rows = hash_ids_many(values, self.seeds, self.num_buckets).reshape(-1)
        return [(self.keys, rows, lengths.repeat(self.num_chunks))]

    def combiner(self) -> Concat:
        return Concat(tuple(self.keys))

    def describe(self) -> tuple[str, str]:
        return (
            f"{self.num_chunks} x splitmix64(x, seed_f,c) mod {self.num_buckets}",
            f"concat {self.num_chunks} chunks of group {self.group}",
        )
