"""The training loop's pure parts: the schedule, the typed train state, the resume comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.train.checks import check_resume, check_splits, config_changes
from recsys.train.loop import Schedule, TrainState


def test_schedule_epoch_end_eval_and_checkpoints_skip_the_last_step():
    s = Schedule(total_steps=24, steps_per_epoch=12, log_every=5, eval_every=0, checkpoint_every=5)
    assert [t for t in range(1, 25) if s.evaluate(t)] == [12]
    assert [t for t in range(1, 25) if s.checkpoint(t)] == [5, 10, 15, 20]
    assert [t for t in range(1, 25) if s.log(t)] == [5, 10, 15, 20, 24]
    assert s.position(0) == (0, 0) and s.position(5) == (0, 5) and s.position(12) == (1, 0) and s.position(17) == (1, 5)
    s = Schedule(total_steps=10, steps_per_epoch=12, log_every=100, eval_every=4, checkpoint_every=0)
    assert [t for t in range(1, 11) if s.evaluate(t)] == [4, 8]
    assert not any(s.checkpoint(t) for t in range(1, 11))


def test_train_state_round_trips_and_records_each_config_once():
    state = TrainState(step=3, samples=300, history=[{"step": 2, "val_auc": 0.7}])
    state.record_config({"a": 1})
    state.record_config({"a": 1})
    state.step = 7
    state.record_config({"a": 2})
    again = TrainState.from_json(state.to_json() | {"unknown_later_key": 1})
    assert again == state
    assert [c["from_step"] for c in again.configs] == [3, 7]


def test_config_changes_ignore_locations_only():
    old = {"run_dir": "a", "resume": False, "train": {"epochs": 1, "seed": 0}, "ray": {"address": None}}
    new = {"run_dir": "b", "resume": True, "train": {"epochs": 2, "seed": 0}, "ray": {"address": "x"}, "resume_allow_changes": ["train"]}
    assert config_changes(old, new) == [("train.epochs", 1, 2)]


def test_check_resume_refuses_structure_and_needs_permission_for_the_rest():
    saved = {"config": {"model": {"arch": "dlrm"}, "train": {"epochs": 1}}, "spec": {"features": [{"name": "C1", "cardinality": 10}]}}
    cfg = {"model": {"arch": "dlrm"}, "train": {"epochs": 2}}
    with pytest.raises(ValueError, match=r"pass resume_allow_changes=\[train.epochs\]"):
        check_resume(Path("ck"), saved, cfg, saved["spec"], [])
    assert check_resume(Path("ck"), saved, cfg, saved["spec"], ["train"]) == [
        "resume: train.epochs changed from 1 to 2 (allowed by resume_allow_changes)"
    ]
    with pytest.raises(ValueError, match=r"model.arch: 'dlrm' -> 'dcn'"):
        check_resume(Path("ck"), saved, {**cfg, "model": {"arch": "dcn"}}, saved["spec"], ["model", "train"])
    with pytest.raises(ValueError, match=r"feature_spec.features\[C1\].cardinality: 10 -> 12"):
        check_resume(Path("ck"), saved, saved["config"], {"features": [{"name": "C1", "cardinality": 12}]}, [])


def test_check_splits_messages():
    with pytest.raises(ValueError, match="the test split has 0 rows"):
        check_splits({"train": 10, "validation": 1, "test": 0}, batch_size=2, num_workers=1, root="d")
    with pytest.raises(ValueError, match="the validation split has 1 rows, fewer than ray.num_workers 2"):
        check_splits({"train": 10, "validation": 1, "test": 5}, batch_size=2, num_workers=2, root="d")
    check_splits({"train": 10, "validation": 2, "test": 2}, batch_size=10, num_workers=2, root="d")


def test_spec_changes_are_named_by_feature():
    old = {"features": [{"name": "C1", "cardinality": 10, "compression": {"kind": "full"}}, {"name": "C2", "cardinality": 5}]}
    new = {"features": [{"name": "C1", "cardinality": 12, "compression": {"kind": "full"}}, {"name": "C2", "cardinality": 5}]}
    assert config_changes(old, new) == [("features[C1].cardinality", 10, 12)]


def test_mixed_dim_layout_is_written_into_the_resolved_spec():
    from recsys.embeddings import compile_plan
    from recsys.features.spec import DatasetSpec
    from recsys.train.run import _pin_mixed_dim

    spec = DatasetSpec.model_validate({"name": "t", "features": [
        {"name": "label", "kind": "label"},
        {"name": "c", "kind": "sparse", "cardinality": 10000, "embedding_dim": 16, "compression": {"kind": "mixed_dim", "num_blocks": 4}},
        {"name": "d", "kind": "sparse", "cardinality": 50, "embedding_dim": 8},
    ]})
    counts = {"c": np.sort(np.random.default_rng(0).zipf(1.2, 10000))[::-1].astype(np.int64)}
    notes: list[str] = []
    pinned, left = _pin_mixed_dim(spec, counts, notes)
    assert left == {}  # nothing left for the workers or the checkpoint to carry
    c = pinned.feature("c").compression
    assert c.block_boundaries == (10, 100, 1000) and len(c.block_dims) == 4 and c.block_dims[0] == 16
    # The checkpoint's spec alone rebuilds the same plan as the counts did.
    again = DatasetSpec.model_validate(pinned.to_dict())
    assert compile_plan(again).tables == compile_plan(spec, counts).tables
    assert compile_plan(again).total_bytes == compile_plan(spec, counts).total_bytes
    assert "c [16," in notes[0]
