"""Early stopping: the decision on planted curves, its config checks, and the real loop in process.

    .venv/bin/python -m pytest tests/unit/train/test_early_stopping.py -q

The loop tests run :func:`recsys.train.loop.train_worker` in this process (one rank, gloo) with
``ray.train``'s three calls replaced by a recorder that keeps every checkpoint folder, and the
validation metric planted: so which step is best, when the run stops and which parameters the
test metrics see are known in advance and checked exactly.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from recsys.train.config import ConfigError, config_from_dict
from recsys.train.early_stopping import EarlyStopping
from recsys.train.loop import TrainState

# -- the decision -----------------------------------------------------------------------------


def decisions(es: EarlyStopping, curve: list[tuple[int, float]]) -> tuple[int | None, int | None]:
    """Feed a planted curve as the loop does; returns (best step, step it stopped at)."""
    for step, value in curve:
        es.observe(step, value)
        if es.exhausted:
            es.stopped_at = step
            break
    return es.best_step, es.stopped_at


PEAK = [(10, 0.60), (20, 0.70), (30, 0.69), (40, 0.71), (50, 0.705), (60, 0.70), (70, 0.69), (80, 0.80)]


def test_planted_curve_stops_after_patience_evaluations_without_improvement():
    es = EarlyStopping("val_auc", higher_is_better=True, patience=3)
    assert decisions(es, PEAK) == (40, 70)  # 50, 60, 70 do not beat 0.71; 80 is never seen
    assert es.best == 0.71 and es.curve == [[s, v] for s, v in PEAK[:7]]
    # min_delta: 0.71 does not beat 0.70 by more than 0.02, so the best stays at step 20.
    assert decisions(EarlyStopping("val_auc", True, patience=3, min_delta=0.02), PEAK) == (20, 50)
    # Patience longer than the dip: the late rise wins.
    assert decisions(EarlyStopping("val_auc", True, patience=4), PEAK) == (80, None)


def test_min_mode_and_non_finite_values():
    es = EarlyStopping("val_logloss", higher_is_better=False, patience=2)
    assert decisions(es, [(1, float("nan")), (2, 0.5), (3, 0.4), (4, 0.45), (5, float("inf")), (6, 0.1)]) == (3, 5)
    assert es.curve[0][0] == 1 and math.isnan(es.curve[0][1])  # a NaN is recorded, never the best


def test_resumed_mid_patience_takes_the_same_decision():
    whole = EarlyStopping("val_auc", True, patience=3)
    expected = decisions(whole, PEAK)
    first = EarlyStopping("val_auc", True, patience=3)
    decisions(first, PEAK[:5])  # one evaluation without improvement so far
    assert first.bad_evaluations == 1
    state = TrainState(step=50, early_stopping=first)
    again = TrainState.from_json(state.to_json())  # what a checkpoint's train_state.json holds
    assert isinstance(again.early_stopping, EarlyStopping) and again == state
    assert decisions(again.early_stopping, PEAK[5:]) == expected
    assert again.early_stopping == whole


# -- the config -------------------------------------------------------------------------------


def config(**train) -> dict:
    return {"data": {"path": "d"}, "model": {"arch": "dlrm"}, "train": train}


def test_config_names_the_metric_the_task_yields():
    es = config_from_dict(config(early_stopping={"metric": "val_auc", "patience": 3})).train.early_stopping
    assert (es.metric, es.mode, es.patience, es.min_delta) == ("val_auc", None, 3, 0.0)
    with pytest.raises(ConfigError, match=r"train.early_stopping.metric: got 'val_recall@20'; task 'ctr' \(dlrm\) yields \['val_auc', 'val_logloss'\]"):
        config_from_dict(config(early_stopping={"metric": "val_recall@20", "mode": "max", "patience": 3}))
    with pytest.raises(ConfigError, match=r"train.early_stopping.metric: got 'auc'; .*yields \['val_auc', 'val_logloss'\]"):
        config_from_dict(config(early_stopping={"metric": "auc", "patience": 3}))
    with pytest.raises(ConfigError, match=r"train.early_stopping.mode: got 'max' for val_logloss, where lower is better; use mode: min"):
        config_from_dict(config(early_stopping={"metric": "val_logloss", "mode": "max", "patience": 3}))
    with pytest.raises(ConfigError, match=r"train.early_stopping.patience"):
        config_from_dict(config(early_stopping={"metric": "val_auc", "patience": 0}))
    with pytest.raises(ConfigError, match=r"train.early_stopping.min_delta"):
        config_from_dict(config(early_stopping={"metric": "val_auc", "patience": 1, "min_delta": -1}))


def test_retrieval_metric_needs_its_cut_off_in_eval_ks():
    raw = {"data": {"path": "d"}, "model": {"arch": "two_tower", "eval_ks": [10, 50]},
           "train": {"early_stopping": {"metric": "val_recall@20", "mode": "max", "patience": 3}}}
    with pytest.raises(ConfigError, match=r"train.early_stopping.metric: got 'val_recall@20'; its cut-off 20 is not in model.eval_ks "
                                          r"\[10, 50\]: add it there, or watch another metric; task 'retrieval' \(two_tower\) yields \[.*'val_recall@10'"):
        config_from_dict(raw)
    ok = config_from_dict(raw, ["model.eval_ks=[10, 20, 50]"])
    assert ok.train.early_stopping.metric == "val_recall@20"


# -- the loop, in process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctr_data(tmp_path_factory) -> Path:
    from jobs import synth

    out = tmp_path_factory.mktemp("es") / "ctr"
    assert synth.main(["ctr", "--out", str(out), "--rows", "2000", "--seed", "5"]) == 0
    return out


class FakeRay:
    """``ray.train``'s context / report / get_checkpoint for one rank: each reported checkpoint is
    copied into its own folder (as Ray persists it); ``crash_after`` raises after that step's report."""

    def __init__(self, root: Path, crash_after: int | None = None):
        self.root, self.crash_after = root, crash_after
        self.reports: list[dict] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.latest: SimpleNamespace | None = None

    def report(self, metrics, checkpoint=None, **_):
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            folder = self.root / f"checkpoint_{len(self.reports):03d}"
            shutil.copytree(checkpoint.path, folder)
            self.checkpoints.append((metrics["step"], folder))
            self.latest = SimpleNamespace(path=str(folder))
        if self.crash_after is not None and metrics.get("step") == self.crash_after:
            raise KeyboardInterrupt("planted crash")

    def install(self, monkeypatch):
        import ray.train

        context = SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1, get_local_rank=lambda: 0,
                                  get_local_world_size=lambda: 1)
        monkeypatch.setattr(ray.train, "get_context", lambda: context)
        monkeypatch.setattr(ray.train, "report", self.report)
        monkeypatch.setattr(ray.train, "get_checkpoint", lambda: self.latest)


def dense_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """The dense parameters (they change every step): which step's parameters the model holds."""
    return torch.cat([p.detach().flatten().clone() for n, p in model.named_parameters() if "arch" in n])


class PlantedEvaluation:
    """Validation returns the planted curve (by evaluation index); every call records the parameters."""

    def __init__(self, values: list[float]):
        self.values, self.calls = values, 0
        self.seen: list[torch.Tensor] = []  # the parameters at each validation
        self.tested: torch.Tensor | None = None

    def __call__(self, w, model, reader):
        if reader is w.test:
            self.tested = dense_fingerprint(model)
            return {"auc": 0.5, "logloss": 0.7, "rows": 1}
        self.seen.append(dense_fingerprint(model))
        value = self.values[self.calls]
        self.calls += 1
        return {"auc": value, "logloss": 1 - value, "rows": 1}


def payload_for(data: Path, run_dir: Path, *overrides: str, resume_from: str | None = None) -> dict:
    from recsys.train.run import prepare

    cfg = config_from_dict(
        {"data": {"path": str(data), "batch_size": 200, "eval_batch_size": 400},
         "model": {"arch": "dlrm", "dense_layers": [16], "over_layers": [8, 1]},
         "train": {"epochs": 2, "eval_every": 2, "log_every": 100,
                   "early_stopping": {"metric": "val_auc", "mode": "max", "patience": 2}}},
        [f"run_dir={run_dir}", *overrides],
    )
    p = prepare(cfg)
    return {"config": p.config.model_dump(mode="json"), "spec": p.spec.to_dict(), "counts": p.counts,
            "files": {k: [str(f) for f in v] for k, v in p.files.items()}, "run_dir": str(p.run_dir),
            "data_root": str(data.resolve()), "ray_root": str(p.run_dir), "resume_from": resume_from}


# 1,600 training rows at batch 200: 8 steps per epoch, 16 in all; validation every 2 steps (2, 4, ..., 14).
CURVE = [0.60, 0.70, 0.65, 0.66, 0.90, 0.91, 0.92]  # best at step 4; steps 6 and 8 exhaust patience 2


def test_loop_stops_restores_the_best_step_and_tests_it(ctr_data, tmp_path, monkeypatch, process_group):
    from recsys.train import loop

    ray = FakeRay(tmp_path / "ray")
    ray.install(monkeypatch)
    planted = PlantedEvaluation(CURVE)
    monkeypatch.setattr(loop, "evaluate", planted)
    loop.train_worker(payload_for(ctr_data, tmp_path / "run"))

    final = ray.reports[-1]
    assert final["final"] and final["step"] == 8 and final["best_step"] == 4 and final["stopped_early"] is True
    assert planted.calls == 4  # steps 2, 4, 6, 8; no fresh final validation after the stop
    assert final["val_auc"] == 0.70  # the best evaluation's metrics, not the last one's
    # The test metrics were computed on the parameters of step 4, not on those of step 8.
    assert torch.equal(planted.tested, planted.seen[1]) and not torch.equal(planted.tested, planted.seen[3])
    # A checkpoint at each new best (steps 2 and 4) and the final one, which holds the best parameters.
    assert [step for step, _ in ray.checkpoints] == [2, 4, 8]
    from recsys.train.checkpoint import checkpoint_tensors, read_train_state

    best, last = (checkpoint_tensors(ray.checkpoints[i][1]) for i in (1, 2))
    assert all(torch.equal(best[k], last[k]) for k in best if k.startswith("model."))
    state = read_train_state(ray.checkpoints[-1][1])["early_stopping"]
    assert state["curve"] == [[2, 0.6], [4, 0.7], [6, 0.65], [8, 0.66]] and state["stopped_at"] == 8
    # Ray keeps the bests by score: a new best outranks every other checkpoint.
    scores = [r["early_stopping_score"] for r in ray.reports]
    best_scores = [score for r, score in zip(ray.reports, scores) if r["step"] in (2, 4) or r.get("final")]
    assert 0 < best_scores[0] <= best_scores[1] <= best_scores[2] and scores.count(0.0) == len(scores) - 3


def test_loop_resumed_mid_patience_stops_at_the_same_step_on_the_same_parameters(ctr_data, tmp_path, monkeypatch, process_group):
    from recsys.train import loop

    # Patience 3 and eval_every 1 (so a run can stop between two checkpoints of new bests):
    # best at step 3, steps 4, 5, 6 without improvement; a checkpoint every 2 steps.
    curve = [0.5, 0.6, 0.7, 0.69, 0.68, 0.67, 0.99]
    overrides = ("train.eval_every=1", "train.checkpoint_every=2", "train.early_stopping.patience=3")
    ray = FakeRay(tmp_path / "ray_a")
    ray.install(monkeypatch)
    whole = PlantedEvaluation(curve)
    monkeypatch.setattr(loop, "evaluate", whole)
    loop.train_worker(payload_for(ctr_data, tmp_path / "a", *overrides))
    assert (ray.reports[-1]["best_step"], ray.reports[-1]["step"]) == (3, 6)

    # The same run crashes right after the checkpoint of step 4 (one evaluation without improvement) ...
    crashed = FakeRay(tmp_path / "ray_b", crash_after=4)
    crashed.install(monkeypatch)
    monkeypatch.setattr(loop, "evaluate", PlantedEvaluation(curve))
    with pytest.raises(KeyboardInterrupt):
        loop.train_worker(payload_for(ctr_data, tmp_path / "b", *overrides))
    assert crashed.checkpoints[-1][0] == 4
    # ... and resumes from it: the count goes on (steps 5 and 6 complete patience 3).
    resumed = FakeRay(tmp_path / "ray_c")
    resumed.install(monkeypatch)
    rest = PlantedEvaluation(curve[4:])
    monkeypatch.setattr(loop, "evaluate", rest)
    shutil.rmtree(tmp_path / "b" / "ray", ignore_errors=True)
    loop.train_worker(payload_for(ctr_data, tmp_path / "b", *overrides, resume_from=str(crashed.checkpoints[-1][1])))
    final = resumed.reports[-1]
    assert (final["best_step"], final["step"], final["stopped_early"], final["resumed_from_step"]) == (3, 6, True, 4)
    assert rest.calls == 2
    # The best checkpoint (step 3) was written before the crash; the resumed run restored it.
    assert torch.equal(rest.tested, whole.tested)


def test_loop_that_never_runs_out_of_patience_still_tests_the_best_step(ctr_data, tmp_path, monkeypatch, process_group):
    from recsys.train import loop

    ray = FakeRay(tmp_path / "ray")
    ray.install(monkeypatch)
    # Evaluations at steps 2, 4, ..., 14 and the final one after step 16: the best is step 4's.
    planted = PlantedEvaluation([0.6, 0.9, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85])
    monkeypatch.setattr(loop, "evaluate", planted)
    loop.train_worker(payload_for(ctr_data, tmp_path / "run", "train.early_stopping.patience=7"))
    final = ray.reports[-1]
    assert (final["step"], final["best_step"], final["stopped_early"], final["val_auc"]) == (16, 4, False, 0.9)
    assert planted.calls == 8 and torch.equal(planted.tested, planted.seen[1])
    from recsys.train.checkpoint import read_train_state

    state = read_train_state(ray.checkpoints[-1][1])
    # The history holds what each evaluation measured (the last one too), not the restored best.
    assert [(r["step"], r["val_auc"]) for r in state["history"]][-2:] == [(14, 0.84), (16, 0.85)]
    assert state["early_stopping"]["curve"][-1] == [16, 0.85] and state["early_stopping"]["stopped_at"] is None
