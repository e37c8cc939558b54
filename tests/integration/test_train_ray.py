"""`recsys train` end to end on tiny synthetic data: 2 Ray workers, resume, fault injection, edge checks.

    .venv/bin/python -m pytest tests/integration/test_train_ray.py -q
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs import synth, train
from recsys.data import layout
from recsys.train.checkpoint import checkpoint_folders, checkpoint_tensors, verify_checkpoint
from recsys.train.faults import FAULTS_FILE, FIRED_MARKER
from recsys.train.config import ConfigError, config_from_dict, load_config
from recsys.train.run import prepare

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "ctr_synthetic_full.yaml"
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


def arm_fault(run_dir: Path, kind: str, step: int, rank: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAULTS_FILE).write_text(json.dumps({"kind": kind, "step": step, "rank": rank}))


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in checkpoint_tensors(latest_checkpoint(run_dir)).items()}


def test_two_workers_end_to_end_and_run_dir_is_the_last_line(data, tmp_path):
    run_dir = tmp_path / "run"
    argv = [
        sys.executable, "-m", "jobs.cli", "train", str(CONFIG), f"data.path={data}", f"run_dir={run_dir}", *TINY,
        "ray.num_workers=2", "train.epochs=2", "train.checkpoint_every=8",
        "sharding.sharding_types=[table_wise]",  # the planner's own pick varies with its estimates
    ]
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    # Ray's and the workers' lines come before it: stdout and stderr together end with the run dir.
    assert proc.stdout.strip().splitlines()[-1] == f"run_dir: {run_dir.resolve()}"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 24 and results["world_size"] == 2
    for key in ("auc", "logloss", "oracle_auc", "samples_per_s", "train_seconds"):
        assert math.isfinite(results[key]), key
    assert 0.5 < results["auc"] <= 1.0
    curve = [loss for _, loss in results["loss_curve"]]
    assert curve[-1] < curve[0]
    assert results["compression_ratio"] == pytest.approx(1.0)
    assert results["embedding_bytes"] == results["full_table_bytes"] > 0
    assert results["config"]["ray"]["num_workers"] == 2 and results["plan"]["tables"]
    assert [c["from_step"] for c in results["configs"]] == [0]
    # The constraint reached the planner: every table is table-wise, spread over both ranks.
    assert {r["sharding_type"] for r in results["sharding_plan"]} == {"table_wise"}
    assert {rank for r in results["sharding_plan"] for rank in r["ranks"]} == {0, 1}
    ckpt = latest_checkpoint(run_dir)
    assert {p.name for p in ckpt.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp", "config.json", "train_state.json"}
    assert json.loads((ckpt / "config.json").read_text())["config"]["train"]["epochs"] == 2


def test_three_workers_score_every_evaluation_row_once(data, tmp_path):
    # 400 validation and 400 test rows over 3 workers (134 + 133 + 133): none dropped, none twice.
    results = run(data, tmp_path / "run", "ray.num_workers=3", "data.batch_size=255", "data.eval_batch_size=90", "train.max_steps=3")
    assert results["split_rows"] == {"train": 3200, "validation": 400, "test": 400}
    assert results["test_rows"] == 400 and results["val_rows"] == 400
    assert results["steps"] == 3 and results["world_size"] == 3


# Two epochs of 12 steps, checkpoints every 5: stopping before step 8 resumes at 5, mid-epoch.
RESUMABLE = ["train.epochs=2", "train.checkpoint_every=5", "train.num_checkpoints=4", "data.shuffle_buffer_rows=512",
             "embeddings.compression.C3={kind: hashed, num_buckets: 100}"]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    return run_dir, run(data, run_dir, *RESUMABLE)


def test_same_config_and_seed_give_identical_runs(data, tmp_path, uninterrupted):
    first_dir, first = uninterrupted
    again = run(data, tmp_path / "again", *RESUMABLE)
    assert (again["auc"], again["logloss"], again["val_auc"]) == (first["auc"], first["logloss"], first["val_auc"])
    assert again["loss_curve"] == first["loss_curve"]
    a, b = model_tensors(first_dir), model_tensors(tmp_path / "again")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


@pytest.mark.slow  # a third training (~30 s); seeded data orders differ by seed in tests/unit/data/test_shard_reader.py
def test_another_seed_gives_another_run(data, tmp_path, uninterrupted):
    _, first = uninterrupted
    other = run(data, tmp_path / "seed1", *RESUMABLE, "train.seed=1")
    assert other["loss_curve"] != first["loss_curve"]  # the seed is used


def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(data, tmp_path, uninterrupted):
    first_dir, first = uninterrupted
    run_dir = tmp_path / "run"
    arm_fault(run_dir, "exit_at_step", step=8, rank=0)
    with pytest.raises(Exception):
        run(data, run_dir, *RESUMABLE)  # the worker dies before step 8, ray.max_failures=0
    assert (run_dir / FIRED_MARKER).exists() and not (run_dir / "results.json").exists()
    resumed = run(data, run_dir, *RESUMABLE, "resume=true")
    assert resumed["resumed_from_step"] == 5 and resumed["steps"] == 24  # 19 steps trained after resuming
    assert (resumed["auc"], resumed["logloss"], resumed["val_auc"]) == (first["auc"], first["logloss"], first["val_auc"])
    a, b = model_tensors(first_dir), model_tensors(run_dir)
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name  # parameters and optimizer state, bit for bit


def resume_config(data: Path, run_dir: Path, *overrides: str):
    return load_config(CONFIG, [f"data.path={data}", f"run_dir={run_dir}", *TINY, *RESUMABLE, *overrides, "resume=true"])


def test_resume_refuses_a_different_model_and_unasked_changes(data, uninterrupted):
    run_dir, _ = uninterrupted
    with pytest.raises(ValueError, match=r"different model or plan \(embeddings.compression.C3.num_buckets: 100 -> 200\)"):
        prepare(resume_config(data, run_dir, "embeddings.compression.C3={kind: hashed, num_buckets: 200}"))
    with pytest.raises(ValueError, match=r"optimizer.embedding.kind: 'rowwise_adagrad' -> 'adam'"):
        prepare(resume_config(data, run_dir, "optimizer.embedding.kind=adam"))
    with pytest.raises(ValueError, match=r"data.batch_size: 256 -> 128"):
        prepare(resume_config(data, run_dir, "data.batch_size=128"))
    with pytest.raises(ValueError, match=r"optimizer.dense.lr: 0.005 -> 0.001\); to continue with these changes pass resume_allow_changes=\[optimizer.dense.lr\]"):
        prepare(resume_config(data, run_dir, "optimizer.dense.lr=0.001"))
    ok = prepare(resume_config(data, run_dir, "optimizer.dense.lr=0.001", "train.epochs=3", "resume_allow_changes=[optimizer.dense, train.epochs]"))
    assert any("optimizer.dense.lr changed from 0.005 to 0.001" in n for n in ok.notes)
    assert ok.resume_from is not None and ok.resume_from.name.startswith("checkpoint_")


def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact(data, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], run_dir)
    folders = checkpoint_folders(run_dir)
    assert [step for step, _ in folders] == [10, 15, 20, 24]
    newest, older = folders[-1][1], folders[-2][1]
    shard = newest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    assert "truncated" in verify_checkpoint(newest)
    (older / "train_state.json").unlink()
    assert verify_checkpoint(older) == "train_state.json is missing"
    fallback = folders[-3][1]
    prepared = prepare(resume_config(data, run_dir, "train.epochs=3", "resume_allow_changes=[train.epochs]"))
    assert prepared.resume_from == fallback.resolve()
    assert any(f"checkpoint {newest} is damaged: __0_0.distcp is truncated" in n for n in prepared.notes)
    assert any(f"resuming from the newest intact checkpoint instead: {fallback}" in n for n in prepared.notes)
    results = run(data, run_dir, *RESUMABLE, "train.epochs=3", "resume_allow_changes=[train.epochs]", "resume=true")
    assert results["resumed_from_step"] == 15 and results["steps"] == 36
    assert [c["from_step"] for c in results["configs"]] == [0, 15]
    assert results["configs"][1]["config"]["train"]["epochs"] == 3


def test_killed_worker_restarts_from_last_checkpoint(data, tmp_path):
    run_dir = tmp_path / "run"
    arm_fault(run_dir, "exit_at_step", step=6, rank=1)
    results = run(data, run_dir, "ray.num_workers=2", "ray.max_failures=1", "train.checkpoint_every=4")
    assert (run_dir / FIRED_MARKER).exists()
    assert results["resumed_from_step"] == 4
    assert results["steps"] == 12 and math.isfinite(results["auc"])


def test_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(data, tmp_path):
    run_dir = tmp_path / "run"
    arm_fault(run_dir, "exit_during_save", step=8, rank=1)
    results = run(data, run_dir, "ray.num_workers=2", "ray.max_failures=1", "train.checkpoint_every=4")
    assert "killed while writing the checkpoint of step 8" in (run_dir / FIRED_MARKER).read_text()
    assert results["resumed_from_step"] == 4
    assert results["steps"] == 12 and math.isfinite(results["auc"])


def test_non_finite_loss_stops_at_its_step_and_a_failed_run_dir_starts_fresh(data, tmp_path, capfd):
    root = copy_data(data, tmp_path)
    path = layout.split_files(root, "train")[0]
    table = pq.read_table(path)
    values = table.column("I1").to_pylist()
    values[3] = float("inf")
    pq.write_table(table.set_column(table.schema.get_field_index("I1"), "I1", pa.array(values, pa.float32())), path)
    with pytest.raises(ValueError, match=rf"{path}, row 3: dense feature 'I1' is inf"):
        prepare(config_from_dict({"data": {"path": str(root), "batch_size": 256}}))
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"training stopped at step 1: the loss is nan"):
        run(root, run_dir, "data.check_ranges=false", "data.shuffle_files=false")
    assert "WARNING: data.check_ranges=false" in capfd.readouterr().err
    # That run failed before its first checkpoint: the same run_dir takes a fresh run.
    assert (run_dir / "ray").exists()
    prepare(config_from_dict({"data": {"path": str(data), "batch_size": 256}, "run_dir": str(run_dir)}))


# -- checks before training (no Ray) ----------------------------------------------------------


def copy_data(data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(data, out)
    return out


def test_unknown_feature_fails_before_training(data):
    config = config_from_dict({"data": {"path": str(data), "batch_size": 256}}, ["embeddings.compression.C99={kind: hashed, num_buckets: 10}"])
    with pytest.raises(ConfigError, match=r"no sparse feature 'C99'.*known sparse features"):
        prepare(config)
    config = config_from_dict({"data": {"path": str(data), "batch_size": 256}}, ["sharding.tables.nope={sharding_types: [table_wise]}"])
    with pytest.raises(ConfigError, match=r"sharding.tables.nope: no such table"):
        prepare(config)


def test_columns_not_matching_spec_fail_before_training(data, tmp_path):
    root = copy_data(data, tmp_path)
    path = layout.split_files(root, "validation")[0]
    table = pq.read_table(path).drop_columns(["C5"]).append_column("extra", pa.array([1] * 400))
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=r"missing columns \['C5'\]; unexpected columns \['extra'\]"):
        prepare(config_from_dict({"data": {"path": str(root), "batch_size": 256}}))


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
        prepare(config_from_dict({"data": {"path": str(root), "batch_size": 256}}))


def test_model_errors_fail_before_training(data):
    config = config_from_dict({"data": {"path": str(data), "batch_size": 256}}, ["model.dense_layers=[8]"])
    with pytest.raises(ConfigError, match=r"model.dense_layers: the last size is 8 but the embedding dim is 16"):
        prepare(config)
    config = config_from_dict({"data": {"path": str(data), "batch_size": 256}}, ["model.over_layers=[16, 2]"])
    with pytest.raises(ConfigError, match=r"model.over_layers: got \[16, 2\]; give at least two sizes ending in 1"):
        prepare(config)


def test_labels_that_are_not_binary_fail_before_training(data, tmp_path):
    root = copy_data(data, tmp_path)
    path = layout.split_files(root, "validation")[0]
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[5] = 4.0  # a rating, not a click
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.float32())), path)
    with pytest.raises(ValueError, match=rf"{path}, row 5: label 'label' is 4; the CTR task \(BCE\) needs labels in \[0.0, 1.0\]"):
        prepare(config_from_dict({"data": {"path": str(root), "batch_size": 256}}))


def test_empty_split_fails_before_training(data, tmp_path):
    root = copy_data(data, tmp_path)
    path = layout.split_files(root, "validation")[0]
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(ValueError, match=r"the validation split has 0 rows; re-ingest with non-zero --split fractions"):
        prepare(config_from_dict({"data": {"path": str(root), "batch_size": 256}}))


def test_batch_and_run_dir_checks_are_part_of_the_dry_run(data, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"data.batch_size: got 5000; the train split has 3,200 rows .* use at most 3,200"):
        prepare(config_from_dict({"data": {"path": str(data), "batch_size": 5000}}))
    with pytest.raises(ValueError, match=r"data.batch_size: got 511; it is the GLOBAL batch and must divide by ray.num_workers 2 \(e.g. 510 or 512\)"):
        prepare(config_from_dict({"data": {"path": str(data), "batch_size": 511}, "ray": {"num_workers": 2}}))
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(ValueError, match=rf"run_dir: {afile} is a file, not a folder"):
        train.main([str(CONFIG), "--dry-run", f"data.path={data}", f"run_dir={afile}"])
    # --dry-run anywhere among the overrides
    for argv in ([str(CONFIG), "--dry-run", f"data.path={data}", "data.batch_size=256"],
                 [str(CONFIG), f"data.path={data}", "--dry-run", "data.batch_size=256"]):
        assert train.main(argv) == 0
        assert capsys.readouterr().out.startswith("model dlrm; 28 sparse + 13 dense features")


def test_check_ranges_off_warns_once(data, tmp_path, capsys):
    assert train.main([str(CONFIG), f"data.path={data}", "data.batch_size=256", "data.check_ranges=false", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING: data.check_ranges=false") == 1 and "FBGEMM reads an out-of-range id as row 0" in err


def test_resume_needs_a_checkpoint(data, tmp_path):
    config = config_from_dict({"data": {"path": str(data), "batch_size": 256}, "run_dir": str(tmp_path / "none"), "resume": True})
    with pytest.raises(ValueError, match="holds no checkpoint to resume"):
        prepare(config)


def test_data_parallel_only_for_per_value_tables_is_refused(data):
    config = config_from_dict(
        {"data": {"path": str(data), "batch_size": 256}},
        ["embeddings.compression.M1={kind: qr, num_collisions: 4}", "sharding.sharding_types=[data_parallel]"],
    )
    with pytest.raises(ConfigError, match=r"sharding.sharding_types: got \['data_parallel'\] for per-value table M1__qr0"):
        prepare(config)


# slow: tests/unit/train/test_early_stopping.py runs the real worker loop in process (planted curves, resume);
# this adds two Ray workers agreeing on the stop (~15 s here).
@pytest.mark.slow
def test_early_stopping_on_two_workers_restores_the_best_step(data, tmp_path):
    # min_delta 1: no AUC improves by 1, so the first evaluation (step 4) is the best and the
    # second (step 8) stops the run, on both ranks (a disagreement would hang their collectives).
    run_dir = tmp_path / "stopped"
    stopped = run(data, run_dir, "ray.num_workers=2", "train.epochs=2", "sharding.sharding_types=[table_wise]", "train.eval_every=4",
                  "train.early_stopping={metric: val_auc, mode: max, patience: 1, min_delta: 1.0}")
    assert (stopped["best_step"], stopped["steps"], stopped["stopped_early"]) == (4, 8, True)
    assert [s for s, _ in stopped["early_stopping"]["curve"]] == [4, 8]
    assert stopped["val_auc"] == stopped["early_stopping"]["curve"][0][1]  # the best evaluation's, not the last
    assert [row["step"] for row in stopped["history"]] == [4, 8]
    # Ray kept the best checkpoint; the final one (what export reads) holds its parameters.
    (best_step, best), (final_step, final) = checkpoint_folders(run_dir)
    assert (best_step, final_step) == (4, 8) and Path(stopped["checkpoint"]) == final
    a, b = checkpoint_tensors(best), checkpoint_tensors(final)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
