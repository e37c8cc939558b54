"""Sharding helpers: planner constraints from the config, and a plan that covers every table."""

from __future__ import annotations

import torch

from recsys.embeddings import build_embedding_collection
from recsys.features import spec_from_dict
from recsys.models.ctr import CTRTask, DLRMConfig, build_ctr_model
from recsys.train import sharding
from recsys.train.config import config_from_dict
from recsys.train.loop import constraints_for


def tiny_task():
    features = [{"name": "label", "kind": "label"}, {"name": "I1", "kind": "dense"}]
    features += [
        {"name": "C1", "kind": "sparse", "cardinality": 1000, "embedding_dim": 8},
        {"name": "C2", "kind": "sparse", "cardinality": 500, "embedding_dim": 8, "max_length": 3,
         "compression": {"kind": "qr", "num_collisions": 8}},  # mult on bags: per-value EmbeddingCollection
        {"name": "C3", "kind": "sparse", "cardinality": 800, "embedding_dim": 8, "compression": {"kind": "mixed_dim", "num_blocks": 2}},
    ]
    spec = spec_from_dict({"name": "t", "features": features})
    collection = build_embedding_collection(spec, device="meta")
    sharding.materialize_dense(collection, torch.device("cpu"))
    return CTRTask(build_ctr_model(DLRMConfig(dense_layers=(8,), over_layers=(8, 1)), spec, collection))


def test_materialize_dense_leaves_only_tables_on_meta():
    task = tiny_task()
    meta = {n for n, p in task.named_parameters() if p.is_meta}
    bag_tables = [n for n, _ in task.model.sparse.embedding_bags.named_parameters()]
    assert meta and all(".embedding_bags." in n for n in meta)
    assert len(meta) == len(bag_tables)
    projections = [p for n, p in task.named_parameters() if "projections" in n]
    assert projections and all(not p.is_meta and p.abs().sum() > 0 for p in projections)
    per_value = list(task.model.sparse.embeddings.parameters())
    assert per_value and all(not p.is_meta and p.abs().sum() > 0 for p in per_value)


def test_constraints_global_and_per_table():
    config = config_from_dict(
        {"data": {"path": "d"}, "sharding": {"sharding_types": ["table_wise"], "tables": {"C1__full": {"sharding_types": ["column_wise"]}}}}
    )
    out = constraints_for(config, ["C1__full", "C2__qr0"])
    assert out["C1__full"].sharding_types == ["column_wise"]
    assert out["C2__qr0"].sharding_types == ["table_wise"]


def test_plan_covers_every_table_with_allowed_types():
    task = tiny_task()
    names = [t.name for t in task.model.sparse.plan().tables]
    config = config_from_dict({"data": {"path": "d"}, "sharding": {"sharding_types": ["table_wise"]}})
    plan = sharding.plan_sharding(
        task, world_size=1, local_world_size=1, compute_device="cpu", batch_size=64, constraints=constraints_for(config, names)
    )
    rows = sharding.describe_plan(plan)
    assert sorted(r["table"] for r in rows) == sorted(names)
    assert {r["sharding_type"] for r in rows} == {"table_wise"}


def test_per_value_tables_are_never_data_parallel():
    config = config_from_dict({"data": {"path": "d"}})
    out = constraints_for(config, ["M2__qr0", "C1__full"], per_value={"M2__qr0"})
    assert "data_parallel" not in out["M2__qr0"].sharding_types
    assert "data_parallel" in out["C1__full"].sharding_types
