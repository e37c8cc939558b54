"""recsys bench serve: a synthetic bundle, the real service in a subprocess, bounded levels, the bare search row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.bundle import load_bundle
from serving.loadgen import summarise
from serving.testing import _mixture, mixture_queries, synthetic_bundle, synthetic_catalogue, uniform_vectors


def test_synthetic_bundle_serves_meaningful_users(tmp_path):
    b = load_bundle(synthetic_bundle(tmp_path / "b", 5000, num_users=50))
    assert b.item_vectors.shape == (5000, 32) and b.manifest["source"]["synthetic"].startswith("5,000 mixture")
    assert np.allclose(np.linalg.norm(b.item_vectors, axis=1), 1.0, atol=1e-5)
    import torch

    u = b.user_tower(torch.tensor([3, 53, 7]), torch.ones(1, 3, dtype=torch.int32))
    assert torch.equal(u[0], u[1])  # ids hash into the table (mod 50)
    np.testing.assert_allclose(u[:1].numpy(), mixture_queries(50, 32)[3:4], atol=1e-6)  # the catalogue's users
    assert b.vocabs["item_id"].raw_by_index[1] == 1_000_001


def test_synthetic_bundle_at_int8_stores_int8_with_scales(tmp_path):
    b = load_bundle(synthetic_bundle(tmp_path / "b", 3000, num_users=10, catalogue="uniform", precision="int8", index="ivf"))
    assert b.stored_vectors.dtype == np.int8 and b.item_scales.shape == (3000,)
    assert b.manifest["precision"]["item_vectors"] == "int8" and b.manifest["items"]["bytes_per_item"]["vectors"] == 36.0
    np.testing.assert_allclose(b.item_vectors, uniform_vectors(3000, 32), atol=0.5 / 127 + 1e-6)


def test_mixture_catalogue_is_unit_seeded_and_power_law():
    items, queries = synthetic_catalogue("mixture", 20_000, 16, 30, seed=4)
    again, _ = synthetic_catalogue("mixture", 20_000, 16, 30, seed=4)
    assert np.array_equal(items, again) and not np.array_equal(items, synthetic_catalogue("mixture", 20_000, 16, 30, seed=5)[0])
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5) and np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    centres, weights, _ = _mixture(16, 2048, 1.0, 1.0, 4)
    assert weights[0] / weights[99] == pytest.approx(100.0)  # cluster sizes ~ 1 / rank
    with pytest.raises(ValueError, match="catalogue: got 'easy'"):
        synthetic_catalogue("easy", 10, 4, 1)


def test_summarise_percentiles():
    r = summarise("x", 4, [0.001] * 98 + [0.01, 0.1], 2, 2.0)
    assert (r.requests, r.errors, r.p50_ms, r.qps) == (100, 2, 1.0, 50.0)
    assert r.p99_ms > 10


@pytest.mark.integration  # spawns the service process
def test_bench_serve_end_to_end(tmp_path, capsys):
    from jobs.bench import main

    out = tmp_path / "rows.json"
    assert main(["serve", "--synthetic-items", "3000", "--index", "hnsw", "--concurrency", "1,4", "--seconds", "1",
                 "--max-requests", "150", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["levels"]
    assert [r["name"] for r in rows] == ["HTTP /v1/retrieve", "HTTP /v1/retrieve", "bare index search", "tower + search, no HTTP"]
    assert [r["concurrency"] for r in rows[:2]] == [1, 4]
    assert all(r["errors"] == 0 and 0 < r["requests"] <= 150 and r["load_avg"] >= 0 for r in rows)
    assert 0.9 <= result["recall"] <= 1.0 and result["service_rss_mib"] > 50
    assert result["bundle"]["index"]["kind"] == "hnsw" and result["bundle"]["source"]["catalogue"] == "mixture"
    text = capsys.readouterr().out
    assert "p99 ms" in text and "recall@100 against exact" in text and "service RSS" in text


def test_serve_time_settings_of_the_serve_arguments():
    from serving.loadgen import serve_time_settings

    args = ["--max-batch=8", "--index-setting=ef_search=512", "--index-setting", "nprobe=3"]
    assert serve_time_settings(args) == {"ef_search": 512, "nprobe": 3}
