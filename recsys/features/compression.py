"""Compression specs: how a sparse feature's ids become rows of physical TorchRec tables.

A tagged union on ``kind``, assembled from the method registry (:mod:`recsys.features.methods`:
one file per method declares its typed, frozen schema). They are compiled into plans (index
transform -> physical TorchRec tables -> combiner) by :mod:`recsys.embeddings`.

Example (YAML, inside a sparse feature)::

    compression: {kind: full}
    compression: {kind: hashed, num_buckets: 1000000}
    compression: {kind: multi_hash, num_buckets: 500000, num_hashes: 2, combiner: sum, importance_weights: true}
    compression: {kind: qr, num_collisions: 64, operation: mult}
    compression: {kind: qr, radices: [256, 256], operation: concat}     # 3 partitions (mixed radix)
    compression: {kind: mixed_dim, num_blocks: 4, alpha: 0.5}
    compression: {kind: unified, group: shared}   # the group is declared in the spec's `groups:`

Checks that need the feature (cardinality, embedding_dim) are each method's
``SCHEMA.feature_problems``, run by :class:`recsys.features.spec.SparseFeature`; checks across
features (unified groups) live in :class:`recsys.features.spec.DatasetSpec`.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from recsys.features.methods import KINDS, SCHEMAS
from recsys.features.methods.full import FullCompression
from recsys.features.methods.hashed import HashedCompression
from recsys.features.methods.mixed_dim import MixedDimCompression, NumBlocks
from recsys.features.methods.multi_hash import MultiHashCombiner, MultiHashCompression, NumHashes
from recsys.features.methods.qr import QRCompression, QROperation
from recsys.features.methods.unified import FeatureGroup, NumChunks, NumTables, UnifiedCompression, check_tables_le_chunks

CompressionSpec = Annotated[
    Union[tuple(SCHEMAS[kind].compression for kind in KINDS)],  # type: ignore[valid-type]
    Field(discriminator="kind"),
]

COMPRESSION_KINDS: tuple[str, ...] = KINDS

__all__ = [
    "COMPRESSION_KINDS",
    "CompressionSpec",
    "FeatureGroup",
    "FullCompression",
    "HashedCompression",
    "MixedDimCompression",
    "MultiHashCombiner",
    "MultiHashCompression",
    "NumBlocks",
    "NumChunks",
    "NumHashes",
    "NumTables",
    "QRCompression",
    "QROperation",
    "UnifiedCompression",
    "check_tables_le_chunks",
]
