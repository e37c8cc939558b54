"""DHE (``kind: dhe``): the encoding, exact bytes, the solver's width knob, raw ids, typed errors.
Outputs and gradients against the naive reference (sum / mean, bags) run with every other method
in test_methods.py / test_combine_paths.py (the ``dhe`` variant)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.embeddings import build_embedding_collection, compile_plan, solve_budget
from recsys.embeddings.bench import criteo_spec
from recsys.embeddings.methods.dhe import DHEMethod, dhe_num_values
from recsys.features import spec_from_dict
from recsys.train.config import ConfigError, config_from_dict

from emb_helpers import make_spec, random_kjt


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=20))
def test_encoding_is_in_range_and_deterministic(ids):
    m = DHEMethod("f", 16, hidden_dim=8, num_hashes=16)
    x = torch.tensor(ids, dtype=torch.int64)
    enc = m.encode(x)
    assert enc.shape == (len(ids), 16) and float(enc.abs().max()) <= 1.0
    assert torch.equal(enc, DHEMethod("f", 16, hidden_dim=8, num_hashes=16).encode(x))  # seeds from the name
    assert not torch.equal(enc, DHEMethod("g", 16, hidden_dim=8, num_hashes=16).encode(x))


@pytest.mark.parametrize("hidden_dim,num_layers", [(8, 1), (24, 2), (40, 3)])
def test_plan_bytes_are_exact(hidden_dim: int, num_layers: int):
    spec = make_spec({"A": {"kind": "dhe", "hidden_dim": hidden_dim, "num_layers": num_layers, "num_hashes": 32}}, dim=32)
    collection = build_embedding_collection(spec)
    params = sum(p.numel() * p.element_size() for p in collection.parameters())
    assert compile_plan(spec).total_bytes == params == 4 * dhe_num_values(32, hidden_dim, num_layers, 32)


def test_raw_ids_and_empty_bags():
    spec = spec_from_dict({"name": "t", "features": [
        {"name": "A", "kind": "sparse", "cardinality": "raw", "max_length": 3, "compression": {"kind": "dhe", "hidden_dim": 8}}]})
    collection = build_embedding_collection(spec)
    kjt = random_kjt(spec, batch=6, high=2**62)
    out = collection(kjt)["A"]
    assert out.shape == (6, 16) and torch.all(out[kjt["A"].lengths() == 0] == 0)
    assert compile_plan(spec).weight_bytes == 0


@pytest.mark.parametrize("ratio", [1 / 16, 1 / 256])
def test_solver_picks_widths_for_the_budget(ratio: float):
    solution = solve_budget(criteo_spec(0.125), "dhe", target_ratio=ratio)
    assert solution.within_tolerance, solution.format()
    assert solution.achieved_bytes == compile_plan(solution.spec).total_bytes


def test_typed_errors():
    budget = {"data": {"path": "d"}, "embeddings": {"budget": {"method": "dhe", "ratio": 0.1, "options": {"hidden_dim": 64, "num_layers": 9}}}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(budget)
    text = str(info.value)
    assert "embeddings.budget.options.hidden_dim: got 64; set by the budget solver" in text
    assert "embeddings.budget.options.num_layers: got 9; allowed: >= 1 and <= 8" in text
    with pytest.raises(ValueError, match=r"features\[A\]\.compression\.hidden_dim: required key is missing"):
        spec_from_dict({"name": "t", "features": [{"name": "A", "kind": "sparse", "cardinality": 100, "compression": {"kind": "dhe"}}]})
