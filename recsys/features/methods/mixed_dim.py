"""``mixed_dim``: mixed-dimension embeddings over frequency-ordered ids."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from recsys.features.errors import Problem, Problems
from recsys.features.methods.base import Cardinality, CompressionModel, MethodSchema, OptionsModel

NumBlocks = Annotated[int, Field(ge=2, le=16)]


class MixedDimCompression(CompressionModel):
    """Mixed-dimension embeddings (Ginart et al. 2021) over frequency-ordered ids.

    Ids ``0..N-1`` (0 = OOV, then by descending frequency) are split into ``num_blocks`` blocks;
    block i gets dim ``d_i = round4(base_dim * (p_i / p_0) ** alpha)`` where ``p_i`` is the mean
    popularity of an id in block i (hot blocks keep large dims), and a projection ``d_i -> D``.

    Args:
        num_blocks: number of frequency blocks (>= 2).
        alpha: temperature of the power law, in ``(0, 1]``; 0 would be uniform dims.
        base_dim: dim of the hottest block; default the feature's ``embedding_dim``.
        block_boundaries: explicit increasing start indices of blocks 1.. (``num_blocks - 1``
            values in ``(0, cardinality)``); default geometric ``N ** (i / num_blocks)``.
        block_dims: explicit dims of the ``num_blocks`` blocks (multiples of 4), with
            ``block_boundaries``; default derived from the popularity law above. ``recsys train``
            writes both into the resolved spec, so a checkpoint rebuilds its model without the
            data set's vocabulary counts.
    """

    kind: Literal["mixed_dim"]
    num_blocks: NumBlocks = 4
    alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    base_dim: Annotated[int, Field(ge=4)] | None = None
    block_boundaries: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    block_dims: tuple[Annotated[int, Field(ge=4)], ...] | None = None

    @field_validator("base_dim")
    @classmethod
    def _dim_multiple_of_4(cls, v: int | None) -> int | None:
        if v is not None and v % 4:
            raise ValueError(f"got {v}; FBGEMM's fused kernels need a multiple of 4 (e.g. {v + 4 - v % 4})")
        return v

    @model_validator(mode="after")
    def _boundaries(self) -> "MixedDimCompression":
        b = self.block_boundaries
        if b is not None:
            if len(b) != self.num_blocks - 1:
                raise Problems([Problem(
                    "block_boundaries",
                    f"got {list(b)} ({len(b)} values); num_blocks {self.num_blocks} needs {self.num_blocks - 1}",
                )])
            if any(x >= y for x, y in zip(b, b[1:])):
                raise Problems([Problem("block_boundaries", f"got {list(b)}; the boundaries must be strictly increasing")])
        d = self.block_dims
        if d is not None:
            if b is None:
                raise Problems([Problem("block_dims", f"got {list(d)}; block_dims needs block_boundaries too")])
            if len(d) != self.num_blocks:
                raise Problems([Problem("block_dims", f"got {list(d)} ({len(d)} values); num_blocks {self.num_blocks} needs {self.num_blocks}")])
            if any(x % 4 for x in d):
                raise Problems([Problem("block_dims", f"got {list(d)}; FBGEMM's fused kernels need multiples of 4")])
        return self


class MixedDimBudgetOptions(OptionsModel):
    """``mixed_dim``: the solver picks ``alpha`` and the block boundaries for ``num_blocks`` blocks."""

    num_blocks: NumBlocks = 4


def _problems(c: MixedDimCompression, cardinality: Cardinality, embedding_dim: int) -> list[Problem]:
    out: list[Problem] = []
    if c.num_blocks >= cardinality:
        out.append(Problem("compression.num_blocks", f"got {c.num_blocks} >= cardinality {cardinality}; use fewer blocks"))
    if c.block_boundaries is not None and c.block_boundaries[-1] >= cardinality:
        out.append(Problem(
            "compression.block_boundaries",
            f"got {list(c.block_boundaries)}; last boundary {c.block_boundaries[-1]} >= cardinality {cardinality}; "
            "boundaries are start indices inside [1, cardinality)",
        ))
    return out


SCHEMA = MethodSchema(
    kind="mixed_dim",
    compression=MixedDimCompression,
    options=MixedDimBudgetOptions,
    solver_owned=("alpha", "block_boundaries"),
    needs_vocab=True,
    feature_problems=_problems,
    paper="Ginart et al., ISIT 2021 (mixed dimension embeddings)",
)
