"""Compression specs: every kind parses; bad ones fail at load with the feature named."""

from __future__ import annotations

import pytest

from recsys.features import SpecError, spec_from_dict
from recsys.features.compression import COMPRESSION_KINDS


def _spec(*features, groups=None):
    raw = {"name": "t", "features": list(features)}
    if groups is not None:
        raw["groups"] = groups
    return raw


def _sparse(name="C1", compression=None, **kw):
    f = {"name": name, "kind": "sparse", "cardinality": kw.pop("cardinality", 1000), **kw}
    if compression is not None:
        f["compression"] = compression
    return f


def _errors(raw) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    return info.value.errors


GOOD = [
    {"kind": "full"},
    {"kind": "hashed", "num_buckets": 100},
    {"kind": "multi_hash", "num_buckets": 100, "num_hashes": 2, "combiner": "concat", "importance_weights": True},
    {"kind": "qr", "num_collisions": 16, "operation": "mult"},
    {"kind": "qr", "radices": [8, 8], "operation": "add"},
    {"kind": "mixed_dim", "num_blocks": 3, "alpha": 0.3, "base_dim": 32, "block_boundaries": [10, 100]},
]


@pytest.mark.parametrize("compression", GOOD, ids=lambda c: c["kind"])
def test_each_kind_parses(compression):
    f = spec_from_dict(_spec(_sparse(compression=compression))).sparse[0]
    assert f.compression.kind == compression["kind"]
    assert f.compression.kind in COMPRESSION_KINDS


def test_unified_group_parses():
    spec = spec_from_dict(
        _spec(
            _sparse("C1", {"kind": "unified", "group": "g"}),
            _sparse("C2", {"kind": "unified", "group": "g"}, cardinality="raw"),
            groups=[{"name": "g", "num_buckets": 5000, "num_chunks": 2, "num_tables": 2}],
        )
    )
    assert spec.groups[0].num_chunks == 2 and spec.sparse[1].compression.group == "g"


def test_raw_ids_take_hashing_kinds_only():
    spec_from_dict(_spec(_sparse(cardinality="raw", compression={"kind": "hashed", "num_buckets": 10})))
    (err,) = _errors(_spec(_sparse(cardinality="raw", compression={"kind": "qr", "num_collisions": 4})))
    assert err.startswith("features[C1]") and "raw" in err


@pytest.mark.parametrize(
    "compression, fragment",
    [
        ({"kind": "hashed", "num_buckets": 0}, "features[C1].compression.num_buckets: got 0"),
        ({"kind": "hashed", "num_buckets": 1000}, "compression.num_buckets: got 1000 >= cardinality 1000"),
        ({"kind": "multi_hash", "num_buckets": 0}, "features[C1].compression.num_buckets: got 0"),
        ({"kind": "multi_hash", "num_buckets": 10, "num_hashes": 3, "combiner": "concat"}, "compression.combiner"),
        ({"kind": "multi_hash", "num_buckets": 10, "num_weight_buckets": 5}, "importance_weights"),
        ({"kind": "qr", "num_collisions": 5000}, "compression.num_collisions: got 5000 (product 5000) >= cardinality 1000"),
        ({"kind": "qr", "radices": [40, 40]}, "compression.radices: got [40, 40] (product 1600) >= cardinality 1000"),
        ({"kind": "qr", "num_collisions": 4, "operation": "pow"}, "features[C1].compression.operation: got 'pow'"),
        ({"kind": "qr"}, "exactly one of num_collisions"),
        ({"kind": "qr", "num_collisions": 4, "radices": [4]}, "exactly one of num_collisions"),
        ({"kind": "mixed_dim", "base_dim": 10}, "features[C1].compression.base_dim: got 10"),
        ({"kind": "mixed_dim", "num_blocks": 3, "block_boundaries": [5]}, "needs 2"),
        ({"kind": "mixed_dim", "num_blocks": 3, "block_boundaries": [50, 5000]}, "block_boundaries: got [50, 5000]; last boundary 5000"),
        ({"kind": "bloom"}, "features[C1].compression.kind: got 'bloom'; allowed: 'full', 'hashed'"),
        ({"kind": "hashed", "num_buckets": 10, "colour": 1}, "features[C1].compression.colour: unknown key (got 1); allowed keys: ['kind', 'num_buckets', 'precision']"),
    ],
)
def test_bad_compression_names_the_feature(compression, fragment):
    errors = _errors(_spec(_sparse(compression=compression)))
    assert any(fragment in e for e in errors), errors
    assert all(e.startswith("features[C1]") for e in errors), errors


def test_all_feature_errors_at_once():
    errors = _errors(
        _spec(
            _sparse("C1", {"kind": "hashed", "num_buckets": 0}),
            _sparse("C2", {"kind": "qr", "num_collisions": 4, "operation": "pow"}),
        )
    )
    assert [e.split(".")[0] for e in errors] == ["features[C1]", "features[C2]"]


def test_unified_group_with_conflicting_dims():
    errors = _errors(
        _spec(
            _sparse("C1", {"kind": "unified", "group": "g"}, embedding_dim=16),
            _sparse("C2", {"kind": "unified", "group": "g"}, embedding_dim=32),
            groups=[{"name": "g", "num_buckets": 100}],
        )
    )
    assert len(errors) == 1
    assert errors[0].startswith("features[C2].embedding_dim: got 32 but unified group 'g'") and "C1" in errors[0]


def test_unified_group_problems_named():
    errors = _errors(
        _spec(
            _sparse("C1", {"kind": "unified", "group": "nope"}),
            _sparse("C2", {"kind": "unified", "group": "g"}, embedding_dim=12),
            groups=[{"name": "g", "num_buckets": 100, "num_chunks": 2}, {"name": "idle", "num_buckets": 10}],
        )
    )
    assert any(e.startswith("features[C1].compression.group: got 'nope'") for e in errors), errors
    assert any(e.startswith("groups[g].num_chunks: got 2") for e in errors), errors
    assert any(e.startswith("groups[idle]: no feature uses this group") for e in errors), errors


def test_group_field_errors_use_group_name():
    errors = _errors(
        _spec(_sparse("C1", {"kind": "unified", "group": "g"}), groups=[{"name": "g", "num_buckets": 0, "num_chunks": 1, "num_tables": 2}])
    )
    assert any(e.startswith("groups[g].num_buckets: got 0") for e in errors), errors
