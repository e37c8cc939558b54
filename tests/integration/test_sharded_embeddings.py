"""Sharded (DistributedModelParallel, 2 processes, gloo, CPU) == the naive reference, forward and backward.

Every method is in one collection (all combine steps: concat runs, sum / product runs, projections,
importance weights on single values and per value, unified tables shared by two features, tensor-train
contractions on single values and per value, DHE networks (dense, data-parallel); sum and
mean pooling), sharded table-wise, column-wise (tables cut in two column shards), data-parallel,
table-column-wise, or as the planner chooses. For each, on both ranks:

- the compiled combine plan ran, compiled against the key order and widths the SHARDED inner
  collection actually returns, with the same step per feature as the unsharded plan (no fallback);
- outputs equal the naive reference (``NaiveEmbeddingBagCollection``, same weights), by key;
- after one backward, every fused table shard holds ``w - lr * g / world_size`` (TorchRec divides
  the gradients of sharded lookups by the world size, as DDP averages dense ones) and every
  data-parallel table and projection holds the gradient ``g / world_size``, where ``g`` is the naive
  reference's gradient of the summed loss of both ranks' batches.

One spawn per sharding type; each takes ~15-25 s here (mostly importing torchrec twice).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.integration

SHARDING_TYPES = ["table_wise", "column_wise", "data_parallel", "table_column_wise", "planner"]
WORLD_SIZE = 2
LR = 0.5


def _spec():
    from recsys.features import spec_from_dict

    def f(name, compression, **kw):
        return {"name": name, "kind": "sparse", "cardinality": 600, "embedding_dim": 16, "compression": compression, **kw}

    return spec_from_dict(
        {
            "name": "sharded",
            "groups": [{"name": "shared", "num_buckets": 101, "num_chunks": 2, "num_tables": 2}],
            "features": [
                f("full", {"kind": "full"}),
                f("hashed", {"kind": "hashed", "num_buckets": 113}, max_length=4, pooling="mean"),
                f("mh_sum", {"kind": "multi_hash", "num_buckets": 97, "num_hashes": 2}, max_length=3),
                f("mh_w", {"kind": "multi_hash", "num_buckets": 89, "importance_weights": True, "num_weight_buckets": 41}, max_length=3),
                f("mh_w1", {"kind": "multi_hash", "num_buckets": 83, "importance_weights": True}),
                f("qr", {"kind": "qr", "num_collisions": 30, "operation": "mult"}, max_length=3, pooling="mean"),
                f("qr1", {"kind": "qr", "num_collisions": 30, "operation": "mult"}),
                f("qr_add", {"kind": "qr", "num_collisions": 30, "operation": "add"}, max_length=2),
                f("qr_cat", {"kind": "qr", "num_collisions": 30, "operation": "concat"}),
                f("md", {"kind": "mixed_dim", "num_blocks": 3}, max_length=3, pooling="mean"),
                f("u1", {"kind": "unified", "group": "shared"}),
                f("u2", {"kind": "unified", "group": "shared"}, max_length=2),
                f("tt", {"kind": "tt", "rank": 8}, max_length=3, pooling="mean"),
                f("tt1", {"kind": "tt", "rank": 4, "num_cores": 2}),
                f("dhe", {"kind": "dhe", "hidden_dim": 16, "num_hashes": 16}, max_length=3, pooling="mean"),
                f("dhe1", {"kind": "dhe", "hidden_dim": 8, "num_hashes": 8, "num_layers": 1}),
            ],
        }
    )


def _constraints(sharding_type: str, tables):
    """Per-table constraints for one run. Per-value tables (TorchRec ``EmbeddingCollection``) are
    never data-parallel: TorchRec's data-parallel EC returns pooled rows on CPU
    (pytorch/torchrec#1255), so they are table-wise in the data-parallel run and barred from
    data_parallel in the planner's run; and column-wise where the EBC tables are table-column-wise,
    which the EC sharder lacks."""
    from torchrec.distributed.planner import ParameterConstraints

    out = {}
    for t in tables:
        if sharding_type == "planner":
            if t.per_value:
                out[t.name] = ParameterConstraints(sharding_types=["table_wise", "column_wise"])
            continue
        kind = sharding_type
        if t.per_value and sharding_type == "table_column_wise":
            kind = "column_wise"
        if t.per_value and sharding_type == "data_parallel":
            kind = "table_wise"
        # min_partition 8: the 16-wide tables are cut into two column shards (on different ranks).
        out[t.name] = ParameterConstraints(sharding_types=[kind], min_partition=8)
    return out


def _weights_for(kt_keys, dims, rank: int) -> dict[str, torch.Tensor]:
    """A fixed random weight per output column, per rank: the loss is sum(out * weight)."""
    g = torch.Generator().manual_seed(100 + rank)
    return {k: torch.randn(6, d, generator=g) for k, d in zip(kt_keys, dims)}


def _loss(kt, weights) -> torch.Tensor:
    per_key = kt.to_dict()
    return sum(((per_key[k] * w).sum() for k, w in weights.items()), torch.zeros(()))


def _worker(rank: int, port: int, sharding_type: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "embeddings"))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        _check(rank, sharding_type)
    finally:
        dist.destroy_process_group()


def _check(rank: int, sharding_type: str) -> None:
    from emb_helpers import random_kjt
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import OptimType
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.types import ShardingEnv

    from recsys.embeddings import CompressedEmbeddingBagCollection, build_embedding_collection
    from recsys.embeddings.methods.family import naive_param_key
    from recsys.embeddings.naive import NaiveEmbeddingBagCollection

    spec = _spec()
    torch.manual_seed(0)
    reference = build_embedding_collection(spec)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p))
    naive = NaiveEmbeddingBagCollection(reference)
    unsharded_steps = {reference.feature_names[i]: type(s).__name__ for s in reference.combine_plan.steps for i in s.features}
    plan_tables = reference.plan().tables

    fused = {"optimizer": OptimType.EXACT_SGD, "learning_rate": LR}
    sharders = [EmbeddingBagCollectionSharder(fused_params=fused), EmbeddingCollectionSharder(fused_params=fused)]
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=WORLD_SIZE, compute_device="cpu"), constraints=_constraints(sharding_type, plan_tables)
    )
    module = build_embedding_collection(spec)
    plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    used = {ps.sharding_type for m in plan.plan.values() for ps in m.values()}
    if sharding_type == "planner":
        assert used, plan
    elif sharding_type in ("table_column_wise", "data_parallel"):
        assert used == {sharding_type, "column_wise" if sharding_type == "table_column_wise" else "table_wise"}, used
    else:
        assert used == {sharding_type}, used
    model = DistributedModelParallel(
        module, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=torch.device("cpu"), plan=plan, sharders=sharders
    )
    state = model.state_dict()
    full_state = reference.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if isinstance(tensor, ShardedTensor):
                for shard in tensor.local_shards():
                    r, c = shard.metadata.shard_offsets
                    n, d = shard.tensor.shape
                    shard.tensor.copy_(full_state[name][r : r + n, c : c + d])
            else:
                tensor.copy_(full_state[name])
    if sharding_type == "column_wise":
        split = [k for k, v in state.items() if isinstance(v, ShardedTensor) and len(v.metadata().shards_metadata) > 1]
        assert split, "column_wise: no table was cut into several column shards"

    # Forward on this rank's batch: the compiled plan runs against the sharded layout.
    batches = [random_kjt(spec, batch=6, seed=10 + r, skewed=True) for r in range(WORLD_SIZE)]
    collection = next(m for m in model.modules() if isinstance(m, CompressedEmbeddingBagCollection))
    out = model(batches[rank])
    weights = _weights_for(reference.feature_names, reference.embedding_dims(), rank)
    loss = _loss(out, weights)
    inner = collection.embedding_bags
    combine = collection.combine_plan
    assert combine.calls == 1, combine.calls
    assert combine.layout.keys == tuple(inner._embedding_names), (combine.layout.keys, inner._embedding_names)
    assert combine.layout.widths == tuple(inner._embedding_dims)
    steps = {collection.feature_names[i]: type(s).__name__ for s in combine.steps for i in s.features}
    assert steps == unsharded_steps, (steps, unsharded_steps)
    expected = naive(batches[rank]).to_dict()
    got = out.to_dict()
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5, msg=f"{sharding_type} rank {rank}: output {key}")

    # Backward: fused shards are updated, dense ones hold their gradient; both the mean over ranks.
    loss.backward()
    reference_loss = sum(
        (_loss(naive(b), _weights_for(reference.feature_names, reference.embedding_dims(), r)) for r, b in enumerate(batches)),
        torch.zeros(()),
    )
    reference_loss.backward()
    grads = {n: b.weight.grad for n, b in naive.tables.items()}
    sharded_params = dict(model.named_parameters())
    checked = 0
    for name, tensor in model.state_dict().items():
        if not name.endswith("weight") or "methods." in name:  # methods' dense parameters: checked below
            continue
        table = name.rsplit(".", 2)[-2]
        grad = grads[table.replace(".", "_")]
        if isinstance(tensor, ShardedTensor):
            for shard in tensor.local_shards():
                r, c = shard.metadata.shard_offsets
                n, d = shard.tensor.shape
                want = full_state[name][r : r + n, c : c + d] - LR * grad[r : r + n, c : c + d] / WORLD_SIZE
                torch.testing.assert_close(shard.tensor, want, rtol=1e-5, atol=1e-5, msg=f"{sharding_type}: fused update of {table}")
                checked += 1
        else:
            param = next(p for n_, p in sharded_params.items() if n_.endswith(name) or name.endswith(n_.removeprefix("module.")))
            torch.testing.assert_close(param.grad, grad / WORLD_SIZE, rtol=1e-5, atol=1e-5, msg=f"{sharding_type}: gradient of {table}")
            checked += 1
    assert checked >= len(plan_tables) // WORLD_SIZE, checked
    for feature, m in reference.methods.items():
        for pname, _ in m.named_parameters():
            param = next(q for n_, q in sharded_params.items() if n_.endswith(f"methods.{feature}.{pname}"))
            ref = naive.params[naive_param_key(feature, pname)].grad
            torch.testing.assert_close(param.grad, ref / WORLD_SIZE, rtol=1e-5, atol=1e-5, msg=f"{sharding_type}: dense {feature}.{pname}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sharding_type", SHARDING_TYPES)
def test_sharded_equals_naive_forward_and_backward(sharding_type: str):
    mp.start_processes(_worker, args=(_free_port(), sharding_type), nprocs=WORLD_SIZE, start_method="spawn")
