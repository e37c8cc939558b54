"""Training configs: every shipped config loads, overrides, errors listed at once with dotted paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.features import spec_from_dict
from recsys.train.config import ConfigError, config_from_dict, load_config, parse_overrides, resolve_spec

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads_and_starts_with_its_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# recsys train configs/{path.name}"
    config = load_config(path)
    assert config.data.path


def test_there_is_a_config_per_family():
    names = {p.stem for p in CONFIGS}
    for family in ("full", "hashed", "multi_hash", "qr", "mixed_dim", "unified"):
        assert f"ctr_synthetic_{family}" in names
    assert any(n.startswith("ctr_criteo_") for n in names)


def test_overrides_are_yaml_scalars_and_nested():
    config = config_from_dict(
        {"data": {"path": "d"}},
        ["train.epochs=3", "model.arch=dcn", "model.dense_layers=[32, 8]", "ray.use_gpu=false",
         "embeddings.compression.C3={kind: hashed, num_buckets: 10}", "run_dir=runs/x", "resume=true"],
    )
    assert config.train.epochs == 3 and config.model.arch == "dcn" and config.model.dense_layers == (32, 8)
    assert config.embeddings.compression["C3"].num_buckets == 10
    assert config.run_dir == "runs/x" and config.resume is True


def test_config_is_frozen_and_caller_dict_untouched():
    raw = {"data": {"path": "d"}}
    config = config_from_dict(raw, ["data.batch_size=8"])
    assert raw == {"data": {"path": "d"}}
    with pytest.raises(Exception):
        config.data.batch_size = 3


def test_all_errors_at_once_with_paths_and_allowed_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {"data": {"path": "d", "batchsize": 3}, "model": {"arch": "dcn", "cross": 2}},
            ["train.epochs=0", "ray.nope=1", "no_equals_sign"],
        )
    errors = info.value.errors
    assert len(errors) == 5
    text = "\n".join(errors)
    assert "data.batchsize: unknown key; allowed keys: ['batch_size'" in text
    assert "model.cross: unknown key; allowed keys: ['arch', 'cross_layers'" in text
    assert "train.epochs: got 0" in text
    assert "ray.nope: unknown key" in text and "'num_workers'" in text
    assert "override 'no_equals_sign'" in text


def test_missing_data_path_and_bad_yaml_value():
    with pytest.raises(ConfigError, match="data: required key is missing"):
        config_from_dict({})
    _, errors = parse_overrides(["a={b: ["])
    assert errors and "not YAML" in errors[0]


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def _spec():
    features = [{"name": "label", "kind": "label"}, {"name": "I1", "kind": "dense"}]
    features += [{"name": n, "kind": "sparse", "cardinality": c} for n, c in (("C1", 1000), ("C2", 50))]
    return spec_from_dict({"name": "s", "features": features})


def test_resolve_spec_unknown_feature_is_a_clear_error():
    config = config_from_dict({"data": {"path": "d"}, "embeddings": {"compression": {"C9": {"kind": "hashed", "num_buckets": 10}}}})
    with pytest.raises(ConfigError, match=r"embeddings.compression.C9: no sparse feature 'C9'.*known sparse features: \['C1', 'C2'\]"):
        resolve_spec(config, _spec())


def test_resolve_spec_overrides_and_budget():
    config = config_from_dict({"data": {"path": "d"}, "embeddings": {"compression": {"C1": {"kind": "qr", "num_collisions": 8}}}})
    spec, _ = resolve_spec(config, _spec())
    assert spec.feature("C1").compression.kind == "qr" and spec.feature("C2").compression.kind == "full"

    config = config_from_dict({"data": {"path": "d"}, "embeddings": {"budget": {"method": "hashed", "ratio": 0.25}}})
    spec, notes = resolve_spec(config, _spec())
    assert spec.feature("C1").compression.kind == "hashed" and notes


def test_resolve_spec_invalid_override_names_the_field():
    config = config_from_dict({"data": {"path": "d"}, "embeddings": {"compression": {"C2": {"kind": "hashed", "num_buckets": 500}}}})
    with pytest.raises(ConfigError, match=r"embeddings.compression.C2.num_buckets: got 500 >= cardinality 50"):
        resolve_spec(config, _spec())
