"""The retrieval task of `recsys bench compression`: config checks, planning (no Ray), results.parquet and the report.

    .venv/bin/python -m pytest tests/unit/train/test_sweep_retrieval.py -q

The end-to-end sweep through Ray Tune is in tests/integration/test_bench_compression.py (slow);
here the trials' folders are written by hand, so planning, collecting and reporting run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import synth
from recsys.embeddings.budget import TOLERANCE
from recsys.train.report import best_per_budget, cells, format_report, write_report
from recsys.train.sweep import TASKS, SweepConfigError, collect, columns, plan_sweep, sweep_config_from_dict, trial_id

ROOT = Path(__file__).resolve().parents[3]
TWO_TOWER = str(ROOT / "configs" / "two_tower_synthetic_full.yaml")
CTR = str(ROOT / "configs" / "ctr_synthetic_full.yaml")
SMALL = ["data.batch_size=256", "data.eval_batch_size=1024", "model.user_layers=[32, 16]", "model.item_layers=[32, 16]"]


def good(**changes) -> dict:
    raw = {
        "task": "retrieval",
        "data": {"path": "data/synthetic_interactions"},
        "base": {"config": TWO_TOWER, "overrides": ["train.epochs=1"]},
        "methods": ["full", "hashed", "unified"],
        "budgets": ["1/4", "1/16"],
        "keep_full_below": 1000,
    }
    raw.update(changes)
    return raw


# -- config -----------------------------------------------------------------------------------


def test_a_two_tower_base_loads_under_task_retrieval():
    sweep, base = sweep_config_from_dict(good())
    assert sweep.task == "retrieval" and base.model.arch == "two_tower" and base.train.epochs == 1
    assert [m.label for m in TASKS["retrieval"].metrics] == ["recall@100", "recall@10", "NDCG@10"]


def test_a_base_of_the_other_task_is_refused_with_every_other_error():
    with pytest.raises(SweepConfigError) as err:
        sweep_config_from_dict(good(base={"config": CTR}, budgets=["1/4", 2]), source="bench_bad.yaml")
    text = str(err.value)
    assert "base.model.arch: got 'dlrm' (from " in text and "task 'retrieval' trains two_tower models: set task: ctr" in text
    assert "budgets[1]: got 2; allowed: > 0.0 and <= 1.0" in text  # reported together
    with pytest.raises(SweepConfigError, match=r"base.model.arch: got 'two_tower' .*task 'ctr' trains dlrm / dcn models: set task: retrieval"):
        sweep_config_from_dict({k: v for k, v in good().items() if k != "task"})  # task defaults to ctr
    with pytest.raises(SweepConfigError, match=r"task: got 'ranking'; allowed: 'ctr' or 'retrieval'"):
        sweep_config_from_dict(good(task="ranking"))


def test_the_base_must_report_the_ranked_cut_offs():
    with pytest.raises(SweepConfigError, match=r"base.model.eval_ks: got \[10, 50\]; task 'retrieval' reports recall@100, "
                                                r"recall@10, NDCG@10: add \[100\]"):
        sweep_config_from_dict(good(base={"config": TWO_TOWER, "overrides": ["model.eval_ks=[10, 50]"]}))


# -- planning and collecting, without Ray -----------------------------------------------------


@pytest.fixture(scope="module")
def interactions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_retrieval") / "ia"
    assert synth.main(["interactions", "--out", str(out), "--rows", "4000", "--users", "200", "--items", "120", "--seed", "1"]) == 0
    return out


def fake_results(recall: float, plan) -> dict:
    """What a two-tower run's results.json holds, as far as the sweep reads it."""
    out = {"compression_ratio": plan.achieved_ratio, "embedding_bytes": plan.embedding_bytes, "full_table_bytes": plan.full_table_bytes,
           "samples_per_s": 5000.0, "train_seconds": 3.0, "wall_seconds": 20.0, "steps": 12, "mrr": recall / 3,
           "oracle_recall@10": 0.78, "oracle_recall@100": 1.0}
    for prefix in ("", "val_"):
        out.update({f"{prefix}recall@100": recall, f"{prefix}recall@10": recall / 2, f"{prefix}ndcg@10": recall / 4})
    out.update({"popularity_recall@100": 0.9, "popularity_recall@10": 0.33})
    return out


def test_plan_sizes_every_method_by_the_models_bytes_and_collects_the_metrics(interactions, tmp_path):
    sweep, base = sweep_config_from_dict(good(data={"path": str(interactions)}, methods=["full", "hashed", "unified", "qr"],
                                              base={"config": TWO_TOWER, "overrides": SMALL}, keep_full_below=100))
    sweep_dir = tmp_path / "sweep"
    plans = {p.trial_id: p for p in plan_sweep(sweep, base, sweep_dir, log=lambda *a, **k: None)}
    assert set(plans) == {"full-1-s0", "hashed-1_4-s0", "unified-1_4-s0", "qr-1_4-s0", "hashed-1_16-s0", "unified-1_16-s0", "qr-1_16-s0"}
    assert plans["qr-1_16-s0"].status == "unreachable" and "spans" in plans["qr-1_16-s0"].reason
    for tid in ("hashed-1_4-s0", "unified-1_4-s0", "hashed-1_16-s0", "unified-1_16-s0"):
        p = plans[tid]
        assert p.status == "pending" and abs(p.achieved_ratio / p.target_ratio - 1) <= TOLERANCE, tid
        assert p.embedding_bytes == pytest.approx(p.target_ratio * p.full_table_bytes, rel=TOLERANCE)
    # A unified group read by both towers is held once per tower: the solver was given less (about
    # half of the id tables' share; the small features kept full count once).
    unified = plans["unified-1_4-s0"]
    assert unified.solver_ratio is not None and unified.solver_ratio < 0.75 * unified.target_ratio
    assert plans["unified-1_16-s0"].solver_ratio < 1 / 16
    assert unified.config["embeddings"]["budget"]["ratio"] == unified.solver_ratio
    assert plans["hashed-1_16-s0"].solver_ratio is None

    recalls = {"full-1-s0": 0.9, "hashed-1_4-s0": 0.8, "unified-1_4-s0": 0.85, "qr-1_4-s0": 0.7, "hashed-1_16-s0": 0.6}
    for tid, recall in recalls.items():
        folder = sweep_dir / "trials" / tid
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(fake_results(recall, plans[tid])))
    (sweep_dir / "trials" / "unified-1_16-s0").mkdir()
    (sweep_dir / "trials" / "unified-1_16-s0" / "failure.json").write_text(json.dumps({"reason": "loss is nan at step 3"}))

    table = pq.read_table(collect("retrieval", list(plans.values()), sweep_dir))
    assert tuple(table.column_names) == columns("retrieval")
    assert {"recall_at_100", "recall_at_10", "ndcg_at_10", "val_recall_at_100", "oracle_recall_at_100", "mrr"} <= set(table.column_names)
    assert table.schema.field("recall_at_100").type == pa.float64() and table.schema.field("steps").type == pa.int64()
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    assert rows["unified-1_4-s0"]["recall_at_100"] == 0.85 and rows["unified-1_4-s0"]["ndcg_at_10"] == 0.85 / 4
    assert rows["hashed-1_16-s0"]["oracle_recall_at_10"] == 0.78 and rows["hashed-1_16-s0"]["popularity_recall_at_100"] == 0.9
    assert (rows["unified-1_16-s0"]["status"], rows["unified-1_16-s0"]["reason"]) == ("failed", "loss is nan at step 3")
    assert rows["qr-1_16-s0"]["status"] == "unreachable" and rows["qr-1_16-s0"]["recall_at_100"] is None
    assert "auc" not in table.column_names  # each task its own metric columns

    report, pareto = write_report(sweep_dir)
    text = report.read_text()
    assert "## Task `retrieval`" in text and "| 1/4 | unified | 0.8500 | hashed | 0.8000 | 0.0500 |" in text
    assert pareto.read_bytes()[:4] == b"\x89PNG"


# -- report -----------------------------------------------------------------------------------


def row(method, budget, ratio, seed, recall=None, status="ok", **kw):
    r = {c: None for c in columns("retrieval")}
    r.update(task="retrieval", trial_id=trial_id(method, ratio, seed), method=method, budget=budget, target_ratio=ratio, seed=seed,
             status=status, embedding_bytes=int(4_000_000 * ratio), achieved_ratio=ratio, samples_per_s=9000.0, lookups_per_s=4e6,
             train_seconds=30.0, wall_seconds=70.0, **kw)
    if recall is not None:
        r.update(recall_at_100=recall, recall_at_10=recall / 2, ndcg_at_10=recall / 3, oracle_recall_at_100=0.5931,
                 oracle_recall_at_10=0.2961)
    return r


ROWS = [
    row("full", "1", 1.0, 0, 0.520), row("full", "1", 1.0, 1, 0.518),
    row("hashed", "1/4", 0.25, 0, 0.500), row("hashed", "1/4", 0.25, 1, 0.502),
    row("unified", "1/4", 0.25, 0, 0.510), row("unified", "1/4", 0.25, 1, 0.511),  # clear lead: 0.0095 > spreads
    row("hashed", "1/16", 0.0625, 0, 0.470), row("hashed", "1/16", 0.0625, 1, 0.490),  # std 0.0141
    row("qr", "1/16", 0.0625, 0, 0.484), row("qr", "1/16", 0.0625, 1, 0.485),  # lead 0.0045 < hashed's std: a tie
    row("qr", "1/4", 0.25, 0, status="unreachable", reason="qr with 2 partitions spans ~2/sqrt(N) .. 1/2"),
    row("qr", "1/4", 0.25, 1, status="unreachable", reason="qr with 2 partitions spans ~2/sqrt(N) .. 1/2"),
]


def test_best_per_budget_ranks_higher_recall_first_and_marks_ties():
    task = TASKS["retrieval"]
    assert task.primary.name == "recall_at_100" and task.primary.higher_is_better
    methods, budgets, table = cells(ROWS, task)
    best = {r["budget"]: r for r in best_per_budget(methods, budgets, table, task)}
    assert best["1/4"]["best"].method == "unified" and best["1/4"]["runner_up"].method == "hashed" and not best["1/4"]["tie"]
    assert best["1/16"]["best"].method == "qr" and best["1/16"]["runner_up"].method == "hashed" and best["1/16"]["tie"]
    assert best["1/16"]["gap"] == pytest.approx(0.0045)


def test_report_text_for_retrieval():
    text = format_report(ROWS)
    assert "12 trials: 10 ok, 0 failed, 2 unreachable, 0 not run; seeds [0, 1]" in text
    assert "## Task `retrieval`" in text and "Full tables: recall@100 0.5190 ± 0.0014, 4,000,000 B." in text
    assert "Oracle (the data set's planted model, the ceiling): recall@100 0.5931, recall@10 0.2961." in text
    assert "### recall@100 (mean ± std over seeds): method x budget" in text
    assert "| qr | — | unreachable | 0.4845 ± 0.0007 |" in text
    assert "| budget | method | seeds ok | recall@100 | recall@10 | NDCG@10 | Δrecall@100 vs full |" in text
    assert "| 1/4 | unified | 2/2 | 0.5105 ± 0.0007 | 0.2552 ± 0.0004 | 0.1702 ± 0.0002 | -0.0085 | 1,000,000 |" in text
    assert "### Best method per budget (by recall@100)" in text
    assert "| 1/4 | unified | 0.5105 ± 0.0007 | hashed | 0.5010 ± 0.0014 | 0.0095 |" in text
    assert "| 1/16 | qr ≈ | 0.4845 ± 0.0007 | hashed | 0.4800 ± 0.0141 | 0.0045 |" in text
    assert "| qr-1_4-s0 | unreachable | qr with 2 partitions spans" in text


def test_report_of_both_tasks_and_the_plot_regenerate_identically(tmp_path):
    def ctr(method, budget, ratio, seed, auc):
        return {**{c: None for c in columns("ctr")}, "task": "ctr", "trial_id": trial_id(method, ratio, seed), "method": method,
                "budget": budget, "target_ratio": ratio, "seed": seed, "status": "ok", "auc": auc, "logloss": 1 - auc,
                "embedding_bytes": int(1000 * ratio), "achieved_ratio": ratio}

    ctr_rows = [ctr("full", "1", 1.0, 0, 0.80), ctr("hashed", "1/4", 0.25, 0, 0.78)]
    keys = list(dict.fromkeys(columns("ctr") + columns("retrieval")))
    rows = [{k: r.get(k) for k in keys} for r in ctr_rows + ROWS]  # a parquet holding both tasks
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "results.parquet")
    report, pareto = write_report(tmp_path)
    text = report.read_text()
    assert text.index("## Task `ctr`") < text.index("## Task `retrieval`") and "Oracle" not in text.split("## Task `retrieval`")[0]
    first = (report.read_bytes(), pareto.read_bytes())
    report.unlink()
    pareto.unlink()
    write_report(tmp_path)
    assert (report.read_bytes(), pareto.read_bytes()) == first
