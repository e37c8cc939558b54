"""The method registry: one kind list, every kind with a schema half and a build half, and every
list of methods in the library read from it (no second list to forget)."""

from __future__ import annotations

import typing

import pytest
from pydantic import TypeAdapter

from recsys.embeddings import bench as lookup_bench
from recsys.embeddings.budget import METHODS
from recsys.embeddings.methods.registry import COMPRESSED, FAMILIES, family, needs_counts
from recsys.features.budget_options import BUDGET_METHODS, options_table, parse_budget_options
from recsys.features.compression import COMPRESSION_KINDS, CompressionSpec
from recsys.features.methods import KINDS, SCHEMAS
from recsys.train import bench as train_bench
from recsys.train import report
from recsys.train.config import BudgetConfig
from recsys.train.sweep_config import SweepConfig


def test_every_kind_has_both_halves():
    assert tuple(FAMILIES) == KINDS == tuple(SCHEMAS) == COMPRESSION_KINDS == BUDGET_METHODS == METHODS
    for kind, fam in FAMILIES.items():
        assert fam.kind == kind and fam.schema is SCHEMAS[kind]
        assert fam.schema.compression.model_fields["kind"].annotation == typing.Literal[kind]


def test_lists_of_methods_read_the_registry():
    assert COMPRESSED == tuple(k for k in KINDS if k != "full")
    assert lookup_bench.METHODS == list(COMPRESSED) and set(lookup_bench.TARGETS) == set(COMPRESSED)
    assert tuple(train_bench.FAMILIES) == COMPRESSED
    assert set(report.COLOURS) == set(KINDS) and len(set(report.COLOURS.values())) == len(KINDS)
    budget_literal = typing.get_args(BudgetConfig.model_fields["method"].annotation)
    assert budget_literal == KINDS
    sweep_literal = typing.get_args(typing.get_args(SweepConfig.model_fields["methods"].annotation)[0])
    assert sweep_literal == KINDS
    assert [row[0] for row in options_table()] == list(KINDS)


def test_union_dispatches_on_kind_and_names_the_kinds():
    adapter = TypeAdapter(CompressionSpec)
    assert type(adapter.validate_python({"kind": "qr", "num_collisions": 4})) is SCHEMAS["qr"].compression
    with pytest.raises(ValueError, match="'full', 'hashed', 'multi_hash', 'qr', 'mixed_dim', 'unified'"):
        adapter.validate_python({"kind": "nope"})


def test_unknown_kind_and_solver_owned_option_errors():
    with pytest.raises(ValueError, match=r"compression kind 'nope': allowed \['full', 'hashed'"):
        family("nope")
    with pytest.raises(ValueError, match=r"options.num_collisions: got 4; set by the budget solver"):
        parse_budget_options("qr", {"num_collisions": 4})


def test_needs_counts_is_declared_by_the_family():
    assert needs_counts({"mixed_dim"}) and needs_counts(set(), "mixed_dim")
    assert not needs_counts({"full", "hashed", "qr", "unified"}, "multi_hash")
