"""`recsys plan`: TorchRec's planner on small simulated clusters (GPU and CPU), fit and no-fit reports.

    .venv/bin/python -m pytest tests/unit/train/test_plan.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs import cli, synth
from recsys.features import spec_from_dict
from recsys.train.config import ConfigError, config_from_dict
from recsys.train.run import prepare
from recsys.train.simulate import DEVICE_PROFILES, GIB, SimulatedCluster, simulate_plan

BIG_ROWS = 2_000_000  # C2: 2M x 8 float32 = 61 MiB of weights

SPEC = {
    "name": "tiny",
    "features": [
        {"name": "label", "kind": "label"},
        {"name": "I1", "kind": "dense"},
        {"name": "C1", "kind": "sparse", "cardinality": 1000, "embedding_dim": 8},
        {"name": "C2", "kind": "sparse", "cardinality": BIG_ROWS, "embedding_dim": 8},
        {"name": "C3", "kind": "sparse", "cardinality": 5000, "embedding_dim": 8, "compression": {"kind": "qr", "num_collisions": 8}},
    ],
}
MODEL = {"dense_layers": [8], "over_layers": [8, 1]}


def config(**sharding):
    return config_from_dict({"data": {"path": "unused", "batch_size": 512}, "model": MODEL, "sharding": sharding})


def cluster(device: str, world_size: int, **memory) -> SimulatedCluster:
    return SimulatedCluster(DEVICE_PROFILES[device], world_size=world_size, **memory)


@pytest.fixture(scope="module")
def spec():
    return spec_from_dict(SPEC)


def test_gpu_cluster_accepts_row_wise_and_spreads_every_table(spec):
    plan = simulate_plan(config(sharding_types=["row_wise"]), spec, cluster("h100", 4))
    assert plan.fits and plan.batch_size == 128
    assert {t.table for t in plan.tables} == {"C1__full", "C2__full", "C3__qr0", "C3__qr1"}
    assert {t.sharding_type for t in plan.tables} == {"row_wise"}
    assert all(t.ranks == (0, 1, 2, 3) for t in plan.tables)
    # Every byte of a table's shards is on some rank, and in HBM (fused kernels).
    assert sum(r.table_hbm for r in plan.ranks) == sum(t.hbm_bytes for t in plan.tables)
    big = next(t for t in plan.tables if t.table == "C2__full")
    assert big.rows == BIG_ROWS and big.hbm_bytes >= BIG_ROWS * (8 + 1) * 4  # weights + row-wise Adagrad state
    assert all(r.capacity_hbm == 80 * GIB and r.reserved_hbm > 0 for r in plan.ranks)
    assert plan.step_ms == max(r.step_ms for r in plan.ranks) > 0
    assert plan.sharding_mix == {"row_wise": 4}


def test_table_row_wise_on_two_hosts(spec):
    plan = simulate_plan(config(sharding_types=["table_row_wise"]), spec, cluster("a100", 4, ranks_per_host=2))
    assert plan.fits and plan.cluster.local_world_size == 2
    # TWRW keeps each table's rows within one host.
    assert all(t.ranks in ((0, 1), (2, 3)) for t in plan.tables)


def test_cpu_cluster_refuses_cuda_only_sharding_types(spec):
    with pytest.raises(ConfigError, match=r"\['row_wise'\] need CUDA"):
        simulate_plan(config(sharding_types=["table_wise", "row_wise"]), spec, cluster("cpu", 2))
    with pytest.raises(ConfigError, match=r"sharding.tables.nope: no such table"):
        simulate_plan(config(tables={"nope": {"sharding_types": ["table_wise"]}}), spec, cluster("h100", 2))


def test_cpu_cluster_plans_in_ddr(spec):
    plan = simulate_plan(config(sharding_types=["table_wise"]), spec, cluster("cpu", 2, ddr_gib=1))
    assert plan.fits and {t.sharding_type for t in plan.tables} == {"table_wise"}
    assert all(t.hbm_bytes == 0 and t.ddr_bytes > 0 for t in plan.tables)
    assert {r for t in plan.tables for r in t.ranks} == {0, 1}


def test_plan_that_cannot_fit_names_the_tables_and_the_gap(spec):
    plan = simulate_plan(config(sharding_types=["table_wise"]), spec, cluster("cpu", 1, ddr_gib=0.05))
    assert not plan.fits and "insufficient storage" in plan.reason
    (short,) = plan.shortfalls
    assert short.tier == "DDR" and short.over_by == short.needed - short.available > 0
    assert short.available <= 0.05 * GIB < short.needed
    assert short.tables[0][0] == "C2__full" and sum(size for _, size in short.tables) >= short.over_by
    assert short.per_rank and short.per_rank[0][0] == "C2__full"  # no single rank holds it either
    text = plan.format()
    assert "fits: NO" in text and "over by" in text and "C2__full" in text


def test_cluster_arguments_are_checked():
    with pytest.raises(ValueError, match="world size: got 0"):
        cluster("h100", 0)
    with pytest.raises(ValueError, match="no HBM"):
        cluster("cpu", 1, hbm_gib=16)


def write_config(tmp_path: Path, **sharding) -> Path:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC), encoding="utf-8")
    raw = {"data": {"path": str(tmp_path / "no_data"), "spec": str(tmp_path / "spec.yaml"), "batch_size": 512},
           "model": MODEL, "sharding": sharding}
    path = tmp_path / "tiny.yaml"
    path.write_text("# recsys train tiny.yaml\n" + yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_recsys_plan_command(tmp_path, capsys):
    path = write_config(tmp_path, sharding_types=["data_parallel", "table_wise"])
    out_json = tmp_path / "plan.json"
    rc = cli.main(["plan", str(path), "sharding.sharding_types=[row_wise]", "--world-size", "2", "--gpu-type", "h100",
                   "--hbm-gb", "16", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "cluster: 2 x h100 (1 host(s) of 2; 16 GiB HBM + 256 GiB DDR per rank)" in out
    assert "sharding mix: 4 row_wise" in out and "estimated step time" in out and out.rstrip().endswith("fits: yes")
    report = json.loads(out_json.read_text())
    assert report["fits"] and len(report["ranks"]) == 2 and report["cluster"]["hbm_bytes"] == 16 * GIB

    rc = cli.main(["plan", str(path), "--world-size", "1", "--gpu-type", "cpu", "--ddr-gb", "0.05"])
    out = capsys.readouterr().out
    assert rc == 1 and "fits: NO" in out and "C2__full" in out


def test_training_still_refuses_cuda_only_sharding_on_cpu(tmp_path):
    data = tmp_path / "ctr"
    assert synth.main(["ctr", "--out", str(data), "--rows", "300", "--seed", "1"]) == 0
    for types in (["row_wise"], ["table_row_wise", "table_wise"]):
        with pytest.raises(ConfigError, match="need CUDA"):
            prepare(config_from_dict({"data": {"path": str(data)}, "sharding": {"sharding_types": types}}))
