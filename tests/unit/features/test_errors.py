"""The one error formatter: clean dotted paths through tagged unions, one line per problem."""

from __future__ import annotations

import pytest

from recsys.features import SpecError, builtin_spec, spec_from_dict
from recsys.features.budget_options import SOLVER_OWNED, parse_budget_options
from recsys.features.errors import Problem, Problems, join_path


def _errors(*features, **top) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "t", "features": list(features), **top})
    return info.value.errors


def test_bad_qr_and_multi_hash_options_have_clean_paths():
    errors = _errors(
        {"name": "C1", "kind": "sparse", "cardinality": 1000,
         "compression": {"kind": "qr", "num_collisions": "many", "radices": [1, 4], "operation": "pow"}},
        {"name": "C2", "kind": "sparse", "cardinality": 1000,
         "compression": {"kind": "multi_hash", "num_buckets": 10, "num_hashes": 1, "combiner": "max", "num_weight_buckets": 0, "seed": 3}},
    )
    assert errors == [
        "features[C1].compression.num_collisions: got 'many'; allowed: an integer >= 2",
        "features[C1].compression.radices[0]: got 1; allowed: >= 2",
        "features[C1].compression.operation: got 'pow'; allowed: 'mult', 'add' or 'concat'",
        "features[C2].compression.num_hashes: got 1; allowed: >= 2 and <= 8",
        "features[C2].compression.combiner: got 'max'; allowed: 'sum' or 'concat'",
        "features[C2].compression.num_weight_buckets: got 0; allowed: >= 1",
        "features[C2].compression.seed: unknown key (got 3); allowed keys: "
        "['combiner', 'importance_weights', 'kind', 'num_buckets', 'num_hashes', 'num_weight_buckets', 'precision']",
    ]
    noise = ("sparse.", ".qr", ".multi_hash", "function-", "constrained-", "Input should", "Value error")
    assert not [e for e in errors if any(n in e for n in noise)], errors


def test_model_level_checks_of_a_compression_name_their_field():
    errors = _errors(
        {"name": "C1", "kind": "sparse", "cardinality": 1000, "compression": {"kind": "qr", "num_collisions": 4, "radices": [4]}},
        {"name": "C2", "kind": "sparse", "cardinality": 1000, "compression": {"kind": "multi_hash", "num_buckets": 10, "num_weight_buckets": 5}},
        {"name": "C3", "kind": "sparse", "cardinality": 1000, "compression": {"kind": "mixed_dim", "num_blocks": 3, "block_boundaries": [9, 5]}},
        {"name": "C4", "kind": "sparse", "cardinality": "raw"},
    )
    assert errors == [
        "features[C1].compression: got both num_collisions and radices; give exactly one of num_collisions (2 partitions) "
        "or radices (k partitions)",
        "features[C2].compression.num_weight_buckets: got 5 but importance_weights is false; set importance_weights: true "
        "or remove num_weight_buckets",
        "features[C3].compression.block_boundaries: got [9, 5]; the boundaries must be strictly increasing",
        "features[C4].compression.kind: got 'full' but cardinality 'raw' (unbounded ids) cannot use compression kind "
        "'full', which needs a vocabulary: give an integer cardinality or a hashing compression",
    ]


def test_union_arms_merge_into_one_line_and_lists_are_named():
    errors = _errors(
        {"name": "C1", "kind": "sparse", "cardinality": 1.5},
        {"name": "C2", "kind": "sparse", "cardinality": 10, "compression": {"kind": "unified", "group": "g"}},
        groups=[{"name": "g", "num_buckets": 0}, {"num_buckets": 5}],
    )
    assert errors == [
        "features[C1].cardinality: got 1.5; allowed: an integer >= 2, or 'raw' for unbounded ids to be hashed",
        "groups[g].num_buckets: got 0; allowed: >= 1",
        "groups[1].name: required key is missing",
    ]


def test_dataset_level_problems_keep_their_own_paths():
    errors = _errors(
        {"name": "C1", "kind": "sparse", "cardinality": 10, "compression": {"kind": "unified", "group": "nope"}},
        {"name": "C1", "kind": "dense"},
    )
    assert errors == [
        "features: got duplicate feature names ['C1']; each column needs one entry",
        "features[C1].compression.group: got 'nope', which is not declared; declared groups: [] "
        "(add it to the spec's `groups:` list)",
    ]


def test_budget_options_direct_callers_get_the_same_lines():
    from recsys.embeddings.budget import solve_budget

    with pytest.raises(ValueError, match=r"options\.num_bucket: unknown key \(got 4\); allowed keys for method 'hashed': none"):
        solve_budget(builtin_spec("synthetic"), "hashed", target_ratio=0.1, options={"num_bucket": 4})
    with pytest.raises(ValueError, match=r"options\.num_collisions: got 3; set by the budget solver"):
        solve_budget(builtin_spec("synthetic"), "qr", target_ratio=0.1, options={"num_collisions": 3})


@pytest.mark.parametrize("method", sorted(SOLVER_OWNED))
def test_every_solver_owned_key_is_refused_and_defaults_parse(method):
    assert parse_budget_options(method, None) == parse_budget_options(method, {})
    for key in SOLVER_OWNED[method]:
        with pytest.raises(Problems) as info:
            parse_budget_options(method, {key: 7}, path="embeddings.budget.options")
        (problem,) = info.value.problems
        assert problem.path == f"embeddings.budget.options.{key}"
        assert problem.message.startswith("got 7; set by the budget solver")


def test_join_path():
    assert join_path("", "a.b") == "a.b"
    assert join_path("features[C1]", "compression.kind") == "features[C1].compression.kind"
    assert join_path("groups", "[g]") == "groups[g]"
    assert join_path("x", "") == "x"
    assert Problem("num_buckets", "got 0").at("features[C1].compression").line() == "features[C1].compression.num_buckets: got 0"


def test_errors_survive_pickling():
    """Ray ships exceptions between processes."""
    import pickle

    from recsys.train.config import ConfigError

    for exc in (Problems([Problem("a.b", "got 1; allowed: >= 2")]), SpecError("x.yaml", ["a: got 1"]), ConfigError("c.yaml", ["b: got 2"])):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert getattr(back, "errors", None) == getattr(exc, "errors", None)
        assert getattr(back, "problems", None) == getattr(exc, "problems", None)
