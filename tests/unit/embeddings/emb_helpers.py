"""Shared helpers: small specs with every compression kind and random jagged batches."""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.features import DatasetSpec, spec_from_dict


def make_spec(compressions: dict[str, dict], *, cardinality: int = 1000, max_length: int = 1, pooling: str = "sum",
              dim: int = 16, groups: list[dict] | None = None) -> DatasetSpec:
    """One sparse feature per entry of ``compressions`` (name -> compression dict)."""
    features = [
        {"name": name, "kind": "sparse", "cardinality": cardinality, "max_length": max_length, "pooling": pooling,
         "embedding_dim": dim, "compression": c}
        for name, c in compressions.items()
    ]
    return spec_from_dict({"name": "t", "features": features, "groups": groups or []})


def random_kjt(spec: DatasetSpec, batch: int = 8, seed: int = 0, high: int | None = None, skewed: bool = False) -> KeyedJaggedTensor:
    """Random bags of 0..max_length ids (empty bags included) for every sparse feature.

    ``skewed``: log-uniform ids (hot low indices, like frequency-ordered vocabularies).

    #        i = 0     i = 1    i = 2   <-- batch index
    # "f1"   [0, 1]    []       [2]
    """
    g = torch.Generator().manual_seed(seed)
    keys, values, lengths = [], [], []
    for f in spec.sparse:
        n = f.cardinality if high is None else high
        lens = torch.randint(0, f.max_length + 1, (batch,), generator=g)
        if f.max_length == 1:
            lens[0] = 0  # one empty bag even for single-valued features
            lens[1:] = 1
        keys.append(f.name)
        lengths.append(lens)
        count = int(lens.sum())
        if skewed:
            ids = (torch.pow(float(n), torch.rand(count, generator=g, dtype=torch.float64)) - 1).long().clamp(0, n - 1)
        else:
            ids = torch.randint(0, n, (count,), generator=g)
        values.append(ids)
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))


GROUP = [{"name": "shared", "num_buckets": 97, "num_chunks": 2, "num_tables": 2}]

# One entry per method variant; used by the reference, memory and export tests.
VARIANTS: dict[str, dict] = {
    "full": {"kind": "full"},
    "hashed": {"kind": "hashed", "num_buckets": 101},
    "multi_hash_sum": {"kind": "multi_hash", "num_buckets": 101, "num_hashes": 3},
    "multi_hash_concat": {"kind": "multi_hash", "num_buckets": 101, "num_hashes": 2, "combiner": "concat"},
    "multi_hash_weights": {"kind": "multi_hash", "num_buckets": 101, "num_hashes": 2, "importance_weights": True, "num_weight_buckets": 53},
    "qr_mult": {"kind": "qr", "num_collisions": 7, "operation": "mult"},
    "qr_add": {"kind": "qr", "num_collisions": 7, "operation": "add"},
    "qr_concat": {"kind": "qr", "num_collisions": 7, "operation": "concat"},
    "qr_k3_mult": {"kind": "qr", "radices": [5, 6], "operation": "mult"},
    "qr_k3_concat": {"kind": "qr", "radices": [5, 6], "operation": "concat"},
    "mixed_dim": {"kind": "mixed_dim", "num_blocks": 4, "alpha": 0.6},
    "mixed_dim_explicit": {"kind": "mixed_dim", "num_blocks": 3, "block_boundaries": [10, 200], "base_dim": 24},
    "unified": {"kind": "unified", "group": "shared"},
    "tt": {"kind": "tt", "rank": 8},
    "tt_k2": {"kind": "tt", "rank": 4, "num_cores": 2},
    "dhe": {"kind": "dhe", "hidden_dim": 24, "num_hashes": 32},
}


def variant_spec(name: str, **kwargs) -> DatasetSpec:
    c = VARIANTS[name]
    groups = GROUP if c["kind"] == "unified" else None
    # Two features per variant: shared tables, seeds and key routing are exercised.
    return make_spec({"A": c, "B": c}, groups=groups, **kwargs)
