"""The schema half of a compression method: what ``recsys.features`` knows about it.

A method's schema file (``recsys/features/methods/<kind>.py``) declares one :class:`MethodSchema`
named ``SCHEMA``: the per-feature compression spec (a frozen pydantic model with ``kind:
Literal["<kind>"]``), the budget solver's options, which hyperparameters the solver owns, whether
the method needs dense vocabulary ids, and the checks that need the feature (cardinality, dim).
The build half (tables, transform, combiner, naive reference, the solver's knob) lives in
``recsys/embeddings/methods/<kind>.py``, joined by the kind; ``features/`` never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Union

from pydantic import BaseModel, ConfigDict

from recsys.features.errors import Problem

Cardinality = Union[int, Literal["raw"]]
FeatureCheck = Callable[[BaseModel, Cardinality, int], list[Problem]]


Precision = Literal["fp32", "fp16"]
PRECISION_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2}


class CompressionModel(BaseModel):
    """Base of every per-feature compression spec: frozen, unknown keys refused.

    Args:
        precision: how the rows of the method's physical tables are stored: ``fp32`` or ``fp16``
            (half the bytes; FBGEMM's kernels read FP16 rows and accumulate in FP32, and the
            fused optimizer writes them back rounded). Dense parameters (projections) stay FP32.
            ``embeddings.precision`` in a training config sets it for every feature.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision = "fp32"


class OptionsModel(BaseModel):
    """Base of every budget-options schema: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_checks(compression: BaseModel, cardinality: Cardinality, embedding_dim: int) -> list[Problem]:
    return []


@dataclass(frozen=True)
class MethodSchema:
    """What ``recsys.features`` knows about one compression method.

    Attributes:
        kind: the tag of ``compression: {kind: ...}`` and of ``embeddings.budget.method``.
        compression: the per-feature spec model (its ``kind`` field is ``Literal[kind]``).
        options: the budget solver's options for this method (every key optional).
        solver_owned: the compression fields the solver sets to meet the budget; given as
            options they are refused with a pointer to ``embeddings.compression.<feature>``.
        needs_vocab: the method needs dense ids ``[0, cardinality)`` (no ``cardinality: raw``).
        feature_problems: checks that need the feature, ``(compression, cardinality,
            embedding_dim) -> problems`` with paths relative to the feature (``compression.<key>``).
        paper: where the method comes from, for listings and docs.
    """

    kind: str
    compression: type[BaseModel]
    options: type[BaseModel]
    solver_owned: tuple[str, ...] = ()
    needs_vocab: bool = False
    feature_problems: FeatureCheck = field(default=_no_checks)
    paper: str = ""
