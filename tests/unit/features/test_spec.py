"""Feature spec schema: every shipped YAML validates; each bad config gets its message."""

from __future__ import annotations

from pathlib import Path

import pytest

import recsys
from recsys.features import SpecError, builtin_spec, builtin_spec_names, builtin_spec_path, load_spec, spec_from_dict

SHIPPED = [builtin_spec_path(name) for name in builtin_spec_names()]
REPO = Path(__file__).resolve().parents[3]


def _spec(*features, **top):
    return {"name": "t", "features": list(features), **top}


SPARSE = {"name": "C1", "kind": "sparse", "cardinality": 100}


def test_every_shipped_spec_is_found():
    assert {p.stem for p in SHIPPED} >= {"criteo", "movielens", "synthetic", "synthetic_interactions"}


def test_shipped_specs_are_the_top_level_features_folder():
    """In the source tree the package data is features/ itself (recsys/features/specs is a symlink)."""
    if not Path(recsys.__file__).resolve().is_relative_to(REPO):
        pytest.skip("recsys is installed, not imported from this checkout")
    top = sorted((REPO / "features").glob("*.yaml"))
    assert [p.stem for p in top] == builtin_spec_names()
    for path in top:
        assert builtin_spec_path(path.stem).resolve() == path.resolve()
        assert builtin_spec(path.stem) == load_spec(path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_validates(path: Path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.sparse, "a shipped spec needs sparse features"
    for f in spec.sparse:
        assert f.embedding_dim % 4 == 0


def test_criteo_layout():
    spec = builtin_spec("criteo")
    assert [f.name for f in spec.dense] == [f"I{i}" for i in range(1, 14)]
    assert [f.name for f in spec.sparse] == [f"C{i}" for i in range(1, 27)]
    assert spec.label.name == "label"
    assert all(f.transform == "log1p" for f in spec.dense)


def test_movielens_towers_and_bags():
    spec = builtin_spec("movielens")
    towers = {f.name: f.tower for f in spec.sparse}
    assert towers["user_id"] == "user" and towers["item_id"] == "item"
    genres = spec.feature("genres")
    assert genres.multi_valued and genres.max_length == 6 and genres.pooling == "mean"
    assert spec.timestamp == "timestamp"


def test_synthetic_cardinalities_span_criteo_range():
    cards = [f.cardinality for f in builtin_spec("synthetic").sparse]
    assert min(cards) <= 4 and max(cards) >= 10_000_000
    assert any(f.multi_valued for f in builtin_spec("synthetic").sparse)


def test_defaults():
    f = spec_from_dict(_spec(SPARSE)).sparse[0]
    assert (f.max_length, f.pooling, f.tower, f.embedding_dim, f.min_count) == (1, "sum", "context", 16, 1)
    assert f.compression.kind == "full"


def test_all_errors_reported_at_once_with_dotted_paths():
    raw = _spec(
        {"name": "C1", "kind": "sparse", "cardinality": "lots", "embedding_dim": 10, "colour": "red"},
        {"name": "I1", "kind": "dense", "cardinality": 5},
        {"name": "x", "kind": "categorical"},
        bogus=1,
    )
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw, "my.yaml")
    errors = info.value.errors
    text = str(info.value)
    assert "my.yaml" in text and f"{len(errors)} error(s)" in text
    assert any(e.startswith("features[C1].cardinality: got 'lots'") and "'raw'" in e for e in errors)
    assert any(e.startswith("features[C1].embedding_dim: got 10") and "multiple of 4" in e for e in errors)
    assert any(e.startswith("features[C1].colour: unknown key (got 'red'); allowed keys: ['cardinality'") for e in errors)
    assert "features[I1].cardinality: unknown key (got 5); allowed keys: ['kind', 'name', 'transform']" in errors
    assert "features[x].kind: got 'categorical'; allowed: 'sparse', 'dense', 'label'" in errors
    assert "bogus: unknown key (got 1); allowed keys: ['description', 'features', 'groups', 'name', 'timestamp']" in errors
    assert len(errors) == 6


@pytest.mark.parametrize(
    "feature, match",
    [
        ({"name": "C1", "kind": "sparse", "cardinality": 1}, r"features\[C1\]\.cardinality: got 1"),
        ({"name": "C1", "kind": "sparse", "cardinality": 10, "max_length": 0}, r"features\[C1\]\.max_length: got 0"),
        ({"name": "C1", "kind": "sparse", "cardinality": 10, "pooling": "max"}, r"features\[C1\]\.pooling: got 'max'.*'sum'"),
        ({"name": "C1", "kind": "sparse", "cardinality": 10, "tower": "left"}, r"features\[C1\]\.tower: got 'left'.*'user'"),
        ({"name": "C1", "kind": "sparse"}, r"features\[C1\]\.cardinality: required key is missing"),
        ({"name": "1bad", "kind": "sparse", "cardinality": 10}, r"features\[1bad\]\.name: got '1bad'"),
        ({"name": "C1", "kind": "sparse", "cardinality": "raw"}, r"features\[C1\]\.compression\.kind: got 'full' but cardinality 'raw'.*cannot use compression kind 'full'"),
        ({"name": "C1", "kind": "sparse", "cardinality": 10, "compression": {"kind": "full", "x": 1}}, r"features\[C1\]\.compression\.x: unknown key"),
        ({"name": "I1", "kind": "dense", "transform": "sqrt"}, r"features\[I1\]\.transform: got 'sqrt'.*'log1p'"),
        ({"name": "C1", "cardinality": 10}, r"features\[C1\]\.kind: required key is missing; allowed: 'sparse', 'dense', 'label'"),
    ],
)
def test_bad_feature_messages(feature, match):
    with pytest.raises(SpecError, match=match):
        spec_from_dict(_spec(SPARSE if feature.get("name") != "C1" else {**SPARSE, "name": "C0"}, feature))


def test_dataset_level_errors():
    with pytest.raises(SpecError, match=r"duplicate feature names \['C1'\]"):
        spec_from_dict(_spec(SPARSE, SPARSE))
    with pytest.raises(SpecError, match="2 label features"):
        spec_from_dict(_spec(SPARSE, {"name": "a", "kind": "label"}, {"name": "b", "kind": "label"}))
    with pytest.raises(SpecError, match="no sparse feature"):
        spec_from_dict(_spec({"name": "a", "kind": "label"}))
    with pytest.raises(SpecError, match="timestamp column 'C1' is also listed"):
        spec_from_dict(_spec(SPARSE, timestamp="C1"))
    with pytest.raises(SpecError, match="expected a mapping"):
        spec_from_dict(["not", "a", "mapping"])


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_spec_is_frozen_and_resolution_does_not_mutate():
    spec = spec_from_dict(_spec(SPARSE))
    resolved = spec.with_cardinalities({"C1": 7})
    assert resolved.sparse[0].cardinality == 7
    assert spec.sparse[0].cardinality == 100
    with pytest.raises(Exception):
        spec.sparse[0].cardinality = 5  # type: ignore[misc]
    assert spec_from_dict(resolved.to_dict()) == resolved


def test_builtin_spec_unknown_name():
    with pytest.raises(ValueError, match=r"no built-in feature spec 'nope'; known: \[.*'criteo'"):
        builtin_spec("nope")
    with pytest.raises(ValueError, match="no built-in feature spec 'nope'"):
        builtin_spec_path("nope")
