"""`recsys train` with model.arch two_tower: 2 Ray workers on a small planted data set, resume, pre-flight errors.

    .venv/bin/python -m pytest tests/integration/test_train_two_tower.py -q
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from jobs import synth, train
from recsys.data import layout
from recsys.train.config import config_from_dict, load_config
from recsys.train.run import prepare

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "two_tower_synthetic_full.yaml"
SMALL = ["data.batch_size=256", "data.eval_batch_size=1024", "train.log_every=20", "train.epochs=3",
         "model.user_layers=[64, 32]", "model.item_layers=[64, 32]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_tower") / "ia"
    argv = ["interactions", "--out", str(out), "--rows", "20000", "--users", "500", "--items", "300", "--seed", "1",
            "--split", "leave_last_out"]
    assert synth.main(argv) == 0
    return out


def run(data: Path, run_dir: Path, *overrides: str) -> dict:
    assert train.main([str(CONFIG), f"data.path={data}", f"run_dir={run_dir}", *SMALL, *overrides]) == 0
    return json.loads((run_dir / "results.json").read_text())


def test_two_workers_beat_popularity_and_score_every_row(data, tmp_path):
    results = run(data, tmp_path / "run", "ray.num_workers=2", "train.checkpoint_every=30")
    rows = layout.read_manifest(data)["rows"]
    assert results["world_size"] == 2
    assert results["test_rows"] == rows["test"] and results["val_rows"] == rows["validation"]  # every row once
    for k in (10, 100):
        assert results[f"recall@{k}"] > results[f"popularity_recall@{k}"] + 0.05, k
        assert results[f"recall@{k}"] <= results[f"oracle_recall@{k}"] + 0.05, k
    for key in ("ndcg@10", "mrr", "coverage@100", "recall@10/tail", "hit_rate@50"):
        assert math.isfinite(results[key]), key
    curve = [loss for _, loss in results["loss_curve"]]
    assert curve[-1] < curve[0]
    # Both towers' tables are in the plan and were sharded.
    tables = {t["name"] for t in results["plan"]["tables"]}
    assert {"user_id__full", "item_id__full"} <= tables
    assert {r["table"] for r in results["sharding_plan"]} == tables
    # The real trained run (Ray checkpoint of a 2-worker DMP model) exports to a verified bundle
    # holding every catalogue item (the serving tests check vectors and top-k on their own runs).
    from serving.bundle import load_bundle
    from serving.export import export_bundle

    bundle = load_bundle(export_bundle(tmp_path / "run", tmp_path / "bundle"))
    assert bundle.num_items == pq.ParquetFile(layout.catalogue_path(data, "items")).metadata.num_rows
    towers = results["towers"]
    assert set(towers) == {"user", "item"}
    assert towers["user"]["embedding_bytes"] + towers["item"]["embedding_bytes"] == results["embedding_bytes"]
    assert towers["user"]["compression_ratio"] == pytest.approx(1.0)


def test_two_tower_resume_continues(data, tmp_path):
    run_dir = tmp_path / "run"
    first = run(data, run_dir, "train.max_steps=40", "train.checkpoint_every=20")
    again = run(data, run_dir, "train.max_steps=60", "train.checkpoint_every=20", "resume=true", "resume_allow_changes=[train.max_steps]")
    assert again["resumed_from_step"] == 40 and again["steps"] == 60
    assert math.isfinite(again["recall@10"]) and first["steps"] == 40


def spec_with(data: Path, tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((data / "features.yaml").read_text())
    edit(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_preflight_errors_name_the_problem(data, tmp_path):
    base = {"data": {"path": str(data), "batch_size": 256}, "model": {"arch": "two_tower", "user_layers": [32], "item_layers": [32]}}
    # A tower with no features.
    def no_user_tower(raw):
        for f in raw["features"]:
            if f.get("tower") == "user":
                f["tower"] = "context"
    cfg = config_from_dict({**base, "data": {**base["data"], "spec": str(spec_with(data, tmp_path, no_user_tower))}})
    with pytest.raises(ValueError, match=r"has no sparse feature with tower: user"):
        prepare(cfg)
    # An unknown tower feature named by the config.
    cfg = config_from_dict({**base, "model": {**base["model"], "item_id_feature": "movie"}})
    with pytest.raises(ValueError, match=r"model.item_id_feature: got 'movie'"):
        prepare(cfg)
    # An item feature that the catalogue lacks.
    root = tmp_path / "copy"
    shutil.copytree(data, root)
    items = layout.catalogue_path(root, "items")
    pq.write_table(pq.read_table(items).drop_columns(["item_tags"]), items)
    with pytest.raises(ValueError, match=r"items.parquet: item features \['item_tags'\] are not in the catalogue"):
        prepare(config_from_dict({**base, "data": {**base["data"], "path": str(root)}}))
    items.unlink()
    with pytest.raises(FileNotFoundError, match=r"items.parquet: no item catalogue"):
        prepare(config_from_dict({**base, "data": {**base["data"], "path": str(root)}}))


def test_shipped_two_tower_configs_load():
    for path in sorted((ROOT / "configs").glob("two_tower_*.yaml")):
        config = load_config(path)
        assert config.model.arch == "two_tower", path
        assert path.read_text().startswith(f"# recsys train configs/{path.name}"), path
