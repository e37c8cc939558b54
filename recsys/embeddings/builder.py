"""Builders: a validated :class:`DatasetSpec` -> compiled methods -> a compressed collection.

Modules take flat typed arguments; each method's family (:mod:`recsys.embeddings.methods.registry`)
turns its compression spec into them, so this file never switches on a kind.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys.embeddings.collection import CompressedEmbeddingBagCollection
from recsys.embeddings.methods.base import FeatureMethod
from recsys.embeddings.methods.family import BuildContext
from recsys.embeddings.methods.mixed_dim import mixed_dim_layout
from recsys.embeddings.methods.registry import FAMILIES, family
from recsys.embeddings.plan import EmbeddingPlan, TableSpec
from recsys.features.compression import FeatureGroup
from recsys.features.spec import DatasetSpec, SparseFeature

__all__ = ["build_embedding_collection", "build_method", "compile_plan", "mixed_dim_layout"]


def build_method(
    feature: SparseFeature,
    groups: dict[str, FeatureGroup],
    counts: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> FeatureMethod:
    """Compile one sparse feature's compression spec into a method (its family's ``build``)."""
    c = feature.compression
    method = family(c.kind).build(feature, c, BuildContext(groups=groups, counts=counts, device=device))
    method.precision = c.precision
    return method


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

    # Tables owned by groups rather than by one feature (unified's shared tables).
    shared: list[TableSpec] = [t for fam in FAMILIES.values() if fam.shared_tables for t in fam.shared_tables(spec, methods)]

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
