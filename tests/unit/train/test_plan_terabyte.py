"""The shipped Criteo Terabyte configs planned for the clusters their headers name (README table).

    .venv/bin/python -m pytest tests/unit/train/test_plan_terabyte.py -q

Tables on meta, GPU topologies planned on this CPU-only machine; the 64-GPU plan is constrained to
table-row-wise, which keeps the four tests at about 19 s (measured on 2 shared cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.plan import load_plan_spec
from recsys.train.config import load_config
from recsys.train.simulate import DEVICE_PROFILES, GIB, SimulatedCluster, simulate_plan

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
MLPERF_ROWS = 187_767_399  # sum of the 26 MLPerf 40M-capped table sizes


def plan(name: str, device: str, world_size: int, *overrides: str, **memory):
    config = load_config(CONFIGS / name, list(overrides))
    spec, counts, _ = load_plan_spec(config)
    return simulate_plan(config, spec, SimulatedCluster(DEVICE_PROFILES[device], world_size=world_size, **memory), counts)


def test_full_tables_on_8_gpus_row_wise():
    report = plan("ctr_criteo_terabyte_full.yaml", "h100", 8, "sharding.sharding_types=[data_parallel, row_wise]")
    assert report.fits
    assert sum(t.rows for t in report.tables) == MLPERF_ROWS and report.embedding_plan.ratio == pytest.approx(1.0)
    big = [t for t in report.tables if t.rows > 1_000_000]
    assert big and all(t.sharding_type == "row_wise" and t.ranks == tuple(range(8)) for t in big)
    assert max(r.table_hbm + r.reserved_hbm for r in report.ranks) < 80 * GIB


def test_full_tables_on_64_gpus_table_row_wise():
    report = plan("ctr_criteo_terabyte_full.yaml", "h100", 64, "sharding.sharding_types=[data_parallel, table_row_wise]")
    assert report.fits and report.cluster.local_world_size == 8
    twrw = [t for t in report.tables if t.sharding_type == "table_row_wise"]
    assert any(t.rows > 30_000_000 for t in twrw)
    for t in twrw:  # rows of a table stay within one host of 8 GPUs
        assert len({r // 8 for r in t.ranks}) == 1 and len(t.ranks) == 8
    assert len(report.ranks) == 64 and report.step_ms > 0


def test_compressed_plans_fit_one_machine_and_one_gpu():
    cpu = plan("ctr_criteo_terabyte_qr_24gb.yaml", "cpu", 1, ddr_gib=24)
    assert cpu.fits and cpu.embedding_plan.ratio == pytest.approx(1 / 16, rel=0.05)
    assert cpu.ranks[0].table_ddr + cpu.ranks[0].reserved_ddr < 24 * GIB
    gpu = plan("ctr_criteo_terabyte_qr_80gb.yaml", "h100", 1)
    assert gpu.fits and gpu.embedding_plan.ratio == pytest.approx(0.5, rel=0.05)
    assert {t.compute_kernel for t in gpu.tables} <= {"fused", "dense"}  # all in HBM, no UVM
    assert gpu.ranks[0].table_hbm + gpu.ranks[0].reserved_hbm < 80 * GIB


def test_full_tables_do_not_fit_one_24gb_machine():
    report = plan("ctr_criteo_terabyte_full.yaml", "cpu", 1, "sharding.sharding_types=[table_wise]", ddr_gib=24)
    assert not report.fits
    (short,) = report.shortfalls
    assert short.tier == "DDR" and short.over_by > 60 * GIB
    assert [name for name, _ in short.tables] == ["C20__full", "C1__full", "C22__full", "C10__full"]
