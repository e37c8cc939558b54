"""Sharded (DistributedModelParallel, 2 processes, gloo, CPU) output == unsharded output.

Every method is in one collection: hashed, multi_hash with importance weights and qr ``mult`` on
multi-valued bags (per-value EmbeddingCollection), mixed_dim (projections, data-parallel), and a
unified group (one shared table read by two features, sharded as ONE table).
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

SHARDING_TYPES = ["table_wise", "column_wise"]
WORLD_SIZE = 2


def _spec():
    from recsys.features import spec_from_dict

    def f(name, compression, **kw):
        return {"name": name, "kind": "sparse", "cardinality": 5000, "embedding_dim": 16, "compression": compression, **kw}

    return spec_from_dict(
        {
            "name": "sharded",
            "groups": [{"name": "shared", "num_buckets": 701, "num_chunks": 2, "num_tables": 1}],
            "features": [
                f("full", {"kind": "full"}),
                f("hashed", {"kind": "hashed", "num_buckets": 513}, max_length=4, pooling="mean"),
                f("mh", {"kind": "multi_hash", "num_buckets": 300, "importance_weights": True}, max_length=3),
                f("qr", {"kind": "qr", "num_collisions": 50, "operation": "mult"}, max_length=5),
                f("qr_cat", {"kind": "qr", "num_collisions": 50, "operation": "concat"}),
                f("md", {"kind": "mixed_dim", "num_blocks": 3}, max_length=3),
                f("u1", {"kind": "unified", "group": "shared"}),
                f("u2", {"kind": "unified", "group": "shared"}, max_length=2),
            ],
        }
    )


def _copy_into(sharded_state: dict, full_state: dict) -> None:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    with torch.no_grad():
        for name, tensor in sharded_state.items():
            source = full_state[name]
            if isinstance(tensor, ShardedTensor):
                for shard in tensor.local_shards():
                    rows, cols = shard.metadata.shard_offsets
                    r, c = shard.tensor.shape
                    shard.tensor.copy_(source[rows : rows + r, cols : cols + c])
            else:
                tensor.copy_(source)


def _worker(rank: int, port: int, sharding_type: str, results: dict) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "embeddings"))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        from emb_helpers import random_kjt
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.types import ShardingEnv
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.embedding import EmbeddingCollectionSharder

        from recsys.embeddings import build_embedding_collection

        spec = _spec()
        torch.manual_seed(0)
        reference = build_embedding_collection(spec)
        with torch.no_grad():
            for p in reference.parameters():
                p.copy_(torch.randn_like(p))
        tables = [t.name for t in reference.plan().tables]
        sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=WORLD_SIZE, compute_device="cpu"),
            constraints={t: ParameterConstraints(sharding_types=[sharding_type]) for t in tables},
        )
        module = build_embedding_collection(spec)
        plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
        model = DistributedModelParallel(
            module, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=torch.device("cpu"), plan=plan, sharders=sharders
        )
        _copy_into(model.state_dict(), reference.state_dict())

        kjt = random_kjt(spec, batch=6, seed=10 + rank, skewed=True)
        sharded = model(kjt)
        expected = reference(kjt)
        used = {st for m in plan.plan.values() for ps in m.values() for st in [ps.sharding_type]}
        results[rank] = (
            sharded.keys() == expected.keys(),
            float((sharded.values() - expected.values()).abs().max()),
            sorted(used),
        )
        sharded.values().sum().backward()  # the backward path through the sharded tables runs
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sharding_type", SHARDING_TYPES)
def test_sharded_equals_unsharded(sharding_type: str):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(_free_port(), sharding_type, results), nprocs=WORLD_SIZE, start_method="spawn")
        results = dict(results)
    assert sorted(results) == [0, 1]
    for rank, (same_keys, max_diff, used) in results.items():
        assert same_keys, rank
        assert used == [sharding_type], used
        assert max_diff < 1e-5, (rank, max_diff)
