"""`recsys bench compression` end to end through Ray Tune on tiny synthetic data, and `recsys bench report`.

    .venv/bin/python -m pytest tests/integration/test_bench_compression.py -q

One sweep of 2 methods x 2 budgets x 1 seed: qr at 1/8 trains; mixed_dim at 1 fails once inside
its training (a worker dies at step 2, by the training job's fault injection); qr at 1 (2
partitions reach at most ~1/2) and mixed_dim at 1/8 (below its floor of ~4/16) are reported
unreachable without running. Running the same command again re-runs only the failed trial. Three
short trainings in all (each costs ~30 s of Ray start-up on an idle 2-core machine). The retrieval
sweep (task: retrieval, two-tower base, full at 1 and hashed at 1/4: 2 trainings, ~25 s) runs
through the same code; tests/unit/train/test_sweep_retrieval.py checks its planning,
results.parquet and report without Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jobs import bench, synth
from recsys.train.faults import FAULTS_FILE

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.batch_size=256", "data.eval_batch_size=1024", "train.log_every=2", "model.over_layers=[32, 1]", "train.max_steps=4"]


@pytest.fixture(scope="module", autouse=True)
def local_ray(ray_session):
    """One local Ray for the module's sweeps (a sweep started without Ray starts and stops its own)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_config=ray.LoggingConfig(log_level="ERROR"))
    yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "ctr"
    assert synth.main(["ctr", "--out", str(out), "--rows", "4000", "--seed", "3"]) == 0
    return out


def sweep_config(path: Path, data: Path) -> Path:
    path.write_text("# recsys bench compression tiny.yaml\n" + yaml.safe_dump({
        "data": {"path": str(data)},
        "base": {"config": str(ROOT / "configs" / "ctr_synthetic_full.yaml"), "overrides": TINY},
        "methods": ["qr", "mixed_dim"],
        "budgets": [1, "1/8"],
        "seeds": [0],
        "keep_full_below": 200,
        "lookup": {"batch_size": 256, "steps": 2, "rounds": 2, "warmup": 1},
    }))
    return path


def statuses(sweep_dir: Path) -> dict[str, str]:
    rows = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    return {r["trial_id"]: r["status"] for r in rows}


def test_sweep_runs_resumes_and_reports(data, tmp_path, capsys):
    config = sweep_config(tmp_path / "tiny.yaml", data)
    sweep_dir = tmp_path / "sweep"
    failing = sweep_dir / "trials" / "mixed_dim-1-s0"
    failing.mkdir(parents=True)
    (failing / FAULTS_FILE).write_text(json.dumps({"kind": "exit_at_step", "step": 2, "rank": 0}))

    assert bench.main(["compression", str(config), "--out", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"sweep_dir: {sweep_dir.resolve()}"
    assert statuses(sweep_dir) == {"qr-1-s0": "unreachable", "mixed_dim-1-s0": "failed", "qr-1_8-s0": "ok",
                                   "mixed_dim-1_8-s0": "unreachable"}
    assert "[1/2 done, 0 running, 1 failed]" in out and "best AUC so far: 1/8: qr s0" in out
    rows = {r["trial_id"]: r for r in pq.read_table(sweep_dir / "results.parquet").to_pylist()}
    ok = rows["qr-1_8-s0"]
    results = json.loads((sweep_dir / "trials" / "qr-1_8-s0" / "results.json").read_text())
    assert ok["auc"] == results["auc"] and ok["embedding_bytes"] == results["embedding_bytes"] > 0
    assert ok["achieved_ratio"] == pytest.approx(1 / 8, rel=0.05) and ok["lookups_per_s"] > 0 and ok["samples_per_s"] > 0
    assert ok["steps"] == 4 and ok["train_seconds"] > 0 and ok["wall_seconds"] >= ok["train_seconds"]
    assert "floor" in rows["mixed_dim-1_8-s0"]["reason"] and "spans" in rows["qr-1-s0"]["reason"]
    assert rows["qr-1-s0"]["run_dir"] is None and not (sweep_dir / "trials" / "qr-1-s0").exists()  # decided before anything ran
    assert rows["mixed_dim-1-s0"]["reason"]  # the one-line reason of the failed training
    report = (sweep_dir / "report.md").read_text()
    assert "| qr | unreachable | " in report and "| mixed_dim | failed | unreachable |" in report
    assert "| mixed_dim-1_8-s0 | unreachable |" in report and "| mixed_dim-1-s0 | failed |" in report
    assert (sweep_dir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (sweep_dir / "trials" / "qr-1_8-s0" / "ray").glob("checkpoint_*") if p.is_dir()]  # keep_checkpoints: false

    # Run the same command again: only the failed trial runs (its fault fired once); the others are kept.
    kept = (sweep_dir / "trials" / "qr-1_8-s0" / "results.json").stat().st_mtime_ns
    assert bench.main(["compression", str(config), "--out", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 trial(s) to run" in out
    assert statuses(sweep_dir) == {"qr-1-s0": "unreachable", "mixed_dim-1-s0": "ok", "qr-1_8-s0": "ok",
                                   "mixed_dim-1_8-s0": "unreachable"}
    assert (sweep_dir / "trials" / "qr-1_8-s0" / "results.json").stat().st_mtime_ns == kept
    assert sorted(p.name for p in (sweep_dir / "tune-2").iterdir() if p.is_dir()) == ["mixed_dim-1-s0"]
    assert "| 1 | full " not in out and "| mixed_dim | 0." in (sweep_dir / "report.md").read_text()

    # `recsys bench report` rewrites both files from results.parquet alone, byte for byte.
    first = ((sweep_dir / "report.md").read_bytes(), (sweep_dir / "pareto.png").read_bytes())
    (sweep_dir / "report.md").unlink()
    (sweep_dir / "pareto.png").unlink()
    assert bench.main(["report", str(sweep_dir)]) == 0
    assert ((sweep_dir / "report.md").read_bytes(), (sweep_dir / "pareto.png").read_bytes()) == first


@pytest.fixture(scope="module")
def interactions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "ia"
    assert synth.main(["interactions", "--out", str(out), "--rows", "4000", "--users", "200", "--items", "120", "--seed", "1"]) == 0
    return out


def test_retrieval_sweep_runs_and_reports(interactions, tmp_path, capsys):
    """task: retrieval, two-tower base: full at 1 and hashed at 1/4 train (2 trainings, ~25 s)."""
    config = tmp_path / "tiny_retrieval.yaml"
    config.write_text("# recsys bench compression tiny_retrieval.yaml\n" + yaml.safe_dump({
        "task": "retrieval",
        "data": {"path": str(interactions)},
        "base": {"config": str(ROOT / "configs" / "two_tower_synthetic_full.yaml"),
                 "overrides": ["data.batch_size=256", "data.eval_batch_size=1024", "train.epochs=1", "train.log_every=4",
                               "model.user_layers=[32, 16]", "model.item_layers=[32, 16]"]},
        "methods": ["full", "hashed"],
        "budgets": ["1/4"],
        "keep_full_below": 100,
        "lookup": {"batch_size": 256, "steps": 2, "rounds": 2, "warmup": 1},
    }))
    sweep_dir = tmp_path / "sweep"
    assert bench.main(["compression", str(config), "--out", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "[2/2 done, 0 running, 0 failed] hashed-1_4-s0: recall@100 0." in out
    assert "| best recall@100 so far: 1: full s0 0." in out and ", 1/4: hashed s0 0." in out
    table = pq.read_table(sweep_dir / "results.parquet")
    assert {"recall_at_100", "recall_at_10", "ndcg_at_10", "oracle_recall_at_100", "val_recall_at_100"} <= set(table.column_names)
    assert "auc" not in table.column_names
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    assert {t: r["status"] for t, r in rows.items()} == {"full-1-s0": "ok", "hashed-1_4-s0": "ok"}
    for tid, r in rows.items():
        results = json.loads((sweep_dir / "trials" / tid / "results.json").read_text())
        assert r["task"] == "retrieval" and r["steps"] == results["steps"] > 0
        assert (r["recall_at_100"], r["recall_at_10"], r["ndcg_at_10"]) == (results["recall@100"], results["recall@10"], results["ndcg@10"])
        assert r["oracle_recall_at_100"] == results["oracle_recall@100"] is not None
        assert r["embedding_bytes"] == results["embedding_bytes"] and r["lookups_per_s"] > 0
    assert rows["hashed-1_4-s0"]["achieved_ratio"] == pytest.approx(1 / 4, rel=0.05)
    assert rows["full-1-s0"]["embedding_bytes"] == rows["full-1-s0"]["full_table_bytes"]
    report = (sweep_dir / "report.md").read_text()
    assert "## Task `retrieval`" in report and "### Best method per budget (by recall@100)" in report
    assert "Oracle (the data set's planted model, the ceiling): recall@100 " in report
    first = ((sweep_dir / "report.md").read_bytes(), (sweep_dir / "pareto.png").read_bytes())
    assert first[1][:4] == b"\x89PNG"
    assert bench.main(["report", str(sweep_dir)]) == 0
    assert ((sweep_dir / "report.md").read_bytes(), (sweep_dir / "pareto.png").read_bytes()) == first


def test_dry_run_plans_without_running(data, tmp_path, capsys):
    config = sweep_config(tmp_path / "tiny.yaml", data)
    assert bench.main(["compression", str(config), "--out", str(tmp_path / "dry"), "--dry-run", "methods=[full,qr]", "budgets=[1,1/4]"]) == 0
    out = capsys.readouterr().out
    assert "qr at 1: unreachable: achieved ratio" in out and "full at 1: ratio 1.0000" in out
    assert not (tmp_path / "dry").exists()
