"""`recsys train` end to end on tiny synthetic data: 2 Ray workers, resume, fault injection, edge checks.

    .venv/bin/python -m pytest tests/integration/test_train_ray.py -q
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs import synth, train
from recsys.data import layout
from recsys.train.checkpoint import checkpoint_tensors
from recsys.train.config import ConfigError, config_from_dict
from recsys.train.run import prepare

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ctr_synthetic_full.yaml"
# 4,000 rows -> 3,200 training rows: 12 steps per epoch at batch 256.
TINY = ["data.batch_size=256", "data.eval_batch_size=1024", "train.log_every=4", "model.over_layers=[32, 1]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "ctr"
    assert synth.main(["ctr", "--out", str(out), "--rows", "4000", "--seed", "3"]) == 0
    return out


def run(data: Path, run_dir: Path, *overrides: str) -> dict:
    argv = [str(CONFIG), f"data.path={data}", f"run_dir={run_dir}", *TINY, *overrides]
    assert train.main(argv) == 0
    return json.loads((run_dir / "results.json").read_text())


def latest_checkpoint(run_dir: Path) -> Path:
    snapshot = json.loads((run_dir / "ray" / "checkpoint_manager_snapshot.json").read_text())
    return run_dir / "ray" / snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]


def test_two_workers_end_to_end(data, tmp_path, capsys):
    results = run(
        data, tmp_path / "run", "ray.num_workers=2", "train.epochs=2", "train.checkpoint_every=8",
        "sharding.sharding_types=[table_wise]",  # the planner's own pick varies with its estimates
    )
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"run_dir: {(tmp_path / 'run').resolve()}"
    assert results["steps"] == 24 and results["world_size"] == 2
    for key in ("auc", "logloss", "oracle_auc", "samples_per_s", "train_seconds"):
        assert math.isfinite(results[key]), key
    assert 0.5 < results["auc"] <= 1.0
    curve = [loss for _, loss in results["loss_curve"]]
    assert curve[-1] < curve[0]
    assert results["compression_ratio"] == pytest.approx(1.0)
    assert results["embedding_bytes"] == results["full_table_bytes"] > 0
    assert results["config"]["ray"]["num_workers"] == 2 and results["plan"]["tables"]
    # The constraint reached the planner: every table is table-wise, spread over both ranks.
    assert {r["sharding_type"] for r in results["sharding_plan"]} == {"table_wise"}
    assert {rank for r in results["sharding_plan"] for rank in r["ranks"]} == {0, 1}
    ckpt = latest_checkpoint(tmp_path / "run")
    assert {p.name for p in ckpt.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp", "config.json", "train_state.json"}
    assert json.loads((ckpt / "config.json").read_text())["config"]["train"]["epochs"] == 2


def test_resume_continues_at_saved_step_with_identical_state(data, tmp_path):
    run_dir = tmp_path / "run"
    first = run(data, run_dir, "train.max_steps=6", "train.checkpoint_every=3", "embeddings.compression.C3={kind: hashed, num_buckets: 100}")
    saved = checkpoint_tensors(latest_checkpoint(run_dir))
    # Same step budget: the resumed run must restore step 6 and train nothing more.
    again = run(data, run_dir, "train.max_steps=6", "embeddings.compression.C3={kind: hashed, num_buckets: 100}", "resume=true")
    assert again["resumed_from_step"] == 6 and again["steps"] == 6
    restored = checkpoint_tensors(latest_checkpoint(run_dir))
    assert saved.keys() == restored.keys()
    assert any(k.startswith("optimizer.") for k in saved) and any("momentum" in k or "exp_avg" in k for k in saved)
    for name, tensor in saved.items():
        assert torch.equal(tensor, restored[name]), name
    assert again["auc"] == first["auc"]


def test_resume_and_fresh_run_dir_guards(data, tmp_path):
    config = config_from_dict({"data": {"path": str(data)}, "run_dir": str(tmp_path / "none"), "resume": True})
    with pytest.raises(ValueError, match="holds no run to resume"):
        prepare(config)


def test_killed_worker_restarts_from_last_checkpoint(data, tmp_path):
    run_dir = tmp_path / "run"
    results = run(data, run_dir, "ray.num_workers=2", "ray.max_failures=1", "train.checkpoint_every=4", "train.fail_at_step=6")
    assert (run_dir / ".fault_injected").exists()
    assert results["resumed_from_step"] == 4
    assert results["steps"] == 12 and math.isfinite(results["auc"])


# -- checks before training (no Ray) ----------------------------------------------------------


def copy_data(data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(data, out)
    return out


def test_unknown_feature_fails_before_training(data):
    config = config_from_dict({"data": {"path": str(data)}}, ["embeddings.compression.C99={kind: hashed, num_buckets: 10}"])
    with pytest.raises(ConfigError, match=r"no sparse feature 'C99'.*known sparse features"):
        prepare(config)
    config = config_from_dict({"data": {"path": str(data)}}, ["sharding.tables.nope={sharding_types: [table_wise]}"])
    with pytest.raises(ConfigError, match=r"sharding.tables.nope: no such table"):
        prepare(config)


def test_columns_not_matching_spec_fail_before_training(data, tmp_path):
    root = copy_data(data, tmp_path)
    path = layout.split_files(root, "validation")[0]
    table = pq.read_table(path).drop_columns(["C5"]).append_column("extra", pa.array([1] * 400))
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=r"missing columns \['C5'\]; unexpected columns \['extra'\]"):
        prepare(config_from_dict({"data": {"path": str(root)}}))


def test_ids_out_of_range_fail_before_training(data, tmp_path):
    root = copy_data(data, tmp_path)
    path = layout.split_files(root, "test")[0]
    table = pq.read_table(path)
    cardinality = layout.dataset_spec(root).feature("C2").cardinality
    ids = table.column("C2").to_pylist()
    ids[17] = cardinality + 5
    table = table.set_column(table.schema.get_field_index("C2"), "C2", pa.array(ids, pa.int64()))
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=rf"feature 'C2': id {cardinality + 5} .* \(row 17\) is outside \[0, {cardinality}\)"):
        prepare(config_from_dict({"data": {"path": str(root)}}))


def test_model_errors_fail_before_training(data):
    config = config_from_dict({"data": {"path": str(data)}}, ["model.dense_layers=[8]"])
    with pytest.raises(ConfigError, match=r"model: dense_layers: the last size is 8 but the embedding dim is 16"):
        prepare(config)
    config = config_from_dict({"data": {"path": str(data)}}, ["model.over_layers=[16, 2]"])
    with pytest.raises(ConfigError, match=r"over_layers: got \[16, 2\]; give at least two sizes ending in 1"):
        prepare(config)
