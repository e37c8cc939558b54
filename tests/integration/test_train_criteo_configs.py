"""The shipped ``ctr_criteo_*`` configs on a data set ingested from Criteo-format TSV.

    .venv/bin/python -m pytest tests/integration/test_train_criteo_configs.py -q

A few thousand lines in the real Kaggle layout (label, I1..I13, C1..C26 as 8-hex-digit ids, empty
fields) go through ``recsys ingest criteo``; every Criteo config must then pass the pre-flight
checks (budget solver included) and the qr one trains a few steps on 2 Ray workers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from jobs import cli, train
from recsys.train.config import load_config
from recsys.train.run import prepare

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]

# The Terabyte configs read the Terabyte spec (its cardinalities): `recsys plan` tests cover them.
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs").glob("ctr_criteo_*.yaml") if "terabyte" not in p.stem)
TINY = ["data.batch_size=256", "data.eval_batch_size=1024", "train.max_steps=4", "train.log_every=2",
        "train.eval_every=0", "train.checkpoint_every=2", "model.dense_layers=[32, 16]", "model.over_layers=[32, 1]"]


def criteo_lines(rows: int, seed: int = 0) -> list[str]:
    """Kaggle-layout lines: fields 0-9 few ids, 10-19 some thousands, 20-25 mostly unique; some empty."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        dense = ["" if rng.random() < 0.1 else str(int(rng.integers(-2, 500))) for _ in range(13)]
        ids = []
        for j in range(26):
            if rng.random() < 0.05:
                ids.append("")
                continue
            span = 20 if j < 10 else 3000 if j < 20 else 1 << 31
            ids.append(f"{int(rng.integers(0, span)) * 2654435761 % (1 << 32):08x}")
        lines.append("\t".join([str(int(rng.random() < 0.25)), *dense, *ids]))
    return lines


@pytest.fixture(scope="module")
def criteo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("criteo")
    src = root / "train.txt"
    src.write_bytes(("\n".join(criteo_lines(6000)) + "\n").encode("latin-1"))
    out = root / "ds"
    assert cli.main(["ingest", "criteo", str(src), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_criteo_config_passes_preflight(criteo, tmp_path, path):
    # The shipped batch (8192) is for the real data set; 6,000 fixture lines hold less than one.
    prepared = prepare(load_config(path, [f"data.path={criteo}", f"run_dir={tmp_path / 'run'}", "data.batch_size=512"]))
    assert len(prepared.spec.sparse) == 26 and len(prepared.spec.dense) == 13
    budget = prepared.config.embeddings.budget
    if budget is not None:
        assert prepared.notes and budget.method in prepared.notes[0]


def test_criteo_qr_config_trains_on_two_workers(criteo, tmp_path):
    run_dir = tmp_path / "run"
    config = Path(__file__).resolve().parents[2] / "configs" / "ctr_criteo_qr.yaml"
    assert train.main([str(config), f"data.path={criteo}", f"run_dir={run_dir}", *TINY]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 4 and results["world_size"] == 2
    assert math.isfinite(results["auc"]) and math.isfinite(results["logloss"])
    assert results["oracle_auc"] is None  # real data: no oracle
    assert results["compression_ratio"] < 0.5
    assert any(f["kind"] == "qr" for f in results["plan"]["features"])
