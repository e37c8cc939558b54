"""``unified``: feature multiplexing, features share the tables of a declared group."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsys.features.errors import NAME_PATTERN as _NAME_PATTERN
from recsys.features.errors import Problem, Problems
from recsys.features.methods.base import CompressionModel, MethodSchema, OptionsModel

NumChunks = Annotated[int, Field(ge=1, le=16)]
NumTables = Annotated[int, Field(ge=1)]


class UnifiedCompression(CompressionModel):
    """Feature multiplexing (Coleman et al. 2023): the feature shares the table(s) of a group.

    Args:
        group: name of a group declared in the data set spec's ``groups:`` list.
    """

    kind: Literal["unified"]
    group: str = Field(pattern=_NAME_PATTERN)


class FeatureGroup(BaseModel):
    """A multiplexed group: ``num_tables`` shared ``num_buckets x (embedding_dim / num_chunks)`` tables.

    Each feature of the group hashes its ids ``num_chunks`` times with its own seeds (one per
    chunk) and concatenates the lookups; chunk c reads table ``c mod num_tables``.

    Args:
        name: the group name features refer to with ``{kind: unified, group: NAME}``.
        num_buckets: rows of each shared table.
        num_chunks: lookups per feature; the feature's dim is split into equal chunks (multiples of 4).
        num_tables: shared tables, chunks assigned round-robin (<= num_chunks).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN)
    num_buckets: Annotated[int, Field(ge=1)]
    num_chunks: NumChunks = 1
    num_tables: NumTables = 1

    @model_validator(mode="after")
    def _tables_le_chunks(self) -> "FeatureGroup":
        check_tables_le_chunks(self.num_tables, self.num_chunks)
        return self


def check_tables_le_chunks(num_tables: int, num_chunks: int) -> None:
    """Raises :class:`Problems` at ``num_tables`` when a shared table would get no chunk."""
    if num_tables > num_chunks:
        raise Problems([Problem(
            "num_tables", f"got {num_tables}; allowed: <= num_chunks ({num_chunks}), since a table needs at least one chunk"
        )])


class UnifiedBudgetOptions(OptionsModel):
    """``unified``: one group per embedding dim; the solver picks each group's ``num_buckets``."""

    num_chunks: NumChunks = 2
    num_tables: NumTables = 1

    @model_validator(mode="after")
    def _tables_le_chunks(self) -> "UnifiedBudgetOptions":
        check_tables_le_chunks(self.num_tables, self.num_chunks)
        return self


SCHEMA = MethodSchema(
    kind="unified",
    compression=UnifiedCompression,
    options=UnifiedBudgetOptions,
    solver_owned=("num_buckets", "group"),
    paper="Coleman et al., KDD 2023 (feature multiplexing); ROBE (Desai et al., MLSys 2022) = more chunks",
)
