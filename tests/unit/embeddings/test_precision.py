"""Half-precision rows (``precision: fp16``): exact bytes, outputs close to fp32, the solver
counts it, the config applies it, and FBGEMM's fused CPU kernel trains FP16 rows."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from recsys.embeddings import build_embedding_collection, compile_plan, solve_budget
from recsys.embeddings.naive import NaiveEmbeddingBagCollection
from recsys.features import spec_from_dict

from emb_helpers import VARIANTS, random_kjt, variant_spec


def _fp16(spec):
    """The spec with every feature's rows in fp16."""
    features = [
        f.model_copy(update={"compression": f.compression.model_copy(update={"precision": "fp16"})}) if f.kind == "sparse" else f
        for f in spec.features
    ]
    return spec.model_copy(update={"features": features})


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fp16_bytes_are_exact_and_half(variant: str):
    spec = variant_spec(variant, max_length=3)
    half = build_embedding_collection(_fp16(spec))
    plan32, plan16 = compile_plan(spec), half.plan()
    weights = half.table_weights()
    assert {w.dtype for w in weights.values()} <= {torch.float16}  # dhe has no table
    assert plan16.weight_bytes == sum(w.numel() * w.element_size() for w in weights.values())
    assert 2 * plan16.weight_bytes == plan32.weight_bytes
    # Dense parameters (projections) stay fp32 and are counted as such.
    dense = sum(p.numel() * p.element_size() for n, p in half.named_parameters() if "methods." in n)
    assert plan16.projection_bytes == plan32.projection_bytes == dense
    assert plan16.full_bytes == plan32.full_bytes  # the ratio stays one of fp32 full tables
    assert "fp16" in plan16.format() or not weights


@pytest.mark.parametrize("max_length", [1, 4])
@pytest.mark.parametrize("variant", ["full", "qr_mult", "multi_hash_weights", "mixed_dim", "unified"])
def test_fp16_outputs_match_naive_and_are_close_to_fp32(variant: str, max_length: int):
    spec = variant_spec(variant, max_length=max_length, pooling="mean")
    full32 = build_embedding_collection(spec)
    half = build_embedding_collection(_fp16(spec))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in full32.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for name, w in half.table_weights().items():
            w.copy_(full32.table_weights()[name])  # rounded to fp16
        for (n32, p32), (n16, p16) in zip(full32.named_parameters(), half.named_parameters()):
            if "methods." in n16:
                p16.copy_(p32)
    kjt = random_kjt(spec, batch=16, seed=max_length)
    got = half(kjt)
    assert got.values().dtype == torch.float32  # FP16 rows, FP32 accumulation and output
    # The naive reference reads the same (fp16-valued) rows and pools them in fp32; the unsharded
    # torch EmbeddingBag pools a bag in fp16 before its fp32 output (FBGEMM's kernels accumulate in
    # fp32): equal within fp16's rounding of a bag sum (2^-11 relative, a few ulps for 4 values).
    torch.testing.assert_close(got.values(), NaiveEmbeddingBagCollection(half)(kjt).values(), rtol=2e-3, atol=2e-3)
    if max_length == 1:  # a bag of one is its row: no fp16 sum, so equal
        torch.testing.assert_close(got.values(), NaiveEmbeddingBagCollection(half)(kjt).values(), rtol=1e-5, atol=1e-5)
    # Against the fp32 model: within fp16's rounding of each row (2^-11 relative), through products too.
    torch.testing.assert_close(got.values(), full32(kjt).values(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("method", ["hashed", "qr", "unified", "full"])
def test_solver_counts_fp16_rows(method: str):
    spec = variant_spec("full")
    spec = spec.model_copy(update={"features": [f.model_copy(update={"cardinality": 20_000}) for f in spec.features]})
    ratio = 1.0 if method == "full" else 1 / 16
    s32 = solve_budget(spec, method, target_ratio=ratio)
    s16 = solve_budget(spec, method, target_ratio=ratio, precision="fp16")
    if method == "full":  # nothing to size: the same rows at half the bytes
        assert s16.achieved_bytes * 2 == s32.achieved_bytes
        return
    assert s16.within_tolerance, s16.format()
    assert s16.achieved_bytes == compile_plan(s16.spec).total_bytes
    assert {f.compression.precision for f in s16.spec.sparse} == {"fp16"}
    rows32 = sum(t.num_embeddings for t in compile_plan(s32.spec).tables)
    rows16 = sum(t.num_embeddings for t in compile_plan(s16.spec).tables)
    assert 1.8 < rows16 / rows32 < 2.2, (rows16, rows32)
    with pytest.raises(ValueError, match="precision 'fp8': allowed \\['fp32', 'fp16'\\]"):
        solve_budget(spec, method, target_ratio=ratio, precision="fp8")


def test_fp16_is_a_typed_option_of_every_compression():
    with pytest.raises(ValueError, match=r"features\[A\]\.compression\.precision: got 'bf16'; allowed: 'fp32' or 'fp16'"):
        spec_from_dict({"name": "t", "features": [
            {"name": "A", "kind": "sparse", "cardinality": 10, "compression": {"kind": "full", "precision": "bf16"}}]})


@pytest.mark.parametrize("variant", ["hashed", "qr_mult", "mixed_dim"])
def test_fp16_rows_train_in_fbgemms_fused_cpu_kernel(variant: str):
    """Sharded (world size 1) into FBGEMM's fused table-batched kernel with the optimizer fused
    into backward: the FP16 rows move, stay FP16, and a regression loss falls."""
    from recsys.embeddings.bench import _collection, _init_dist, fused_model

    spec = _fp16(variant_spec(variant, max_length=1))  # bags of one: the EBC path (fused_model builds ECs on meta)
    _init_dist()
    try:
        model, dense_optimizer = fused_model(spec, lr=0.5)
        for m in _collection(model).methods.values():
            m.reset_parameters()  # dense parameters (projections) were built on meta
        kjt = random_kjt(spec, batch=64, seed=5, skewed=True)
        target = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) * 0.1
        before = {k: v.local_tensor().clone() if hasattr(v, "local_tensor") else v for k, v in _weights(model).items()}
        losses = []
        for _ in range(15):
            loss = (model(kjt).values() - target).square().sum(1).mean()
            loss.backward()
            if dense_optimizer is not None:
                dense_optimizer.step()
                dense_optimizer.zero_grad()
            losses.append(float(loss))
        after = _weights(model)
        assert {w.dtype for w in after.values()} == {torch.float16}
        assert all(not torch.equal(before[k], after[k]) for k in after)
        assert losses[-1] < 0.9 * losses[0], losses
    finally:
        dist.destroy_process_group()


def _weights(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, v in model.state_dict().items():
        if "embedding_bags" in name or "embeddings." in name:
            t = v.local_shards()[0].tensor if hasattr(v, "local_shards") else v
            out[name] = t.detach().clone()
    return out


def test_config_precision_applies_to_every_feature_and_the_budget():
    from recsys.train.config import ConfigError, config_from_dict, resolve_spec

    features = [{"name": "label", "kind": "label"}]
    features += [{"name": n, "kind": "sparse", "cardinality": c} for n, c in (("C1", 4000), ("C2", 50))]
    data = spec_from_dict({"name": "s", "features": features})
    base = {"data": {"path": "d"}, "embeddings": {"budget": {"method": "hashed", "ratio": 0.25}}}
    spec32, _ = resolve_spec(config_from_dict(base), data)
    base["embeddings"]["precision"] = "fp16"
    spec16, notes = resolve_spec(config_from_dict(base), data)
    assert {f.compression.precision for f in spec16.sparse} == {"fp16"}
    assert "rows stored in fp16" in notes[0]
    # Same ratio of the fp32 full tables: about twice the buckets.
    assert 1.8 < spec16.feature("C1").compression.num_buckets / spec32.feature("C1").compression.num_buckets < 2.2
    assert compile_plan(spec16).ratio == pytest.approx(0.25, rel=0.05)
    with pytest.raises(ConfigError, match=r"embeddings.precision: got 'fp8'; allowed: 'fp32' or 'fp16'"):
        config_from_dict({"data": {"path": "d"}, "embeddings": {"precision": "fp8"}})


@pytest.mark.parametrize("variant", ["hashed", "qr_mult", "tt"])
def test_fp16_collection_exports(variant: str):
    from recsys.embeddings import CollectionExportWrapper, export_collection

    spec = _fp16(variant_spec(variant, max_length=3))
    collection = build_embedding_collection(spec).eval()
    program = export_collection(collection, random_kjt(spec, batch=8, seed=0))
    other = random_kjt(spec, batch=8, seed=7)
    eager = CollectionExportWrapper(collection, other.keys())(other.values(), other.lengths())
    torch.testing.assert_close(program.module()(other.values(), other.lengths()), eager)
