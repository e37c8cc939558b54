"""``full``: one ``cardinality x D`` table, ids used as rows (the baseline)."""

from __future__ import annotations

import torch

from recsys.embeddings.combine import Concat
from recsys.embeddings.methods.base import Chunk, FeatureMethod, uniform_bound
from recsys.embeddings.methods.family import BudgetChoice, BudgetProblem, Family, NaiveTables, offsets
from recsys.embeddings.plan import TableSpec
from recsys.features.methods.full import SCHEMA, FullCompression


class FullMethod(FeatureMethod):
    """Identity transform into one table.

    Args:
        feature (str): logical feature name.
        output_dim (int): embedding dim D.
        num_embeddings (int): the cardinality N.
        multi_valued (bool): bags may hold several values.
    """

    kind = "full"

    def __init__(self, feature: str, output_dim: int, num_embeddings: int, multi_valued: bool = False):
        super().__init__(feature, output_dim, multi_valued)
        self.num_embeddings = num_embeddings
        self.key = f"{feature}__full"

    def tables(self) -> list[TableSpec]:
        a = uniform_bound(self.num_embeddings)
        return [TableSpec(f"{self.feature}__full", self.num_embeddings, self.output_dim, (self.key,), False, -a, a)]

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        return [([self.key], values, lengths)]

    def combiner(self) -> Concat:
        return Concat((self.key,))

    def describe(self) -> tuple[str, str]:
        return "x", "identity"


def _naive(m: FullMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return t.bag(f"{m.feature}__full")(values, offsets(lengths))


def _solve(problem: BudgetProblem) -> BudgetChoice:
    return BudgetChoice({f.name: FullCompression() for f in problem.features})


FAMILY = Family(
    schema=SCHEMA,
    build=lambda f, c, ctx: FullMethod(f.name, f.embedding_dim, int(f.cardinality), f.multi_valued),
    naive=_naive,
    solve=_solve,
    baseline=True,
    colour="#000000",
)
