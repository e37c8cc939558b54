"""Builders: a validated :class:`DatasetSpec` -> compiled methods -> a compressed collection.

Modules take flat typed arguments; this file is the only place that reads compression specs.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.embeddings.collection import CompressedEmbeddingBagCollection
from recsys.embeddings.methods.base import FeatureMethod
from recsys.embeddings.methods.full import FullMethod
from recsys.embeddings.methods.hashed import HashedMethod
from recsys.embeddings.methods.mixed_dim import MixedDimMethod, block_popularity, default_block_starts, mixed_dims
from recsys.embeddings.methods.multi_hash import MultiHashMethod
from recsys.embeddings.methods.qr import QRMethod
from recsys.embeddings.methods.unified import UnifiedMethod, group_tables
from recsys.embeddings.plan import EmbeddingPlan, TableSpec
from recsys.features.compression import FeatureGroup, MixedDimCompression
from recsys.features.spec import DatasetSpec, SparseFeature


def mixed_dim_layout(
    feature: SparseFeature, compression: MixedDimCompression, counts: np.ndarray | None = None
) -> tuple[list[int], list[int], str]:
    """Block starts, block dims and the popularity source of a mixed_dim feature."""
    n = int(feature.cardinality)
    starts = (
        [0, *compression.block_boundaries]
        if compression.block_boundaries is not None
        else default_block_starts(n, compression.num_blocks)
    )
    if compression.block_dims is not None:  # resolved earlier (recsys train writes them into the spec)
        return starts, list(compression.block_dims), "the spec's block_dims"
    if counts is not None and len(counts) != n:
        raise ValueError(f"feature {feature.name}: counts has {len(counts)} entries; cardinality is {n}")
    popularity = block_popularity(starts, n, counts)
    base = compression.base_dim or feature.embedding_dim
    source = "vocab counts" if counts is not None else "Zipf(1) assumption, no counts given"
    return starts, mixed_dims(base, compression.alpha, popularity), source


def build_method(
    feature: SparseFeature,
    groups: dict[str, FeatureGroup],
    counts: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> FeatureMethod:
    """Compile one sparse feature's compression spec into a method."""
    c = feature.compression
    common = dict(feature=feature.name, output_dim=feature.embedding_dim, multi_valued=feature.multi_valued)
    if c.kind == "full":
        return FullMethod(num_embeddings=int(feature.cardinality), **common)
    if c.kind == "hashed":
        return HashedMethod(num_buckets=c.num_buckets, **common)
    if c.kind == "multi_hash":
        return MultiHashMethod(
            num_buckets=c.num_buckets,
            num_hashes=c.num_hashes,
            combiner=c.combiner,
            importance_weights=c.importance_weights,
            num_weight_buckets=c.num_weight_buckets,
            **common,
        )
    if c.kind == "qr":
        return QRMethod(cardinality=int(feature.cardinality), radices=list(c.low_radices), operation=c.operation, **common)
    if c.kind == "mixed_dim":
        starts, dims, source = mixed_dim_layout(feature, c, counts)
        return MixedDimMethod(
            cardinality=int(feature.cardinality), block_starts=starts, block_dims=dims, popularity_source=source, device=device, **common
        )
    if c.kind == "unified":
        g = groups[c.group]
        return UnifiedMethod(group=g.name, num_buckets=g.num_buckets, num_chunks=g.num_chunks, num_tables=g.num_tables, **common)
    raise ValueError(f"feature {feature.name}: unknown compression kind {c.kind!r}")


def build_embedding_collection(
    spec: DatasetSpec,
    *,
    device: torch.device | str | None = None,
    counts: dict[str, np.ndarray] | None = None,
    features: list[str] | None = None,
) -> CompressedEmbeddingBagCollection:
    """Build the compressed collection of a data set's sparse features.

    Args:
        spec (DatasetSpec): validated spec (compressions and groups included).
        device: where to allocate; ``"meta"`` allocates nothing.
        counts: per-feature vocab counts (index-aligned, length = cardinality), used by mixed_dim.
        features: a subset of sparse feature names (default all, e.g. one tower's).
    """
    counts = counts or {}
    groups = {g.name: g for g in spec.groups}
    chosen = [f for f in spec.sparse if features is None or f.name in features]
    if features is not None and len(chosen) != len(features):
        missing = sorted(set(features) - {f.name for f in chosen})
        raise ValueError(f"features {missing} are not sparse features of spec {spec.name!r}")
    methods = [build_method(f, groups, counts.get(f.name), device) for f in chosen]

    shared: list[TableSpec] = []
    for g in spec.groups:
        users = [m for m in methods if isinstance(m, UnifiedMethod) and m.group == g.name]
        if not users:
            continue
        readers: list[list[str]] = [[] for _ in range(g.num_tables)]
        for m in users:
            for c, key in enumerate(m.keys):
                readers[c % g.num_tables].append(key)
        shared.extend(group_tables(g.name, g.num_buckets, users[0].output_dim // g.num_chunks, g.num_tables, readers))

    return CompressedEmbeddingBagCollection(
        methods,
        shared_tables=shared,
        pooling={f.name: f.pooling for f in chosen},
        full_rows={f.name: int(f.cardinality) for f in chosen if f.has_vocab},
        device=device,
    )


def compile_plan(spec: DatasetSpec, counts: dict[str, np.ndarray] | None = None) -> EmbeddingPlan:
    """The plan of a spec without allocating weights (built on the meta device)."""
    return build_embedding_collection(spec, device="meta", counts=counts).plan()
