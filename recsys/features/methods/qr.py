"""``qr``: compositional embeddings from complementary partitions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from recsys.features.errors import Problem, Problems
from recsys.features.methods.base import Cardinality, CompressionModel, MethodSchema, OptionsModel

QROperation = Literal["mult", "add", "concat"]


class QRCompression(CompressionModel):
    """Compositional embeddings from complementary partitions (Shi et al. 2020).

    Two partitions: ``x mod m`` (``m`` rows) and ``x // m`` (``ceil(N / m)`` rows) with
    ``m = num_collisions``. k partitions: mixed-radix digits of ``x`` with the given ``radices``
    for the low digits; the top digit gets ``ceil(N / prod(radices))`` rows. Every id below the
    cardinality gets a unique tuple of rows.

    Args:
        num_collisions: ``m`` of the 2-partition (ids sharing a quotient row); or
        radices: explicit low-digit radices ``[r_0, ..., r_{k-2}]`` (k partitions).
        operation: ``mult`` (element-wise product, per value then pooled), ``add`` or ``concat``.
    """

    kind: Literal["qr"]
    num_collisions: Annotated[int, Field(ge=2)] | None = None
    radices: tuple[Annotated[int, Field(ge=2)], ...] | None = None
    operation: QROperation = "mult"

    @model_validator(mode="after")
    def _one_partitioning(self) -> "QRCompression":
        if (self.num_collisions is None) == (self.radices is None):
            got = "neither num_collisions nor radices" if self.num_collisions is None else "both num_collisions and radices"
            raise Problems([Problem("", (
                f"got {got}; give exactly one of num_collisions (2 partitions) "
                "or radices (k partitions)"
            ))])
        if self.radices is not None and len(self.radices) < 1:
            raise Problems([Problem("radices", "got []; give at least one radix (>= 2), or use num_collisions")])
        return self

    @property
    def low_radices(self) -> tuple[int, ...]:
        return (self.num_collisions,) if self.num_collisions is not None else tuple(self.radices)


class QRBudgetOptions(OptionsModel):
    """``qr`` (2 partitions): the solver picks ``num_collisions``."""

    operation: QROperation = "mult"


def _problems(c: QRCompression, cardinality: Cardinality, embedding_dim: int) -> list[Problem]:
    out: list[Problem] = []
    product = 1
    for r in c.low_radices:
        product *= r
    field = "num_collisions" if c.num_collisions is not None else "radices"
    if product >= cardinality:
        shown = c.num_collisions if c.num_collisions is not None else list(c.radices)
        out.append(Problem(
            f"compression.{field}",
            f"got {shown} (product {product}) >= cardinality {cardinality}: the collisions "
            f"are larger than the vocabulary, so the top partition has one row; use a product < {cardinality}",
        ))
    k = len(c.low_radices) + 1
    if c.operation == "concat" and embedding_dim < 4 * k:
        out.append(Problem(
            "compression.operation",
            f"got 'concat', which splits embedding_dim {embedding_dim} into {k} parts of "
            f"at least 4; use 'mult' / 'add' or embedding_dim >= {4 * k}",
        ))
    return out


SCHEMA = MethodSchema(
    kind="qr",
    compression=QRCompression,
    options=QRBudgetOptions,
    solver_owned=("num_collisions", "radices"),
    needs_vocab=True,
    feature_problems=_problems,
    paper="Shi et al., KDD 2020 (compositional embeddings, quotient-remainder)",
)
