"""Training configs: every shipped config loads, overrides, errors listed at once with dotted paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsys.features import spec_from_dict
from recsys.train.config import ConfigError, config_from_dict, load_config, parse_overrides, resolve_spec

# Training configs (bench_*.yaml are sweep configs, loaded by the sweep's own tests).
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[3] / "configs").glob("*.yaml") if not p.name.startswith("bench_"))


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
    assert "data.batchsize: unknown key (got 3); allowed keys: ['batch_size'" in text
    assert "model.cross: unknown key (got 2); allowed keys: ['arch', 'cross_layers'" in text
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


# -- budget options: typed per method, checked at load ----------------------------------------


def _budget(method, options):
    return {"data": {"path": "d"}, "embeddings": {"budget": {"method": method, "ratio": 0.25, "options": options}}}


SOLVER_OWNED_HINT = r"set by the budget solver; remove it or use embeddings\.compression\.<feature> for a fixed size"


@pytest.mark.parametrize(
    "method, options, expected",
    [
        ("hashed", {"num_bucket": 4}, [r"embeddings\.budget\.options\.num_bucket: unknown key \(got 4\); allowed keys for method 'hashed': none"]),
        ("unified", {"num_chunk": 4}, [r"embeddings\.budget\.options\.num_chunk: unknown key \(got 4\); allowed keys for method 'unified': \['num_chunks', 'num_tables'\]"]),
        ("mixed_dim", {"num_block": 8, "alfa": 0.3}, [
            r"embeddings\.budget\.options\.alfa: unknown key \(got 0\.3\); allowed keys for method 'mixed_dim': \['num_blocks'\]",
            r"embeddings\.budget\.options\.num_block: unknown key \(got 8\); allowed keys for method 'mixed_dim': \['num_blocks'\]",
        ]),
        ("qr", {"num_collisions": 3}, [rf"embeddings\.budget\.options\.num_collisions: got 3; {SOLVER_OWNED_HINT}; allowed keys for method 'qr': \['operation'\]"]),
        ("hashed", {"num_buckets": 100}, [rf"embeddings\.budget\.options\.num_buckets: got 100; {SOLVER_OWNED_HINT}"]),
        ("mixed_dim", {"alpha": 0.3}, [rf"embeddings\.budget\.options\.alpha: got 0\.3; {SOLVER_OWNED_HINT}"]),
        ("multi_hash", {"num_hashes": 9, "combiner": "max"}, [
            r"embeddings\.budget\.options\.combiner: got 'max'; allowed: 'sum' or 'concat'",
            r"embeddings\.budget\.options\.num_hashes: got 9; allowed: >= 2 and <= 8",
        ]),
        ("unified", {"num_chunks": 2, "num_tables": 3}, [r"embeddings\.budget\.options\.num_tables: got 3; allowed: <= num_chunks \(2\)"]),
        ("full", {"operation": "mult"}, [r"embeddings\.budget\.options\.operation: unknown key \(got 'mult'\); allowed keys for method 'full': none"]),
    ],
    ids=["hashed-typo", "unified-typo", "mixed_dim-typos", "qr-solver-owned", "hashed-solver-owned", "mixed_dim-solver-owned",
         "multi_hash-values", "unified-tables", "full-none"],
)
def test_budget_options_are_typed_per_method(method, options, expected):
    with pytest.raises(ConfigError, match=expected[0]) as info:
        config_from_dict(_budget(method, options))
    errors = info.value.errors
    assert len(errors) == len(expected), errors
    for line, pattern in zip(sorted(errors), expected):
        assert re.match(pattern, line), (pattern, errors)


def test_budget_options_checked_by_load_config_before_any_data(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {path: does/not/exist}\nembeddings: {budget: {method: qr, ratio: 0.1, options: {num_collisions: 3}}}\n")
    with pytest.raises(ConfigError, match=r"embeddings\.budget\.options\.num_collisions: got 3; set by the budget solver"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"embeddings\.budget\.options\.num_bucket: unknown key"):
        load_config(path, ["embeddings.budget.method=hashed", "embeddings.budget.options={num_bucket: 4}"])


def test_budget_options_reach_the_solver():
    spec = _spec()
    config = config_from_dict(_budget("multi_hash", {"num_hashes": 3, "importance_weights": True}))
    c = resolve_spec(config, spec)[0].feature("C1").compression
    assert (c.kind, c.num_hashes, c.importance_weights) == ("multi_hash", 3, True)

    config = config_from_dict(_budget("qr", {"operation": "concat"}))
    c = resolve_spec(config, spec)[0].feature("C1").compression
    assert (c.kind, c.operation) == ("qr", "concat")

    config = config_from_dict(_budget("mixed_dim", {"num_blocks": 3}))
    c = resolve_spec(config, spec)[0].feature("C1").compression
    assert (c.kind, c.num_blocks) == ("mixed_dim", 3)

    config = config_from_dict(_budget("unified", {"num_chunks": 4, "num_tables": 2}))
    resolved = resolve_spec(config, spec)[0]
    assert [(g.num_chunks, g.num_tables) for g in resolved.groups] == [(4, 2)]
    assert config.embeddings.budget.method_options.num_chunks == 4
    assert config.embeddings.budget.options == {"num_chunks": 4, "num_tables": 2}  # as written: what config.json keeps


def test_unified_budget_defaults_live_in_the_schema():
    config = config_from_dict(_budget("unified", {}))
    resolved = resolve_spec(config, _spec())[0]
    assert [(g.num_chunks, g.num_tables) for g in resolved.groups] == [(2, 1)]


# -- one formatter: every section, full dotted paths, all at once --------------------------


def test_errors_across_sections_have_full_dotted_paths():
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "data": {"path": "d", "batch_size": 0},
                "model": {"arch": "dcn", "low_rank": 0},
                "embeddings": {
                    "budget": {"method": "unified", "ratio": 0.1, "options": {"num_chunks": 4, "num_chunk": 2}},
                    "compression": {
                        "C1": {"kind": "qr", "num_collisions": 1, "operation": "pow"},
                        "C2": {"kind": "multi_hash", "num_buckets": 10, "num_hashes": 1},
                        "C3": {"kind": "hashed", "num_buckets": 0},
                        "C4": {"kind": "bloom"},
                    },
                    "groups": [{"name": "g", "num_buckets": 10, "num_chunks": 1, "num_tables": 2}],
                },
                "optimizer": {"embedding": {"kind": "lion"}},
                "sharding": {"tables": {"C1__full": {"sharding_types": ["row_wise", "diagonal"]}}},
                "ray": {"num_workers": 0},
            },
            ["train.epochs=0"],
        )
    assert info.value.errors == [
        "data.batch_size: got 0; allowed: >= 1",
        "model.low_rank: got 0; allowed: >= 1",
        "embeddings.budget.options.num_chunk: unknown key (got 2); allowed keys for method 'unified': ['num_chunks', 'num_tables']",
        "embeddings.compression.C1.num_collisions: got 1; allowed: >= 2",
        "embeddings.compression.C1.operation: got 'pow'; allowed: 'mult', 'add' or 'concat'",
        "embeddings.compression.C2.num_hashes: got 1; allowed: >= 2 and <= 8",
        "embeddings.compression.C3.num_buckets: got 0; allowed: >= 1",
        "embeddings.compression.C4.kind: got 'bloom'; allowed: 'full', 'hashed', 'multi_hash', 'qr', 'mixed_dim', 'unified', 'tt', 'dhe'",
        "embeddings.groups[g].num_tables: got 2; allowed: <= num_chunks (1), since a table needs at least one chunk",
        "optimizer.embedding.kind: got 'lion'; allowed: 'rowwise_adagrad', 'adagrad', 'adam' or 'sgd'",
        "train.epochs: got 0; allowed: >= 1",
        "sharding.tables.C1__full.sharding_types[1]: got 'diagonal'; allowed: 'data_parallel', 'table_wise', "
        "'column_wise', 'table_column_wise', 'row_wise', 'table_row_wise' or 'grid_shard'",
        "ray.num_workers: got 0; allowed: >= 1",
    ]


@pytest.mark.parametrize(
    "override, line",
    [
        ("model.arch=transformer", "model.arch: got 'transformer'; allowed: 'dlrm', 'dcn', 'two_tower'"),
        ("embeddings.compression.C1={num_buckets: 10}", "embeddings.compression.C1.kind: required key is missing; allowed: 'full', 'hashed', 'multi_hash', 'qr', 'mixed_dim', 'unified', 'tt', 'dhe'"),
        ("embeddings.compression.C1={kind: qr}", "embeddings.compression.C1: got neither num_collisions nor radices; give exactly one of num_collisions (2 partitions) or radices (k partitions)"),
        ("embeddings.compression.C1={kind: multi_hash, num_buckets: 10, num_weight_buckets: 5}", "embeddings.compression.C1.num_weight_buckets: got 5 but importance_weights is false; set importance_weights: true or remove num_weight_buckets"),
        ("embeddings.budget={method: qr, ratio: 0}", "embeddings.budget.ratio: got 0; allowed: > 0.0 and <= 1.0"),
        ("resume=maybe", "resume: got 'maybe'; allowed: true or false"),
    ],
)
def test_one_error_one_line_no_pydantic_noise(override, line):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"path": "d"}}, [override])
    assert info.value.errors == [line]


def test_spec_errors_of_an_override_point_at_the_override():
    config = config_from_dict({"data": {"path": "d"}, "embeddings": {
        "compression": {"C1": {"kind": "qr", "num_collisions": 2000}, "C2": {"kind": "multi_hash", "num_buckets": 10, "num_hashes": 3, "combiner": "concat"}}}})
    with pytest.raises(ConfigError) as info:
        resolve_spec(config, _spec())
    assert info.value.errors == [
        "embeddings.compression.C1.num_collisions: got 2000 (product 2000) >= cardinality 1000: the collisions are larger "
        "than the vocabulary, so the top partition has one row; use a product < 1000",
        "embeddings.compression.C2.combiner: got 'concat', which reads 3 probes of one shared table, so embedding_dim 16 "
        "must split into 3 equal parts of a multiple of 4; use combiner 'sum' or another num_hashes",
    ]


def test_budget_option_and_other_budget_errors_come_together():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"path": "d"}, "embeddings": {"budget": {"method": "qr", "ratio": 3, "keep_full_below": -1, "options": {"operation": "pow"}}}})
    assert info.value.errors == [
        "embeddings.budget.ratio: got 3; allowed: > 0.0 and <= 1.0",
        "embeddings.budget.options.operation: got 'pow'; allowed: 'mult', 'add' or 'concat'",
        "embeddings.budget.keep_full_below: got -1; allowed: >= 0",
    ]
    with pytest.raises(ConfigError) as info:
        config_from_dict(_budget("bloom", {"num_buckets": 4}))
    assert info.value.errors == ["embeddings.budget.method: got 'bloom'; allowed: 'full', 'hashed', 'multi_hash', 'qr', 'mixed_dim', 'unified', 'tt' or 'dhe'"]
