"""The one task registry: architectures, metric names and directions, evaluation with its context,
and the typed keys of ``results.json``.

    .venv/bin/python -m pytest tests/unit/train/test_tasks.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.embeddings import compile_plan
from recsys.features.spec import DatasetSpec
from recsys.retrieval_metrics import RetrievalEvaluator
from recsys.train import sweep_config
from recsys.train.config import config_from_dict
from recsys.train.run import Prepared, checkpoint_config, results_of
from recsys.train.tasks import CTR, TASKS, EvalContext, Metric, Retrieval, Task, task_class, task_for

CTR_KEYS = ["auc", "logloss", "oracle_auc", "oracle_logloss", "val_auc", "val_logloss"]


def test_one_registry_every_arch_once_and_the_sweep_reads_it():
    archs = [a for t in TASKS.values() for a in t.archs]
    assert sorted(archs) == ["dcn", "dlrm", "two_tower"] and len(set(archs)) == len(archs)
    assert sweep_config.TASKS is TASKS and sweep_config.Metric is Metric
    assert type(task_for("dcn")) is CTR and task_class("two_tower") is Retrieval
    assert task_for("two_tower", "data/x").root == Path("data/x")
    with pytest.raises(ValueError, match=r"model.arch: got 'gpt'; no training task for it; tasks train \['dcn', 'dlrm', 'two_tower'\]"):
        task_for("gpt")
    # What a sweep ranks by comes with the task.
    assert CTR.primary == Metric("auc", True, "AUC") and Retrieval.primary.source == "recall@100"
    assert CTR.columns[:2] == (("auc", "auc"), ("logloss", "logloss"))


def test_a_new_task_is_one_class():
    class Clicks(Task):
        name = "clicks"
        archs = ("wide",)
        metrics = (Metric("loss", False, "loss"), Metric("acc", True, "accuracy"))
        extra = (("val_loss", "val_loss"),)

    assert Clicks.primary.name == "loss" and not Clicks.primary.higher_is_better
    assert Clicks.columns == (("loss", "loss"), ("acc", "acc"), ("val_loss", "val_loss"))
    # The contract is enforced at instantiation: a task missing a method names it.
    with pytest.raises(TypeError, match=r"abstract method.*evaluate"):
        Clicks()


def test_metric_names_are_what_evaluation_yields_with_their_direction():
    model = config_from_dict({"data": {"path": "d"}, "model": {"arch": "two_tower", "eval_ks": [5, 20]}}).model
    names = Retrieval.metric_names(model)
    computed = RetrievalEvaluator(torch.eye(3), [5, 20], item_counts=np.array([5, 3, 1])).compute()
    assert set(names) == {k for k in computed if k != "rows" and not k.startswith("rows/")}
    assert {"recall@20", "ndcg@5", "mrr", "recall@20/tail"} <= set(names)
    assert all(Retrieval.higher_is_better(f"val_{n}") for n in names)
    assert CTR.metric_names(None) == ("auc", "logloss")
    assert CTR.higher_is_better("val_auc") and not CTR.higher_is_better("val_logloss") and not CTR.higher_is_better("logloss")


def test_ctr_evaluate_is_exact_auc_and_logloss(process_group):
    from recsys import metrics

    class Batch:
        def __init__(self, logits, labels):
            self.logits, self.labels = logits, labels

        def to(self, device, non_blocking=False):
            return self

    class Model(torch.nn.Module):
        def forward(self, batch):
            return None, batch.logits

    class Reader:  # two padded batches: the padding rows (beyond `real`) are never scored
        def eval_batches(self):
            yield Batch(torch.tensor([2.0, -1.0, 1.5, 9.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])), 3
            yield Batch(torch.tensor([-3.0, 1.0]), torch.tensor([0.0, 1.0])), 2

    out = CTR().evaluate(Model(), Reader(), torch.device("cpu"), EvalContext(config=None, files={}, split="validation"))
    p = torch.sigmoid(torch.tensor([2.0, -1.0, 1.5, -3.0, 1.0])).numpy()
    y = np.array([1, 0, 0, 0, 1])
    assert out == {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p), "rows": 5}
    assert out["auc"] == pytest.approx(5 / 6)


# -- results.json -----------------------------------------------------------------------------


def prepared(arch: str, **train) -> Prepared:
    spec = DatasetSpec.model_validate({"name": "t", "features": [
        {"name": "label", "kind": "label"},
        {"name": "user_id", "kind": "sparse", "cardinality": 50, "embedding_dim": 8, "tower": "user"},
        {"name": "item_id", "kind": "sparse", "cardinality": 30, "embedding_dim": 8, "tower": "item"},
    ]})
    config = config_from_dict({"data": {"path": "d"}, "model": {"arch": arch}, "train": train})
    return Prepared(config, spec, {}, Path("run"), 100, {"oracle": {"auc": 0.8, "logloss": 0.4, "recall": {"10": 0.5}}}, [],
                    compile_plan(spec), rows={"train": 100, "validation": 10, "test": 10})


FINAL = {"final": True, "step": 40, "steps": 40, "samples": 4000, "test_rows": 10, "val_rows": 10, "train_seconds": 2.0,
         "samples_per_s": 2000.0, "world_size": 1, "resumed_from_step": None}


def test_results_are_typed_per_task():
    ctr = results_of(prepared("dlrm"), {**FINAL, "auc": 0.7, "logloss": 0.5, "val_auc": 0.71, "val_logloss": 0.49},
                     {"history": []}, 1.0, "ck")
    assert list(ctr)[:6] == CTR_KEYS  # exactly what CTR runs always wrote first (the sweeps read them)
    assert [ctr[k] for k in CTR_KEYS] == [0.7, 0.5, 0.8, 0.4, 0.71, 0.49]
    assert not {"best_step", "stopped_early", "early_stopping", "steps_per_s"} & set(ctr)
    metrics = {"recall@10": 0.3, "ndcg@10": 0.2, "mrr": 0.1, "val_recall@10": 0.31, "popularity_recall@10": 0.1}
    retrieval = results_of(prepared("two_tower"), {**FINAL, **metrics}, {}, 1.0, "ck")
    assert not set(CTR_KEYS) & set(retrieval)  # a retrieval run has no CTR keys
    assert {k: retrieval[k] for k in metrics} == metrics and retrieval["oracle_recall@10"] == 0.5
    assert not set(FINAL) - {"steps", "test_rows", "val_rows", "train_seconds", "samples_per_s", "world_size", "resumed_from_step"} & set(retrieval)


def test_early_stopping_results_and_checkpoint_retention():
    p = prepared("dlrm", early_stopping={"metric": "val_auc", "patience": 2})
    state = {"early_stopping": {"metric": "val_auc", "higher_is_better": True, "patience": 2, "min_delta": 0.0, "best": 0.7,
                                "best_step": 4, "best_checkpoint": "x", "bad_evaluations": 2,
                                "curve": [[2, 0.6], [4, 0.7], [6, 0.65], [8, 0.66]], "stopped_at": 8}}
    out = results_of(p, {**FINAL, "auc": 0.7}, state, 1.0, "ck")
    assert (out["best_step"], out["stopped_early"]) == (4, True)
    assert out["early_stopping"]["curve"] == [[2, 0.6], [4, 0.7], [6, 0.65], [8, 0.66]] and "best_checkpoint" not in out["early_stopping"]
    kept = checkpoint_config(p.config)
    assert (kept.num_to_keep, kept.checkpoint_score_attribute, kept.checkpoint_score_order) == (2, "early_stopping_score", "max")
    assert checkpoint_config(prepared("dlrm").config).checkpoint_score_attribute is None
