"""`recsys plan`: TorchRec's planner on small simulated clusters (GPU and CPU), fit and no-fit reports.

    .venv/bin/python -m pytest tests/unit/train/test_plan.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from jobs import cli, synth
from jobs import plan as plan_job
from jobs.plan import load_plan_spec
from jobs.plan import main as plan_main
from recsys.features import spec_from_dict
from recsys.train.config import ConfigError, config_from_dict, load_config
from recsys.train.run import prepare
from recsys.train.simulate import DEVICE_PROFILES, GIB, SimulatedCluster, simulate_plan
from recsys.train.tasks import task_for

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
    assert rc == 3 and "fits: NO" in out and "C2__full" in out  # 3: no plan fits (1 is an error)


def test_training_still_refuses_cuda_only_sharding_on_cpu(tmp_path):
    data = tmp_path / "ctr"
    assert synth.main(["ctr", "--out", str(data), "--rows", "300", "--seed", "1"]) == 0
    for types in (["row_wise"], ["table_row_wise", "table_wise"]):
        with pytest.raises(ConfigError, match="need CUDA"):
            prepare(config_from_dict({"data": {"path": str(data)}, "sharding": {"sharding_types": types}}))


# -- every shipped config plans without its data set (issue 17) ----------------------------------

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
TRAINING_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("bench_"))


def test_the_shipped_training_configs_are_all_here():
    names = {p.stem for p in TRAINING_CONFIGS}
    assert {"ctr_synthetic_full", "ctr_synthetic_mixed_dim", "two_tower_synthetic_unified", "two_tower_movielens",
            "ctr_criteo_terabyte_full"} <= names and len(names) >= 18


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_plans_without_its_data_set(path, tmp_path, capsys):
    # data.path moved to an empty place: the plan must come from the spec the config names.
    rc = cli.main(["plan", str(path), f"data.path={tmp_path / 'absent'}"])
    out, err = capsys.readouterr()
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
    if any("data.path=DIR" in line for line in header):
        # A config for the user's own data set (its header names data.path=DIR; the spec comes from
        # that ingest): planning needs the data set, and says so in one line.
        assert rc == 1 and "no data set there (manifest.json missing), and the config names no spec to plan from" in err
        return
    assert rc == 0, err
    assert out.rstrip().endswith("fits: yes") and "Sharding spec not found" not in out + err
    config = load_config(path, [])
    assert config.data.spec or config.data.source_spec, f"{path.name} names no spec to plan from"
    if not config.data.spec:
        assert f"planning from data.source_spec {config.data.source_spec}" in out
    tables = len(task_for(config.model.arch).plan(*load_plan_spec(config)[:2]).tables)
    assert f"embeddings: {tables} tables" in out


def test_a_config_without_data_or_spec_says_what_to_name(tmp_path):
    path = write_config(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no data set there \(manifest.json missing\).*set data.source_spec="):
        plan_main([str(path), "data.spec=null"])


# -- flags: checked before any planning, one line, exit 2 (issue 18) -------------------------------


@pytest.fixture
def no_planning(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("planned before the flags were checked")

    monkeypatch.setattr("jobs.plan.simulate_plan", fail)


@pytest.mark.parametrize(("flags", "message"), [
    (["--world-size", "0"], "--world-size: got 0; give at least 1 rank"),
    (["--world-size", "two"], "argument --world-size: invalid int value: 'two'"),
    (["--world-size", "3"], r"data.batch_size: got 512; it is the GLOBAL batch and must divide by --world-size 3 \(e.g. data.batch_size=510 or 513"),
    (["--ranks-per-host", "0"], "--ranks-per-host: got 0; give at least 1 rank per host"),
    (["--ranks-per-host", "4", "--world-size", "2"], r"--ranks-per-host: got 4; give 1 .. --world-size \(2\)"),
    (["--ranks-per-host", "2"], r"--ranks-per-host: got 2; give 1 .. the world size \(1, ray.num_workers\)"),
    (["--hbm-gb", "-1", "--gpu-type", "h100"], "--hbm-gb: got -1; give a size in GiB >= 0"),
    (["--ddr-gb", "nan"], "--ddr-gb: got nan; give a size in GiB >= 0"),
    (["--ddr-gb", "inf"], "--ddr-gb: got inf; give a size in GiB >= 0"),
    (["--gpu-type", "cpu", "--hbm-gb", "4"], "--hbm-gb: got 4 for --gpu-type cpu, whose ranks have no HBM"),
    (["--hbm-gb", "4"], r"--hbm-gb: got 4 for CPU ranks \(ray.use_gpu is false\), which have no HBM"),
    (["--gpu-type", "tpu"], "argument --gpu-type: invalid choice: 'tpu'"),
    (["--json", "/sys/plan.json"], "--json: got /sys/plan.json; cannot write there"),
    (["--json", "{tmp}/nowhere/plan.json"], r"--json: got .*nowhere/plan.json; its folder .*nowhere does not exist"),
    (["--json", "{tmp}"], r"--json: got .*, which is a folder; give a file path"),
])
def test_every_plan_flag_is_checked_before_planning(flags, message, tmp_path, capsys, no_planning):
    path = write_config(tmp_path)
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["plan", str(path), *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("recsys plan: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "nowhere").exists()


def test_json_probe_leaves_no_file_behind(tmp_path, capsys):
    path = write_config(tmp_path)
    out_json = tmp_path / "plan.json"
    assert cli.main(["plan", str(path), "--json", str(out_json), "--ddr-gb", "0.05"]) == 3
    assert json.loads(out_json.read_text())["memory_short"] is True  # written at the end, also when it does not fit


def test_exit_codes_tell_fits_no_fit_and_error_apart(tmp_path, capsys):
    path = write_config(tmp_path)
    assert cli.main(["plan", str(path)]) == plan_job.EXIT_FITS == 0
    assert cli.main(["plan", str(path), "--ddr-gb", "0.05"]) == plan_job.EXIT_NO_FIT == 3
    assert cli.main(["plan", str(path), "model.dense_layerz=[8]"]) == plan_job.EXIT_ERROR == 1
    assert "model.dense_layerz: unknown key" in capsys.readouterr().err
    # The world size from the config (not a flag) is a config error, as `recsys train` reports it.
    assert cli.main(["plan", str(path), "ray.num_workers=3"]) == 1
    assert "data.batch_size: got 512; it is the GLOBAL batch and must divide by ray.num_workers 3" in capsys.readouterr().err


def test_a_plan_short_of_memory_says_so_as_torchrec_does(spec):
    # The reservation alone (15% of HBM, dense parameters, input batches) exceeds 256 KiB of HBM:
    # TorchRec says "negative available hbm storage"; recsys must not say "no memory tier is short".
    plan = simulate_plan(config(sharding_types=["table_wise"]), spec, cluster("h100", 1, hbm_gib=1 / 4096))
    assert not plan.fits and plan.memory_short and "negative available hbm storage" in plan.reason
    (short,) = plan.shortfalls
    assert short.kind == "reservation" and short.tier == "HBM" and short.needed > short.available == 1 << 18
    text = plan.format()
    assert "HBM: memory is short before any table: the planner reserves" in text and "input batches" in text
    assert "no memory tier is short" not in text and "give more HBM per rank (--hbm-gb)" in text
    # CPU ranks: the reservation leaves no DDR, so no table can go anywhere: one line says why.
    plan = simulate_plan(config(sharding_types=["table_wise"]), spec, cluster("cpu", 1, ddr_gib=1 / 4096))
    assert plan.memory_short and [s.kind for s in plan.shortfalls] == ["reservation"]
    assert "DDR: memory is short before any table" in plan.format()


def test_tables_that_do_not_pack_are_blamed_on_the_constraints_as_torchrec_does():
    # Three equal tables, table_wise only, two CPU ranks each with room for 1.5 of them: in total
    # they fit (3 <= 2 x 1.5), but no rank takes two whole tables. TorchRec says "strict
    # constraints"; recsys must not claim memory is short, and must say how to get a plan.
    three = spec_from_dict({"name": "three", "features": [{"name": "label", "kind": "label"}, {"name": "I1", "kind": "dense"}]
                            + [{"name": f"C{i}", "kind": "sparse", "cardinality": 1_000_000, "embedding_dim": 8} for i in range(3)]})
    roomy = simulate_plan(config(sharding_types=["table_wise"]), three, cluster("cpu", 2, ddr_gib=1))
    assert roomy.fits and roomy.sharding_mix == {"table_wise": 3}
    table, reserved = roomy.tables[0].ddr_bytes, roomy.ranks[0].reserved_ddr
    tight = simulate_plan(config(sharding_types=["table_wise"]), three, cluster("cpu", 2, ddr_gib=(1.5 * table + reserved) / GIB))
    assert not tight.fits and not tight.memory_short and tight.shortfalls == () and "strict constraints" in tight.reason
    text = tight.format()
    assert "no memory tier is short: the sharding constraints leave no plan (e.g. whole tables that do not pack" in text
    assert "allow more sharding types (row_wise / column_wise split a table)" in text
    split = simulate_plan(config(sharding_types=["table_wise", "row_wise"]), three, cluster("h100", 2, hbm_gib=(1.5 * table + reserved) / GIB + 0.02))
    assert split.fits


BENCH_CONFIGS = sorted(CONFIGS.glob("bench_*.yaml"))


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=lambda p: p.stem)
def test_a_sweep_config_plans_its_base_with_full_tables(path, tmp_path, capsys):
    rc = cli.main(["plan", str(path), f"data.path={tmp_path / 'absent'}"])
    out, err = capsys.readouterr()
    if path.stem == "bench_avazu":  # its header says so: it runs once DCN takes 0 dense inputs
        assert rc == 1 and "spec 'avazu' has no dense features" in err
        return
    assert rc == 0, err
    assert f"note: {path} is a sweep config (recsys bench compression): planning its base training config" in out
    assert "ratio 1.0000 of full tables" in out and out.rstrip().endswith("fits: yes")
