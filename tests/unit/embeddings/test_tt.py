"""TT-Rec (``kind: tt``): index maps, core shapes, exact bytes, the solver's rank knob, typed errors.
Numbers against the naive reference (outputs, gradients; sum / mean, bags) run with every other
method in test_methods.py / test_combine_paths.py (the ``tt`` and ``tt_k2`` variants)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.embeddings import build_embedding_collection, compile_plan, solve_budget
from recsys.embeddings.bench import criteo_spec
from recsys.embeddings.methods.tt import TTMethod, factor_dim, tt_bytes, tt_row_radices, tt_shapes
from recsys.features import spec_from_dict
from recsys.train.config import ConfigError, config_from_dict

from emb_helpers import make_spec


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_dim_factors_multiply_back(parts: int):
    for dim in range(4, 257, 4):
        factors = factor_dim(dim, parts)
        assert math.prod(factors) == dim and len(factors) == parts and factors == sorted(factors)
    assert factor_dim(16, 3) == [2, 2, 4] and factor_dim(64, 3) == [4, 4, 4]


@pytest.mark.parametrize("cardinality", [8, 9, 1000, 1001, 4097])
@pytest.mark.parametrize("num_cores", [2, 3, 4])
def test_digits_are_unique_and_in_range_below_the_cardinality(cardinality: int, num_cores: int):
    if cardinality < 2**num_cores:
        return
    m = TTMethod("f", 16, cardinality, rank=4, num_cores=num_cores)
    digits = torch.stack(m.index_maps(torch.arange(cardinality)), 1)  # (N, k)
    assert len({tuple(r) for r in digits.tolist()}) == cardinality
    assert all(int(digits[:, i].max()) < n for i, n in enumerate(m.rows))
    assert all(n >= 2 for n in m.rows) and math.prod(m.rows) >= cardinality


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_digits_stay_in_range_for_any_int64(x: int):
    m = TTMethod("f", 16, 10**7, rank=4)
    for d, n in zip(m.index_maps(torch.tensor([x], dtype=torch.int64)), m.rows):
        assert 0 <= int(d) < n


def test_ids_above_2_pow_24_get_distinct_rows():
    n = 2**26
    m = TTMethod("f", 16, n, rank=4)
    ids = torch.tensor([2**24, 2**24 + 1, 2**25 + 3, n - 1], dtype=torch.int64)
    tuples = {tuple(int(d[i]) for d in m.index_maps(ids)) for i in range(len(ids))}
    assert len(tuples) == len(ids)


@pytest.mark.parametrize("rank,num_cores", [(4, 2), (8, 3), (12, 4)])
def test_plan_bytes_are_exact(rank: int, num_cores: int):
    spec = make_spec({"A": {"kind": "tt", "rank": rank, "num_cores": num_cores}}, cardinality=5000, dim=32)
    collection = build_embedding_collection(spec)
    params = sum(p.numel() * p.element_size() for p in collection.parameters())
    assert compile_plan(spec).total_bytes == params == tt_bytes(5000, 32, num_cores, rank)
    shapes = tt_shapes(32, num_cores, rank)
    assert shapes[0][0] == 1 and shapes[-1][2] == 1 and all(a * m * b % 4 == 0 for a, m, b in shapes)
    assert tt_row_radices(5000, num_cores) == collection.methods["A"].rows


@pytest.mark.parametrize("ratio", [1 / 16, 1 / 64])
def test_solver_picks_ranks_for_the_budget(ratio: float):
    spec = criteo_spec(0.125)
    solution = solve_budget(spec, "tt", target_ratio=ratio)
    assert solution.within_tolerance, solution.format()
    assert solution.achieved_bytes == compile_plan(solution.spec).total_bytes
    ranks = [f.compression.rank for f in solution.spec.sparse if f.compression.kind == "tt"]
    assert ranks and all(r % 4 == 0 for r in ranks)


def test_typed_errors():
    with pytest.raises(ValueError, match=r"features\[A\]\.compression\.rank: got 6; .*multiples of 4 for FBGEMM: use 8"):
        spec_from_dict({"name": "t", "features": [{"name": "A", "kind": "sparse", "cardinality": 100, "compression": {"kind": "tt", "rank": 6}}]})
    with pytest.raises(ValueError, match=r"features\[A\]\.compression\.num_cores: got 3, which needs at least 8 ids"):
        spec_from_dict({"name": "t", "features": [{"name": "A", "kind": "sparse", "cardinality": 5, "compression": {"kind": "tt", "rank": 4}}]})
    with pytest.raises(ValueError, match=r"compression\.kind: got 'tt', which needs dense vocabulary ids"):
        spec_from_dict({"name": "t", "features": [{"name": "A", "kind": "sparse", "cardinality": "raw", "compression": {"kind": "tt", "rank": 4}}]})
    budget = {"data": {"path": "d"}, "embeddings": {"budget": {"method": "tt", "ratio": 0.1, "options": {"rank": 8, "num_cores": 5}}}}
    with pytest.raises(ConfigError) as info:
        config_from_dict(budget)
    text = str(info.value)
    assert "embeddings.budget.options.rank: got 8; set by the budget solver" in text
    assert "embeddings.budget.options.num_cores: got 5; allowed: >= 2 and <= 4" in text
