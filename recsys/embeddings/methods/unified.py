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
from recsys.embeddings.methods.family import BudgetChoice, BudgetProblem, BuildContext, Family, NaiveTables, offsets
from recsys.embeddings.plan import PRECISION_BYTES, TableSpec
from recsys.features.methods.unified import SCHEMA, FeatureGroup, UnifiedCompression


def group_table_names(group: str, num_tables: int) -> list[str]:
    return [f"{group}__shared{t}" for t in range(num_tables)]


def group_tables(
    group: str, num_buckets: int, chunk_dim: int, num_tables: int, feature_names: list[list[str]], precision: str = "fp32"
) -> list[TableSpec]:
    """The shared tables of a group; ``feature_names[t]`` are the physical features reading table t."""
    a = uniform_bound(num_buckets)
    return [
        TableSpec(name, num_buckets, chunk_dim, tuple(feature_names[t]), False, -a, a, precision)
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


def _build(f, c: UnifiedCompression, ctx: BuildContext) -> UnifiedMethod:
    g = ctx.groups[c.group]
    return UnifiedMethod(f.name, f.embedding_dim, g.name, g.num_buckets, g.num_chunks, g.num_tables, f.multi_valued)


def _shared_tables(spec, methods: list[FeatureMethod]) -> list[TableSpec]:
    """Each used group's tables, read by the chunks of its member features (round-robin)."""
    shared: list[TableSpec] = []
    for g in spec.groups:
        users = [m for m in methods if isinstance(m, UnifiedMethod) and m.group == g.name]
        if not users:
            continue
        precisions = sorted({m.precision for m in users})
        if len(precisions) > 1:
            raise ValueError(
                f"group {g.name}: its features store rows in {precisions}; a shared table has one precision: "
                "give every member feature the same compression precision"
            )
        readers: list[list[str]] = [[] for _ in range(g.num_tables)]
        for m in users:
            for c, key in enumerate(m.keys):
                readers[c % g.num_tables].append(key)
        shared.extend(group_tables(g.name, g.num_buckets, users[0].output_dim // g.num_chunks, g.num_tables, readers, precisions[0]))
    return shared


def _naive(m: UnifiedMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    offs = offsets(lengths)
    parts = []
    for c, s in enumerate(m.seeds):
        table = t.bag(f"{m.group}__shared{c % m.num_tables}")
        parts.append(table(hash_ids(values, s, m.num_buckets), offs))
    return torch.cat(parts, 1)


def _solve(problem: BudgetProblem) -> BudgetChoice:
    """The knob: one group per embedding dim, ``num_buckets`` straight from the budget (split
    between the groups by their full-table bytes)."""
    chunks = problem.options.num_chunks
    tables = problem.options.num_tables
    by_dim: dict[int, list] = {}
    for f in problem.spec.sparse:
        by_dim.setdefault(f.embedding_dim, []).append(f)
    weight = {d: sum(int(f.cardinality) * d for f in fs if f.has_vocab) or 1 for d, fs in by_dim.items()}
    groups, choice = [], {}
    for d, fs in by_dim.items():
        share = problem.budget * weight[d] / sum(weight.values())
        buckets = max(1, round(share / (d * PRECISION_BYTES[problem.precision] * tables / chunks)))
        name = f"unified_d{d}"
        groups.append(FeatureGroup(name=name, num_buckets=buckets, num_chunks=chunks, num_tables=tables))
        choice.update({f.name: UnifiedCompression(kind="unified", group=name, precision=problem.precision) for f in fs})
    return BudgetChoice(choice, groups, [f"one shared table per embedding dim, {chunks} chunks per feature, {tables} table(s) per group"])


FAMILY = Family(
    schema=SCHEMA,
    build=_build,
    naive=_naive,
    solve=_solve,
    shared_tables=_shared_tables,
    covers_raw_ids=True,
    lookup_target=0.9,
    colour="#9467bd",
)
