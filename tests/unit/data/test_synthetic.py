"""The synthetic generators: determinism, oracle, skew, ranges, writer layout, CLI.

    .venv/bin/python -m pytest tests/unit/data/test_synthetic.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import cli
from recsys import metrics
from recsys.data import layout
from recsys.data.synthetic import hash_normal, scramble32, zipf_ranks
from recsys.data.synthetic_ctr import CtrGenerator, CtrSettings, ctr_true_probabilities, generate_ctr
from recsys.data.synthetic_interactions import InteractionModel, InteractionSettings, generate_interactions
from recsys.features.spec import builtin_spec, load_spec

# Small chunks exercise chunk boundaries that straddle the splits; a small pilot keeps tests fast.
SMALL = CtrSettings(chunk_rows=700, pilot_rows=5000)
ROWS = 3000


def read_split(root: Path, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in layout.split_files(root, split)])


@pytest.fixture(scope="module")
def ctr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ctr") / "data"
    generate_ctr(out, rows=ROWS, seed=11, settings=SMALL)
    return out


def data_files(root: Path) -> dict[str, bytes]:
    paths = sorted(p for p in root.rglob("*.parquet"))
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def test_ctr_same_seed_is_byte_identical_other_seed_differs(ctr_dir: Path, tmp_path: Path) -> None:
    generate_ctr(tmp_path / "again", rows=ROWS, seed=11, settings=SMALL)
    generate_ctr(tmp_path / "other", rows=ROWS, seed=12, settings=SMALL)
    assert data_files(tmp_path / "again") == data_files(ctr_dir)
    for split in layout.SPLITS:
        assert read_split(tmp_path / "again", split).equals(read_split(ctr_dir, split))
        assert not read_split(tmp_path / "other", split).equals(read_split(ctr_dir, split))


def test_ctr_oracle_matches_recomputed_true_probabilities(ctr_dir: Path) -> None:
    manifest = layout.read_manifest(ctr_dir)
    for key, split in (("oracle", "test"), ("oracle_validation", "validation")):
        p, labels = ctr_true_probabilities(ROWS, seed=11, split=split, settings=SMALL)
        written = read_split(ctr_dir, split).column("label").to_numpy()
        np.testing.assert_array_equal(labels, written)
        oracle = manifest[key]
        assert oracle["split"] == split and oracle["rows"] == p.size == manifest["rows"][split]
        assert oracle["auc"] == pytest.approx(metrics.auc(labels, p), abs=1e-12)
        assert oracle["logloss"] == pytest.approx(metrics.logloss(labels, p), abs=1e-12)
        assert oracle["base_rate"] == pytest.approx(labels.mean())


def test_ctr_planted_model_hits_targets() -> None:
    gen = CtrGenerator(builtin_spec("synthetic"), seed=0)
    table, p = gen.chunk(0, 30_000)
    labels = table.column("label").to_numpy()
    assert 0.23 < labels.mean() < 0.27
    assert 0.75 < metrics.auc(labels, p) < 0.85
    described = gen.describe()
    assert described["crosses"] and set(described["scales"]) == {"main", "cross", "dense"}
    json.dumps(described)  # manifest-ready


def test_ctr_raw_chunk_is_criteo_like() -> None:
    spec = builtin_spec("synthetic")
    table, _ = CtrGenerator(spec, seed=0, settings=CtrSettings(pilot_rows=5000)).chunk(0, 20_000)
    i2 = table.column("I2").to_numpy()
    i1 = table.column("I1").to_numpy()
    assert np.isnan(i1).mean() > 0.3 and (i2 < 0).any() and np.nanmax(table.column("I5").to_numpy()) > 1e4
    c7 = table.column("C7").to_numpy()  # 12,517 values, Zipf
    ids, counts = np.unique(c7, return_counts=True)
    top = np.sort(counts)[::-1][: max(1, ids.size // 100)]
    assert top.sum() / counts.sum() > 0.3  # top 1% of ids carry a large share
    assert c7.max() > spec.feature("C7").cardinality  # raw ids are hash-like, not ranks
    most_frequent = ids[np.argsort(-counts, kind="stable")[:10]]
    assert not np.array_equal(np.sort(most_frequent), np.sort(ids)[:10])  # not sorted by frequency


def test_ctr_output_layout_ranges_and_bags(ctr_dir: Path) -> None:
    manifest = layout.read_manifest(ctr_dir)
    resolved = load_spec(ctr_dir / "features.yaml")
    assert resolved == layout.dataset_spec(ctr_dir)
    assert manifest["rows"] == {"train": 2400, "validation": 300, "test": 300, "total": ROWS}
    assert manifest["split"]["method"] == "row_order"
    assert manifest["generator"]["kind"] == "ctr" and manifest["truncated_values"] == {"M1": 0, "M2": 0}
    # the generator's missing counters arrive as nulls (missing), never as NaN values (non-finite)
    assert set(manifest["nonfinite_dense"].values()) == {0} and sum(manifest["missing_dense"].values()) > 0
    input_spec = builtin_spec("synthetic")
    for split in layout.SPLITS:
        table = read_split(ctr_dir, split)
        for f in resolved.sparse:
            col = table.column(f.name).combine_chunks()
            if f.multi_valued:
                lengths = pc.list_value_length(col).to_numpy()
                assert lengths.max() <= f.max_length and (lengths == 0).any()
                col = pc.list_flatten(col)
            ids = col.to_numpy()
            assert ids.min() >= 0 and ids.max() < f.cardinality <= input_spec.feature(f.name).cardinality
        dense = np.stack([table.column(f.name).to_numpy() for f in resolved.dense])
        assert np.isfinite(dense).all() and dense.min() >= 0  # log1p(max(x, 0)), missing -> 0


def test_hashing_helpers() -> None:
    x = np.arange(1 << 16)
    assert np.unique(scramble32(x, 12345)).size == x.size  # bijection: no collisions
    z = hash_normal(7, np.arange(200_000))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    np.testing.assert_array_equal(hash_normal(7, np.array([5, 9])), z[[5, 9]])  # counter-based
    r = zipf_ranks(np.random.default_rng(0), 100_000, 10_000_000, 1.1)
    assert r.min() >= 1 and r.max() <= 10_000_000 and (r == 1).mean() > 0.05


def test_cli_ctr_runs_and_rejects_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["synth", "ctr", "--out", str(tmp_path / "d"), "--rows", "5000"]) == 0
    out = capsys.readouterr().out
    assert "oracle on test" in out and "AUC" in out and (tmp_path / "d" / layout.MANIFEST).exists()
    assert cli.main(["synth", "ctr", "--out", str(tmp_path / "e"), "--rows", "0"]) == 1
    assert "--rows 0" in capsys.readouterr().err


def test_interactions_deterministic_time_split_and_ranges(tmp_path: Path) -> None:
    kw = dict(rows=4000, users=300, items=500, settings=InteractionSettings(block_users=64))
    generate_interactions(tmp_path / "a", seed=5, **kw)
    generate_interactions(tmp_path / "b", seed=5, **kw)
    generate_interactions(tmp_path / "c", seed=6, **kw)
    assert data_files(tmp_path / "a") == data_files(tmp_path / "b")
    assert data_files(tmp_path / "a") != data_files(tmp_path / "c")
    root = tmp_path / "a"
    manifest = layout.read_manifest(root)
    spec = layout.dataset_spec(root)
    tables = {s: read_split(root, s) for s in layout.SPLITS}
    ts = {s: t.column("timestamp").to_numpy() for s, t in tables.items()}
    assert ts["train"].max() < ts["validation"].min() and ts["validation"].max() < ts["test"].min()
    assert (np.diff(np.concatenate(list(ts.values()))) > 0).all()
    for table in tables.values():
        assert (table.column("label").to_numpy() == 1.0).all()
        for f in spec.sparse:
            col = table.column(f.name).combine_chunks()
            if f.multi_valued:
                assert pc.list_value_length(col).to_numpy().max() <= f.max_length
                col = pc.list_flatten(col)
            ids = col.to_numpy()
            assert ids.min() >= 0 and ids.max() < f.cardinality
    oracle = manifest["oracle"]
    assert oracle["split"] == "test" and oracle["rows"] == 400
    assert 0 <= oracle["recall"]["10"] <= oracle["recall"]["100"] <= 1


def test_interactions_sampling_follows_planted_distribution() -> None:
    model = InteractionModel(seed=1, users=3, items=40, segments=2, categories=4, tags=8)
    user, item, top = model.sample(np.random.default_rng(0), 60_000)
    scores = model.scores(0, 3).astype(np.float64)  # (3, 40)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for u in range(3):
        freq = np.bincount(item[user == u], minlength=40) / (user == u).sum()
        assert np.abs(freq - probs[u]).max() < 0.02
        assert top[u, 0] == np.argmax(scores[u])


def test_interactions_side_features_carry_signal() -> None:
    model = InteractionModel(seed=2, users=2000, items=2000, segments=16, categories=50, tags=500)
    f = model.user_factors / np.linalg.norm(model.user_factors, axis=1, keepdims=True)
    cos = f[:200] @ f[:200].T
    same = model.user_segment[:200, None] == model.user_segment[None, :200]
    assert cos[same & ~np.eye(200, dtype=bool)].mean() > cos[~same].mean() + 0.3


def test_interactions_rejects_too_many_users(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid --users 30000: at most 20,000"):
        generate_interactions(tmp_path / "x", rows=100, users=30_000)
