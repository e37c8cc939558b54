"""``dhe``: deep hash embeddings (Kang et al., KDD 2021): hashes -> dense encoding -> MLP, no table."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from recsys.features.methods.base import CompressionModel, MethodSchema, OptionsModel

NumEncodingHashes = Annotated[int, Field(ge=2, le=4096)]
NumLayers = Annotated[int, Field(ge=1, le=8)]


class DHECompression(CompressionModel):
    """Deep hash embeddings: no table; ``num_hashes`` seeded hashes of the id, each scaled to
    ``[-1, 1]``, are the input of an MLP (``num_layers`` hidden layers of ``hidden_dim``, Mish)
    whose output is the feature's vector. Memory is the MLP's, independent of the cardinality;
    raw ids work.

    Args:
        hidden_dim: width of the hidden layers.
        num_hashes: k, the dense encoding's width (the paper uses 1024).
        num_layers: hidden layers.
    """

    kind: Literal["dhe"]
    hidden_dim: Annotated[int, Field(ge=1, le=8192)]
    num_hashes: NumEncodingHashes = 64
    num_layers: NumLayers = 2


class DHEBudgetOptions(OptionsModel):
    """``dhe``: the solver picks each feature's ``hidden_dim``."""

    num_hashes: NumEncodingHashes = 64
    num_layers: NumLayers = 2


SCHEMA = MethodSchema(
    kind="dhe",
    compression=DHECompression,
    options=DHEBudgetOptions,
    solver_owned=("hidden_dim",),
    paper="Kang et al., KDD 2021 (deep hash embeddings)",
)
