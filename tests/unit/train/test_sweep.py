"""Sweep configs (all errors at once, dotted paths), every shipped bench config, and the report.

    .venv/bin/python -m pytest tests/unit/train/test_sweep.py -q
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.train.report import best_per_budget, cells, format_report, write_report
from recsys.train.sweep import COLUMNS, TASKS, SweepConfigError, budget_label, load_sweep_config, sweep_config_from_dict, trial_id

ROOT = Path(__file__).resolve().parents[3]
BENCH_CONFIGS = sorted((ROOT / "configs").glob("bench_*.yaml"))


def good(**changes) -> dict:
    raw = {
        "data": {"path": "data/synthetic_ctr"},
        "base": {"config": str(ROOT / "configs" / "ctr_synthetic_full.yaml"), "overrides": ["train.max_steps=10"]},
        "methods": ["full", "hashed", "unified"],
        "budgets": [1, "1/4", 0.0625],
        "seeds": [0, 1],
    }
    raw.update(changes)
    return raw


def test_budgets_take_numbers_and_fractions_and_the_base_config_gets_the_data_path():
    sweep, base = sweep_config_from_dict(good(), ["seeds=[3]", "options={unified: {num_chunks: 4}}"])
    assert sweep.budgets == [1.0, 0.25, 0.0625] and sweep.seeds == [3]
    assert [budget_label(b) for b in sweep.budgets] == ["1", "1/4", "1/16"]
    assert base.data.path == "data/synthetic_ctr" and base.train.max_steps == 10
    assert trial_id("multi_hash", 1 / 16, 2) == "multi_hash-1_16-s2" and budget_label(0.3) == "0.3"


def test_bad_sweep_configs_report_every_error_at_once_with_dotted_paths():
    raw = good(
        methods=["hashed", "lsh", "hashed"],
        budgets=[1, "1/0", 2, "half"],
        seeds=[],
        options={"qr": {"operation": "concat"}, "unified": {"num_chunks": 0, "num_buckets": 5}, "hashed": {"x": 1}},
        resources={"max_concurrent_trials": 0, "gpus": 1},
        lookup={"steps": 0},
        extra=1,
    )
    raw["base"]["overrides"] = ["train.epochs=0", "model.archh=dcn"]
    with pytest.raises(SweepConfigError) as err:
        sweep_config_from_dict(raw, ["data.pth=x"], source="bench_bad.yaml")
    text = str(err.value)
    for expected in (
        "methods[1]: got 'lsh'; allowed: 'full', 'hashed', 'multi_hash', 'qr', 'mixed_dim', 'unified', 'tt' or 'dhe'",
        "budgets[1]: got '1/0'; allowed: a ratio in (0, 1]",
        "budgets[2]: got 2; allowed: > 0.0 and <= 1.0",
        "budgets[3]: got 'half'",
        "seeds: got []; allowed: at least 1 item(s)",
        "resources.max_concurrent_trials: got 0; allowed: >= 1",
        "resources.gpus: unknown key",
        "lookup.steps: got 0; allowed: >= 1",
        "extra: unknown key",
        "data.pth: unknown key",
        "base.train.epochs: got 0; allowed: >= 1",
        "base.model.archh: unknown key",
    ):
        assert expected in text, (expected, text)
    assert "invalid sweep config bench_bad.yaml" in text


def test_option_and_duplicate_errors():
    with pytest.raises(SweepConfigError, match=r"methods\[2\]: got 'hashed'; each method may appear once"):
        sweep_config_from_dict(good(methods=["hashed", "unified", "hashed"]))
    with pytest.raises(SweepConfigError, match=r"seeds\[1\]: got 0; each seed may appear once"):
        sweep_config_from_dict(good(seeds=[0, 0]))
    raw = good(methods=["hashed", "unified"], options={"qr": {"operation": "concat"},
                                                       "unified": {"num_chunks": 0, "num_buckets": 5}, "hashed": {"x": 1}})
    with pytest.raises(SweepConfigError) as err:
        sweep_config_from_dict(raw)
    text = str(err.value)
    assert "options.qr" not in text  # options of a method not swept are checked, then unused
    assert "options.unified.num_chunks: got 0; allowed: >= 1" in text
    assert "options.unified.num_buckets: got 5; set by the budget solver" in text
    assert "options.hashed.x: unknown key" in text


def test_narrowing_methods_keeps_the_other_methods_options_unused():
    config, _ = sweep_config_from_dict(good(methods=["hashed"], options={"unified": {"num_chunks": 2}}))
    assert config.methods == ("hashed",) or list(config.methods) == ["hashed"]
    with pytest.raises(SweepConfigError, match=r"options.unified.num_chunks: got 0"):
        sweep_config_from_dict(good(methods=["hashed"], options={"unified": {"num_chunks": 0}}))


def test_base_config_must_leave_embeddings_to_the_sweep(tmp_path):
    with pytest.raises(SweepConfigError, match="base.config: .*ctr_synthetic_hashed.yaml sets embeddings.budget"):
        sweep_config_from_dict(good(base={"config": str(ROOT / "configs" / "ctr_synthetic_hashed.yaml")}))
    with pytest.raises(SweepConfigError, match="base.config: cannot read"):
        sweep_config_from_dict(good(base={"config": str(tmp_path / "missing.yaml")}))
    with pytest.raises(SweepConfigError, match="data: required key is missing"):
        sweep_config_from_dict({k: v for k, v in good().items() if k != "data"})


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_bench_config_loads_and_starts_with_its_command(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # base.config paths are relative to the repository root, where the commands run
    sweep, base = load_sweep_config(path)
    assert path.read_text().splitlines()[0] == f"# recsys bench compression configs/{path.name}"
    assert sweep.task in TASKS and base.data.path == sweep.data.path


def test_the_shipped_bench_configs_are_there():
    assert {p.name for p in BENCH_CONFIGS} >= {"bench_quick.yaml", "bench_ctr_synthetic.yaml", "bench_criteo.yaml", "bench_avazu.yaml",
                                              "bench_retrieval_synthetic.yaml"}


# -- report -----------------------------------------------------------------------------------


def row(method, budget, ratio, seed, status="ok", auc=None, **kw):
    r = {c: None for c in COLUMNS}
    r.update(task="ctr", trial_id=trial_id(method, ratio, seed), method=method, budget=budget, target_ratio=ratio, seed=seed,
             status=status, auc=auc, logloss=None if auc is None else 1 - auc, embedding_bytes=int(1000 * ratio),
             achieved_ratio=ratio, samples_per_s=1000.0, lookups_per_s=5e6, train_seconds=1.0, wall_seconds=9.0, **kw)
    return r


ROWS = [
    row("full", "1", 1.0, 0, auc=0.80), row("full", "1", 1.0, 1, auc=0.81),
    row("hashed", "1/4", 0.25, 0, auc=0.78), row("hashed", "1/4", 0.25, 1, auc=0.79),
    row("unified", "1/4", 0.25, 0, auc=0.785), row("unified", "1/4", 0.25, 1, auc=0.786),
    row("hashed", "1/16", 0.0625, 0, auc=0.75), row("hashed", "1/16", 0.0625, 1, auc=0.751),
    row("unified", "1/16", 0.0625, 0, auc=0.77), row("unified", "1/16", 0.0625, 1, auc=0.771),
    row("mixed_dim", "1/16", 0.0625, 0, status="unreachable", reason="achieved ratio 0.25 vs target 0.0625"),
    row("mixed_dim", "1/16", 0.0625, 1, status="unreachable", reason="achieved ratio 0.25 vs target 0.0625"),
    row("qr", "1/4", 0.25, 0, status="failed", reason="boom at step 3"), row("qr", "1/4", 0.25, 1, auc=0.7),
]


def test_best_per_budget_marks_ties_within_the_seed_spread():
    methods, budgets, table = cells(ROWS, TASKS["ctr"])
    assert methods == ["full", "hashed", "unified", "mixed_dim", "qr"]
    assert [b for b, _ in budgets] == ["1", "1/4", "1/16"]
    best = {r["budget"]: r for r in best_per_budget(methods, budgets, table, TASKS["ctr"])}
    assert best["1/4"]["best"].method == "unified" and best["1/4"]["runner_up"].method == "hashed"
    assert best["1/4"]["tie"]  # 0.7855 vs 0.785: lead 0.0005 < std of hashed 0.0071
    assert best["1/16"]["best"].method == "unified" and not best["1/16"]["tie"]  # lead 0.02 >> spreads
    assert table[("qr", "1/4")].ok == 1 and table[("qr", "1/4")].std("auc") is None


def test_report_text(tmp_path):
    text = format_report(ROWS)
    assert "14 trials: 11 ok, 1 failed, 2 unreachable, 0 not run; seeds [0, 1]" in text
    assert "| unified | — | 0.7855 ± 0.0007 | 0.7705 ± 0.0007 |" in text
    assert "| mixed_dim | — | — | unreachable |" in text
    assert "| 1/16 | unified | 2/2 | 0.7705 ± 0.0007 | 0.2295 ± 0.0007 | -0.0345 |" in text
    assert "| 1/4 | unified ≈ |" in text and "| 1/16 | unified |" in text
    assert "| qr-1_4-s0 | failed | boom at step 3 |" in text


def test_report_and_plot_regenerate_identically(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "results.parquet")
    report, pareto = write_report(tmp_path)
    first = (report.read_bytes(), pareto.read_bytes())
    assert first[1][:8] == b"\x89PNG\r\n\x1a\n" and len(first[1]) > 10_000
    report.unlink()
    pareto.unlink()
    write_report(tmp_path)
    assert (report.read_bytes(), pareto.read_bytes()) == first
    assert math.isfinite(ROWS[0]["auc"])


def test_trial_rows_say_what_each_folder_holds(tmp_path):
    import json

    from recsys.train.sweep import TrialPlan, trial_row

    def plan(tid, status="pending", reason=""):
        return TrialPlan(tid, "hashed", "1/4", 0.25, 0, status, reason, 0.25, 250, 1000)

    trials = tmp_path / "trials"
    (trials / "done").mkdir(parents=True)
    (trials / "done" / "results.json").write_text(json.dumps({"auc": 0.7, "logloss": 0.5, "compression_ratio": 0.25,
                                                               "embedding_bytes": 250, "steps": 3}))
    (trials / "done" / "lookup.json").write_text(json.dumps({"lookups_per_s": 1e6}))
    (trials / "broke").mkdir()
    (trials / "broke" / "failure.json").write_text(json.dumps({"reason": "loss is nan at step 3"}))
    rows = {tid: trial_row("ctr", plan(tid, *rest), tmp_path) for tid, *rest in
            [("done",), ("broke",), ("never",), ("far", "unreachable", "below the floor")]}
    assert rows["done"]["status"] == "ok" and rows["done"]["auc"] == 0.7 and rows["done"]["lookups_per_s"] == 1e6
    assert (rows["broke"]["status"], rows["broke"]["reason"]) == ("failed", "loss is nan at step 3")
    assert rows["never"]["status"] == "not_run"  # interrupted before it finished: the next run does it
    assert (rows["far"]["status"], rows["far"]["reason"], rows["far"]["run_dir"]) == ("unreachable", "below the floor", None)


# -- continuing a sweep with a changed config (issue 18) ---------------------------------------


@pytest.fixture(scope="module")
def ctr_data(tmp_path_factory) -> Path:
    from jobs import synth

    out = tmp_path_factory.mktemp("sweep_continue") / "ctr"
    assert synth.main(["ctr", "--out", str(out), "--rows", "3000", "--seed", "2"]) == 0
    return out


def ran(plans, sweep_dir: Path, sweep, *, old_results: bool = False) -> None:
    """The trial folders as `run_trial` leaves them (trial.json first, then results.json), by hand."""
    import json

    from recsys.train.sweep import RESULTS, TRIAL, TRIALS, write_plan

    write_plan(plans, sweep_dir, sweep)
    for p in plans:
        folder = sweep_dir / TRIALS / p.trial_id
        folder.mkdir(parents=True, exist_ok=True)
        if old_results:  # a trial of a sweep run before trial.json existed: results.json holds the config
            (folder / RESULTS).write_text(json.dumps({"auc": 0.7, "config": {**p.config, "resume": False}}))
        else:
            (folder / TRIAL).write_text(json.dumps({"config": p.config, "lookup": sweep.lookup.model_dump()}))
            (folder / RESULTS).write_text(json.dumps({"auc": 0.7}))


def continue_config(data: Path, overrides: list[str], **changes):
    raw = dict(data={"path": str(data)}, methods=["full", "hashed"], budgets=[1, "1/4"], seeds=[0],
               base={"config": str(ROOT / "configs" / "ctr_synthetic_full.yaml"), "overrides": overrides}, keep_full_below=100)
    return sweep_config_from_dict(good(**{**raw, **changes}))


def test_a_sweep_continued_with_changed_overrides_is_refused_with_the_keys(ctr_data, tmp_path):
    from recsys.train.sweep import SweepChangedError, plan_sweep

    quiet = dict(log=lambda *a, **k: None)
    sweep, base = continue_config(ctr_data, ["train.max_steps=300"])
    sweep_dir = tmp_path / "bq"
    plans = plan_sweep(sweep, base, sweep_dir, **quiet)
    ran(plans, sweep_dir, sweep)
    # The same sweep again: every trial is done, nothing to run.
    assert {p.status for p in plan_sweep(sweep, base, sweep_dir, **quiet)} == {"done"}
    # More seeds: the old trials are unchanged, the new ones pending.
    more, base_more = continue_config(ctr_data, ["train.max_steps=300"], seeds=[0, 1])
    statuses = {p.trial_id: p.status for p in plan_sweep(more, base_more, sweep_dir, **quiet)}
    assert {s for t, s in statuses.items() if t.endswith("-s0")} == {"done"} and {s for t, s in statuses.items() if t.endswith("-s1")} == {"pending"}
    # Other base.overrides: refused, naming the sweep's key and each trial's differing keys.
    changed, base_changed = continue_config(ctr_data, ["train.max_steps=10"])
    with pytest.raises(SweepChangedError) as err:
        plan_sweep(changed, base_changed, sweep_dir, **quiet)
    text = str(err.value)
    assert f"{len(plans)} trial(s) there ran with another config than this sweep gives them; continuing would mix results" in text
    assert 'sweep config: base.overrides: ["train.max_steps=300"] -> ["train.max_steps=10"]' in text
    assert "trial full-1-s0: train.max_steps: 300 -> 10." in text and "trial hashed-1_4-s0: train.max_steps: 300 -> 10." in text
    assert text.endswith("Give a new --out for the changed sweep, or continue it with the config its trials ran with")
    # Other lookup settings (they made each trial's lookup.json): refused too.
    timing, base_timing = continue_config(ctr_data, ["train.max_steps=300"], lookup={"steps": 9})
    with pytest.raises(SweepChangedError, match=r"lookup.steps: 5 -> 9"):
        plan_sweep(timing, base_timing, sweep_dir, **quiet)


def test_trials_of_an_older_sweep_are_compared_by_their_results_config(ctr_data, tmp_path):
    from recsys.train.sweep import SweepChangedError, plan_sweep

    quiet = dict(log=lambda *a, **k: None)
    sweep, base = continue_config(ctr_data, ["train.max_steps=300"])
    sweep_dir = tmp_path / "old"
    ran(plan_sweep(sweep, base, sweep_dir, **quiet), sweep_dir, sweep, old_results=True)
    assert {p.status for p in plan_sweep(sweep, base, sweep_dir, **quiet)} == {"done"}  # resume=false is not a change
    changed, base_changed = continue_config(ctr_data, ["train.max_steps=300", "optimizer.dense.lr=0.1"])
    with pytest.raises(SweepChangedError, match=r"trial full-1-s0: optimizer.dense.lr: 0.005 -> 0.1\."):
        plan_sweep(changed, base_changed, sweep_dir, **quiet)


def test_bench_compression_says_it_in_one_line(ctr_data, tmp_path, capsys):
    from jobs import cli
    from recsys.train.sweep import plan_sweep

    import yaml

    sweep, base = continue_config(ctr_data, ["train.max_steps=300"])
    sweep_dir = tmp_path / "cli"
    ran(plan_sweep(sweep, base, sweep_dir, log=lambda *a, **k: None), sweep_dir, sweep)
    path = tmp_path / "bench_x.yaml"
    path.write_text("# recsys bench compression bench_x.yaml\n" + yaml.safe_dump(sweep.model_dump(mode="json")))
    assert cli.main(["bench", "compression", str(path), "--out", str(sweep_dir), "--dry-run", "base.overrides=[train.max_steps=20]"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recsys bench: error: --out" in err and "train.max_steps: 300 -> 20" in err
