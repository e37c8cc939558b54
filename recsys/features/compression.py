"""Compression specs: how a sparse feature's ids become rows of physical TorchRec tables.

A tagged union on ``kind``; each kind has its own typed, frozen schema. The families beyond
``full`` (hashed, multi_hash, qr, mixed_dim, unified) are defined by the compression issue and
compiled into plans by :mod:`recsys.embeddings`.

Example (YAML, inside a sparse feature)::

    compression: {kind: full}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FullCompression(_Spec):
    """One ``cardinality x embedding_dim`` table over the feature's vocabulary (the baseline)."""

    kind: Literal["full"] = "full"


CompressionSpec = FullCompression

COMPRESSION_KINDS: tuple[str, ...] = ("full",)
