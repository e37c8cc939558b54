"""recsys bench serve: a synthetic bundle, the real service in a subprocess, bounded levels, the bare search row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.bundle import load_bundle
from serving.loadgen import summarise
from serving.testing import synthetic_bundle


def test_synthetic_bundle_serves_meaningful_users(tmp_path):
    b = load_bundle(synthetic_bundle(tmp_path / "b", 5000, num_users=50))
    assert b.item_vectors.shape == (5000, 32) and b.manifest["source"]["synthetic"].startswith("5,000 clustered")
    assert np.allclose(np.linalg.norm(b.item_vectors, axis=1), 1.0, atol=1e-5)
    import torch

    u = b.user_tower(torch.tensor([3, 53, 7]), torch.ones(1, 3, dtype=torch.int32))
    assert torch.equal(u[0], u[1])  # ids hash into the table (mod 50)
    assert b.vocabs["item_id"].raw_by_index[1] == 1_000_001


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
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["HTTP /v1/retrieve", "HTTP /v1/retrieve", "bare index search", "tower + search, no HTTP"]
    assert [r["concurrency"] for r in rows[:2]] == [1, 4]
    assert all(r["errors"] == 0 and 0 < r["requests"] <= 150 for r in rows)
    assert "p99 ms" in capsys.readouterr().out
