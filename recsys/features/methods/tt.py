"""``tt``: TT-Rec, tensor-train embedding tables (Yin et al., MLSys 2021)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from recsys.features.errors import Problem
from recsys.features.methods.base import Cardinality, CompressionModel, MethodSchema, OptionsModel

NumCores = Annotated[int, Field(ge=2, le=4)]


class TTCompression(CompressionModel):
    """Tensor-train tables: the ``N x D`` table as a train of ``num_cores`` small cores.

    Id ``x`` is written in mixed radix (as ``qr``'s digits) with ``num_cores`` digits of about
    ``N ** (1 / num_cores)`` values each; ``D`` is factored as ``m_1 ... m_k``. Core i is a table of
    ``n_i`` rows, each a ``rank x m_i x rank`` slice (``1`` at the train's ends); an id's vector is
    the contraction of its digits' slices. Memory ``~ sum_i n_i r^2 m_i`` instead of ``N D``.

    Args:
        rank: the TT rank r (a multiple of 4, so every core row suits FBGEMM's kernels).
        num_cores: k, 2 to 4 (the paper's default 3).
    """

    kind: Literal["tt"]
    rank: Annotated[int, Field(ge=4, le=512)]
    num_cores: NumCores = 3

    @field_validator("rank")
    @classmethod
    def _rank_multiple_of_4(cls, v: int) -> int:
        if v % 4:
            raise ValueError(f"got {v}; the core rows (r x m x r values) must be multiples of 4 for FBGEMM: use {v + 4 - v % 4}")
        return v


class TTBudgetOptions(OptionsModel):
    """``tt``: the solver picks each feature's ``rank`` for the budget."""

    num_cores: NumCores = 3


def _problems(c: TTCompression, cardinality: Cardinality, embedding_dim: int) -> list[Problem]:
    if cardinality < 2 ** c.num_cores:
        return [Problem(
            "compression.num_cores",
            f"got {c.num_cores}, which needs at least {2 ** c.num_cores} ids (2 per digit) but cardinality is {cardinality}; "
            "use fewer cores or kind 'full'",
        )]
    return []


SCHEMA = MethodSchema(
    kind="tt",
    compression=TTCompression,
    options=TTBudgetOptions,
    solver_owned=("rank",),
    needs_vocab=True,
    feature_problems=_problems,
    paper="Yin et al., MLSys 2021 (TT-Rec)",
)
