"""The lookup benchmark runs end to end on a tiny schema and writes its JSON records."""

from __future__ import annotations

import json

from recsys.embeddings import bench


def test_bench_lookup_tiny(tmp_path):
    out = tmp_path / "lookup.json"
    argv = ["lookup", "--scale", "0.0005", "--batch", "64", "--steps", "1", "--methods", "hashed,qr", "--budgets", "1,16", "--out", str(out)]
    assert bench.main(argv) == 0
    records = json.loads(out.read_text())
    assert [(r["method"], r["budget"]) for r in records] == [("hashed", "1"), ("hashed", "1/16"), ("qr", "1"), ("qr", "1/16")]
    for r in records:
        assert r["lookups_per_s"] > 0 and r["fused_full_lookups_per_s"] > 0 and r["naive_lookups_per_s"] > 0
        assert 0 < r["achieved_ratio"] <= 1.0 and r["bytes"] > 0
        assert r["kernel_lookups_per_s"] > 0 and r["vs_kernel"] > 0 and r["limit_vs_fused_full"] > 0
        assert r["combine_path"].startswith("compiled (")  # the plan ran under DMP; it says which
