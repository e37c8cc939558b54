"""``multi_hash``: k hashes into one shared table (+ optional importance weights)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from recsys.features.errors import Problem, Problems
from recsys.features.methods.base import Cardinality, CompressionModel, MethodSchema, OptionsModel
from recsys.features.methods.hashed import buckets_save_nothing

NumHashes = Annotated[int, Field(ge=2, le=8)]
MultiHashCombiner = Literal["sum", "concat"]


class MultiHashCompression(CompressionModel):
    """``num_hashes`` independent hashes into ONE shared ``num_buckets``-row table.

    Args:
        num_buckets: rows of the shared table.
        num_hashes: k >= 2 probes per id.
        combiner: ``sum`` (each probe has the feature's dim) or ``concat`` (the feature's dim is
            split into k parts, each a multiple of 4).
        importance_weights: learn k weights per id (hash embeddings, Svenstrup et al. 2017), read
            from a second hashed table of ``num_weight_buckets`` rows; the probe vectors are
            weighted per id, before bag pooling.
        num_weight_buckets: rows of the importance-weight table; default ``num_buckets``.
    """

    kind: Literal["multi_hash"]
    num_buckets: Annotated[int, Field(ge=1)]
    num_hashes: NumHashes = 2
    combiner: MultiHashCombiner = "sum"
    importance_weights: bool = False
    num_weight_buckets: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _weight_buckets_need_weights(self) -> "MultiHashCompression":
        if self.num_weight_buckets is not None and not self.importance_weights:
            raise Problems([Problem(
                "num_weight_buckets",
                f"got {self.num_weight_buckets} but importance_weights is false; set importance_weights: true or remove num_weight_buckets",
            )])
        return self


class MultiHashBudgetOptions(OptionsModel):
    """``multi_hash``: see :class:`MultiHashCompression`."""

    num_hashes: NumHashes = 2
    combiner: MultiHashCombiner = "sum"
    importance_weights: bool = False


def _problems(c: MultiHashCompression, cardinality: Cardinality, embedding_dim: int) -> list[Problem]:
    out = buckets_save_nothing(c, cardinality, embedding_dim)
    if c.combiner == "concat":
        d, k = embedding_dim, c.num_hashes
        if d % k or (d // k) % 4:
            out.append(Problem(
                "compression.combiner",
                f"got 'concat', which reads {k} probes of one shared table, so embedding_dim {d} "
                f"must split into {k} equal parts of a multiple of 4; use combiner 'sum' or another num_hashes",
            ))
    return out


SCHEMA = MethodSchema(
    kind="multi_hash",
    compression=MultiHashCompression,
    options=MultiHashBudgetOptions,
    solver_owned=("num_buckets", "num_weight_buckets"),
    feature_problems=_problems,
    paper="Svenstrup et al., NeurIPS 2017 (hash embeddings)",
)
