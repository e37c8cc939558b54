"""``hashed``: the hashing trick, row ``h_f(x) mod num_buckets`` of one table."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from recsys.features.errors import Problem
from recsys.features.methods.base import Cardinality, CompressionModel, MethodSchema, OptionsModel


class HashedCompression(CompressionModel):
    """Hashing trick: row ``h_f(x) mod num_buckets`` of one ``num_buckets x embedding_dim`` table.

    Args:
        num_buckets: rows of the table (>= 1).
    """

    kind: Literal["hashed"]
    num_buckets: Annotated[int, Field(ge=1)]


class HashedBudgetOptions(OptionsModel):
    """``hashed``: the solver picks ``num_buckets``; nothing else to choose."""


def buckets_save_nothing(c: BaseModel, cardinality: Cardinality, embedding_dim: int) -> list[Problem]:
    """``num_buckets >= cardinality`` is refused: the method would cost more than a full table."""
    if cardinality != "raw" and c.num_buckets >= cardinality:
        return [Problem(
            "compression.num_buckets",
            f"got {c.num_buckets} >= cardinality {cardinality}, which saves nothing; use fewer buckets (< {cardinality}) or kind 'full'",
        )]
    return []


SCHEMA = MethodSchema(
    kind="hashed",
    compression=HashedCompression,
    options=HashedBudgetOptions,
    solver_owned=("num_buckets",),
    feature_problems=buckets_save_nothing,
    paper="Weinberger et al., ICML 2009 (feature hashing)",
)
