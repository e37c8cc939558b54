"""The compiled combine plan: it runs (no fallback exists), its steps are the vectorised ones each
declaration promises, and outputs AND gradients equal the naive reference, for the build layout
and for layouts in another key order (what a sharded inner collection returns)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from recsys.embeddings import build_embedding_collection
from recsys.embeddings.combine import CombinePlan, ConcatRun, ContractStep, NetworkStep, PerValueStep, ProjectStep, ReduceRun, WeightedStep
from recsys.embeddings.methods.family import naive_param_key
from recsys.embeddings.naive import NaiveEmbeddingBagCollection

from emb_helpers import GROUP, VARIANTS, make_spec, random_kjt, variant_spec

# The step each variant's features must land in (single-valued / multi-valued bags).
EXPECTED_STEP = {
    "full": (ConcatRun, ConcatRun),
    "hashed": (ConcatRun, ConcatRun),
    "multi_hash_sum": (ConcatRun, ConcatRun),
    "multi_hash_concat": (ConcatRun, ConcatRun),
    "multi_hash_weights": (WeightedStep, PerValueStep),
    "qr_mult": (ReduceRun, PerValueStep),
    "qr_add": (ReduceRun, ReduceRun),
    "qr_concat": (ConcatRun, ConcatRun),
    "qr_k3_mult": (ReduceRun, PerValueStep),
    "qr_k3_concat": (ConcatRun, ConcatRun),
    "mixed_dim": (ProjectStep, ProjectStep),
    "mixed_dim_explicit": (ProjectStep, ProjectStep),
    "unified": (ConcatRun, ConcatRun),
    "tt": (ContractStep, PerValueStep),
    "tt_k2": (ContractStep, PerValueStep),
    "dhe": (NetworkStep, NetworkStep),
}


def _randomize(module: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


class _Reordered(nn.Module):
    """The inner bag collection, its pooled keys returned in a shuffled order (as sharding does)."""

    def __init__(self, ebc: nn.Module, seed: int):
        super().__init__()
        self.ebc = ebc
        self.seed = seed

    def forward(self, kjt) -> KeyedTensor:
        kt = self.ebc(kjt)
        per_key = kt.to_dict()
        order = torch.randperm(len(kt.keys()), generator=torch.Generator().manual_seed(self.seed)).tolist()
        keys = [kt.keys()[i] for i in order]
        return KeyedTensor.from_tensor_list(keys, [per_key[k] for k in keys])


def _steps_by_feature(plan: CombinePlan, names: list[str]) -> dict[str, type]:
    return {names[i]: type(s) for s in plan.steps for i in s.features}


def _check_against_naive(collection, naive, kjt, tables: dict[str, torch.Tensor]) -> KeyedTensor:
    """Outputs (by key) and the gradients of every table and projection equal the naive reference."""
    kt = collection(kjt)
    expected = naive(kjt)
    got, want = kt.to_dict(), expected.to_dict()
    assert sorted(got) == sorted(want) == sorted(collection.feature_names)
    weights = torch.randn(kt.values().shape, generator=torch.Generator().manual_seed(7))
    for name in collection.feature_names:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
    # A loss that weighs every output column differently, read by key (the output order may differ).
    cols = dict(zip(expected.keys(), torch.split(weights, expected.length_per_key(), dim=1)))
    sum(((got[k] * cols[k]).sum() for k in got), torch.zeros(())).backward()
    sum(((want[k] * cols[k]).sum() for k in want), torch.zeros(())).backward()
    for name, weight in tables.items():
        ref = naive.tables[name.replace(".", "_")].weight.grad
        torch.testing.assert_close(weight.grad, ref, rtol=1e-4, atol=1e-5, msg=f"table {name}")
    for feature, m in collection.methods.items():
        for pname, p in m.named_parameters():
            torch.testing.assert_close(p.grad, naive.params[naive_param_key(feature, pname)].grad, rtol=1e-4, atol=1e-5)
    return kt


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("max_length", [1, 4])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compiled_plan_runs_and_matches_naive(variant: str, max_length: int, pooling: str):
    spec = variant_spec(variant, max_length=max_length, pooling=pooling)
    collection = build_embedding_collection(spec)
    _randomize(collection)
    kjt = random_kjt(spec, batch=9, seed=max_length, skewed=True)
    plan = collection.combine_plan
    kt = _check_against_naive(collection, NaiveEmbeddingBagCollection(collection), kjt, collection.table_weights())
    assert collection.combine_plan is plan and plan.calls == 1  # compiled once, at build; it ran
    assert kt.keys() == ["A", "B"]  # unsharded: the collection's feature order
    step = EXPECTED_STEP[variant][max_length > 1]
    assert _steps_by_feature(plan, ["A", "B"]) == {"A": step, "B": step}
    # Two features of one kind are ONE vectorised run where the declaration allows it.
    if step in (ConcatRun, ReduceRun):
        assert len(plan.steps) == 1


def _all_methods_spec(max_length: int, pooling: str = "sum"):
    kinds = {f"f_{v}": VARIANTS[v] for v in sorted(VARIANTS)}
    kinds["g_full"] = VARIANTS["full"]  # a second full feature after the others: runs interleave
    kinds["g_qr_mult"] = VARIANTS["qr_mult"]
    return make_spec(kinds, max_length=max_length, pooling=pooling, groups=GROUP)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_length", [1, 3])
def test_plan_recompiles_for_another_key_order_and_matches_naive(seed: int, max_length: int):
    spec = _all_methods_spec(max_length, pooling="mean")
    collection = build_embedding_collection(spec)
    _randomize(collection)
    tables = collection.table_weights()
    build_plan = collection.combine_plan
    naive = NaiveEmbeddingBagCollection(collection)
    collection.embedding_bags = _Reordered(collection.embedding_bags, seed)
    kjt = random_kjt(spec, batch=7, seed=seed, skewed=True)
    kt = _check_against_naive(collection, naive, kjt, tables)
    plan = collection.combine_plan
    assert plan is not build_plan and plan.calls == 1
    assert plan.layout.keys != build_plan.layout.keys
    # The same steps per feature as for the build layout, only reading other pieces.
    assert _steps_by_feature(plan, collection.feature_names) == _steps_by_feature(build_plan, collection.feature_names)
    # Compiled once for this layout: the next batch reuses it.
    collection(kjt)
    assert collection.combine_plan is plan and plan.calls == 2
    assert sorted(kt.keys()) == sorted(collection.feature_names)


def test_unsharded_output_keeps_feature_order_when_runs_interleave():
    spec = _all_methods_spec(max_length=1)
    collection = build_embedding_collection(spec)
    kt = collection(random_kjt(spec, batch=5))
    assert kt.keys() == collection.feature_names
    assert kt.length_per_key() == collection.embedding_dims()


def test_all_concat_features_return_the_pooled_output_itself():
    spec = make_spec({"A": VARIANTS["full"], "B": VARIANTS["hashed"], "C": VARIANTS["multi_hash_sum"]}, max_length=3)
    collection = build_embedding_collection(spec)
    pooled = {}
    collection.embedding_bags.register_forward_hook(lambda m, i, out: pooled.update(values=out.values()))
    kt = collection(random_kjt(spec, batch=6))
    assert kt.values().data_ptr() == pooled["values"].data_ptr()  # no split, no copy
    assert [type(s) for s in collection.combine_plan.steps] == [ConcatRun]


def test_meta_built_collection_recompiles_its_plan_once_materialised():
    spec = _all_methods_spec(max_length=3, pooling="mean")
    collection = build_embedding_collection(spec, device="meta")
    collection.to_empty(device="cpu")  # the plan's buffers are now uninitialised memory
    collection.reset_parameters()
    _randomize(collection)
    kjt = random_kjt(spec, batch=5, seed=3)
    _check_against_naive(collection, NaiveEmbeddingBagCollection(collection), kjt, collection.table_weights())
    assert collection.combine_plan.device == torch.device("cpu") and collection.combine_plan.calls == 1
    assert not any("_repeats" in k for k in collection.state_dict())  # plans never enter checkpoints
