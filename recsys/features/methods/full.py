"""``full``: one ``cardinality x embedding_dim`` table over the feature's vocabulary (the baseline)."""

from __future__ import annotations

from typing import Literal

from recsys.features.methods.base import CompressionModel, MethodSchema, OptionsModel


class FullCompression(CompressionModel):
    """One ``cardinality x embedding_dim`` table over the feature's vocabulary (the baseline)."""

    kind: Literal["full"] = "full"


class FullBudgetOptions(OptionsModel):
    """``full``: nothing to choose."""


SCHEMA = MethodSchema(kind="full", compression=FullCompression, options=FullBudgetOptions, needs_vocab=True, paper="-")
