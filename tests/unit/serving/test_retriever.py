"""Retriever: exact equals recsys.retrieval_metrics.exact_topk (ties, exclusions); ANN recall against exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.retrieval_metrics import exact_topk
from serving.retriever import Retriever, build_index, default_index_settings, resolve_index_settings, sign_codes
from serving.testing import clustered_queries, clustered_vectors, recall_at_k, synthetic_catalogue


def tied_catalogue(seed=0, num_items=400, dim=8):
    """Vectors with many exact duplicates (so scores tie) and integer-valued queries."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, (40, dim)).astype(np.float32)
    vectors = base[rng.integers(0, 40, num_items)]
    queries = rng.integers(-2, 3, (30, dim)).astype(np.float32)
    return vectors, queries


@pytest.mark.parametrize("k", [1, 7, 100, 399, 400, 500])
def test_exact_is_exact_topk_with_the_lower_index_tie_rule(k):
    vectors, queries = tied_catalogue()
    scores, items = Retriever(vectors, "exact").search(queries, k)
    ref_scores, ref_items = exact_topk(torch.from_numpy(queries), torch.from_numpy(vectors), k, excluded_items=[0])
    valid = ref_items.numpy() >= 0
    kk = ref_items.shape[1]
    np.testing.assert_array_equal(items[:, :kk][valid], ref_items.numpy()[valid])
    np.testing.assert_array_equal(scores[:, :kk][valid], ref_scores.numpy()[valid])
    assert not (items == 0).any()  # the OOV row never comes back


def test_exclusions_leave_the_ranking_and_lists_shrink_only_when_items_run_out():
    vectors, queries = tied_catalogue(num_items=50)
    exclude = [np.array([3, 4, 5]), np.array([], np.int64), np.arange(1, 45)]
    r = Retriever(vectors, "exact")
    scores, items = r.search(queries[:3], 10, exclude)
    for row, ex in enumerate(exclude):
        assert not np.isin(items[row], ex).any()
    assert (items[2][:5] >= 45).all() and (items[2][5:] == -1).all() and np.isneginf(scores[2][5:]).all()
    mask = np.zeros((3, 50), bool)
    for row, ex in enumerate(exclude):
        mask[row, ex] = True
    indptr = np.cumsum([0] + [len(e) for e in exclude])
    ref_s, ref_i = exact_topk(torch.from_numpy(queries[:3]), torch.from_numpy(vectors), 10, exclude_indptr=indptr,
                              exclude_indices=np.concatenate(exclude), excluded_items=[0])
    np.testing.assert_array_equal(items, ref_i.numpy())


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "binary"])
def test_ann_results_are_exactly_scored_ordered_and_honour_exclusions(kind):
    vectors = clustered_vectors(3000, 16, clusters=32)
    queries = clustered_queries(vectors, 20)
    r = Retriever(vectors, kind)
    exclude = [np.arange(1, 200)] * 20
    scores, items = r.search(queries, 50, exclude)
    assert (items >= 200).all()
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, vectors[items]), rtol=1e-6, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


def _recalls(vectors, queries, kinds, settings=None):
    """kind -> recall@100 against exact; prints it with the build time and the batch-1 search time (not asserted)."""
    import time

    _, ref = Retriever(vectors, "exact").search(queries, 100)
    out = {}
    for kind in kinds:
        chosen = (settings or {}).get(kind) or default_index_settings(kind, len(vectors))
        start = time.perf_counter()
        retriever = Retriever(vectors, kind, chosen)
        build = time.perf_counter() - start
        _, got = retriever.search(queries, 100)
        start = time.perf_counter()
        for row in range(50):
            retriever.search(queries[row : row + 1], 100)
        out[kind] = recall_at_k(got, ref)
        print(f"{len(vectors):,} items, {kind} {chosen}: recall@100 {out[kind]:.4f}; build {build:.1f} s, "
              f"batch-1 search {(time.perf_counter() - start) / 50 * 1000:.2f} ms")
    return out


def test_ann_defaults_reach_095_recall_on_the_mixture_catalogue():
    """The default IVF / HNSW settings against exact on 20k items of the harder catalogue (overlapping
    power-law clusters, queries between clusters); the 100k run is the slow test below."""
    vectors, queries = synthetic_catalogue("mixture", 20_000, 32, 200)
    recall = _recalls(vectors, queries, ("ivf", "hnsw"))
    assert recall["ivf"] >= 0.95 and recall["hnsw"] >= 0.95


def test_the_clustered_catalogue_is_easy_and_the_mixture_is_not():
    """What the harder catalogue is for: at the same IVF settings the clustered one finds everything."""
    settings = {"ivf": {"nlist": 128, "nprobe": 32, "train_size": 20_000}}
    easy = _recalls(*synthetic_catalogue("clustered", 20_000, 32, 100), ("ivf",), settings)["ivf"]
    hard = _recalls(*synthetic_catalogue("mixture", 20_000, 32, 100), ("ivf",), settings)["ivf"]
    assert easy >= 0.99 and hard <= easy - 0.05


@pytest.mark.slow
def test_ann_recall_on_100k_items():
    """The README's index table: defaults on 100k mixture items (asserted), and the uniform bound (reported)."""
    vectors, queries = synthetic_catalogue("mixture", 100_000, 32, 500)
    recall = _recalls(vectors, queries, ("ivf", "hnsw", "binary"))
    assert recall["ivf"] >= 0.95 and recall["hnsw"] >= 0.95
    # 32-bit sign codes are weak candidates at D = 32: binary needs a wide rerank (README)
    assert _recalls(vectors, queries, ("binary",), {"binary": {"rerank": 20_000}})["binary"] >= 0.95
    _recalls(*synthetic_catalogue("uniform", 100_000, 32, 500), ("ivf", "hnsw"))


def test_serve_time_settings_and_their_errors():
    vectors = clustered_vectors(2000, 16, clusters=16)
    r = Retriever(vectors, "ivf", {"nlist": 32, "nprobe": 1, "train_size": 2000})
    queries = clustered_queries(vectors, 20)
    _, ref = Retriever(vectors, "exact").search(queries, 20)
    _, few = r.search(queries, 20)
    _, all_cells = r.with_settings({"nprobe": 32}).search(queries, 20)
    assert recall_at_k(all_cells, ref) == 1.0 >= recall_at_k(few, ref)
    assert r.settings["nprobe"] == 1  # the original is unchanged
    with pytest.raises(ValueError, match=r"\['nlist'\] are not settings of the ivf index; allowed: \['nprobe'\]"):
        r.with_settings({"nlist": 4})
    with pytest.raises(ValueError, match="ef_search: got 0; give a positive integer"):
        build_index("hnsw", vectors, {"m": 8, "ef_construction": 20, "ef_search": 0})
    with pytest.raises(ValueError, match="index: got 'lsh'"):
        Retriever(vectors, "lsh")


def test_hnsw_returns_k_items_even_above_ef_search():
    vectors = clustered_vectors(3000, 16, clusters=16)
    r = Retriever(vectors, "hnsw", {"m": 8, "ef_construction": 40, "ef_search": 10})
    _, items = r.search(clustered_queries(vectors, 5), 300)
    assert (items >= 1).all() and all(len(set(row)) == 300 for row in items.tolist())


def test_sign_codes_pack_the_sign_bits():
    v = np.array([[1.0, -1, 0.5, -0.1, 2, 3, -4, 5, 1, -1]], np.float32)
    assert sign_codes(v).tolist() == [[0b10101101, 0b10000000]]


@pytest.mark.parametrize("k", [1, 7, 100, 500])
def test_exact_in_blocks_keeps_the_tie_rule_across_block_edges(k):
    """Duplicated vectors tie across blocks of 37 items; integer values make every score exact."""
    vectors, queries = tied_catalogue()
    exclude = [np.arange(1, 60)] + [np.array([], np.int64)] * (len(queries) - 1)
    want = Retriever(vectors, "exact").search(queries, k, exclude)
    got = Retriever(vectors, "exact", chunk_rows=37).search(queries, k, exclude)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("kind", ["exact", "ivf", "binary"])
def test_vectors_kept_at_the_stored_precision_score_as_the_float32_copy(precision, kind):
    """The service keeps fp16 / int8 (+ scales) in memory; answers equal a search over the dequantised
    float32 copy bit for bit (exact: 140k items, three blocks, against one matmul over all)."""
    from serving.bundle import dequantize
    from serving.export import quantize_vectors

    num = 140_000 if kind == "exact" else 5_000
    vectors = clustered_vectors(num, 16, clusters=64)
    stored, scales = quantize_vectors(vectors, precision)
    queries = clustered_queries(vectors, 12)
    copy = dequantize(stored, scales)
    settings = {"nlist": 32, "nprobe": 4, "train_size": num} if kind == "ivf" else None
    index_bytes = build_index("ivf", copy, settings).index_bytes if kind == "ivf" else None
    kept = Retriever(stored, kind, settings, scales=scales, index_bytes=index_bytes)
    assert kept.vectors.dtype == stored.dtype and kept.vectors.nbytes == stored.nbytes  # no float32 copy held
    reference = Retriever(copy, kind, settings, index_bytes=index_bytes, chunk_rows=1 << 30)
    exclude = [np.arange(1, 30)] * len(queries)
    got, want = kept.search(queries, 100, exclude), reference.search(queries, 100, exclude)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    if kind == "exact":  # and the one-matmul float32 answer is exact_topk's
        ref_scores, ref_items = exact_topk(torch.from_numpy(queries), torch.from_numpy(copy), 100, excluded_items=[0],
                                           exclude_indptr=np.arange(0, 29 * len(queries) + 1, 29),
                                           exclude_indices=np.concatenate(exclude))
        np.testing.assert_array_equal(want[1], ref_items.numpy())


def test_impossible_ivf_settings_are_clamped_with_a_line_and_recorded():
    """Issue 18: nlist=100000 over 501 items was built with 501 cells while the manifest said 100000."""
    settings, notes = resolve_index_settings("ivf", {"nlist": 100_000, "nprobe": 200_000, "train_size": 10}, 501)
    assert settings == {"nlist": 501, "nprobe": 501, "train_size": 501}
    assert notes == [
        "index setting nlist=100000 is above the 501 items (k-means needs a point per cell): built with nlist=501",
        "index setting train_size=10 is outside [nlist, items] = [501, 501]: built with train_size=501",
        "index setting nprobe=200000 is above nlist=501 (there are no more cells to scan): built with nprobe=501",
    ]
    assert resolve_index_settings("ivf", {"nlist": 8, "nprobe": 2}, 501) == ({"nlist": 8, "nprobe": 2, "train_size": 501}, [])
    with pytest.raises(ValueError, match=r"index settings \['m'\] are not settings of the ivf index"):
        resolve_index_settings("ivf", {"m": 3}, 501)
    vectors = clustered_vectors(501, 16, clusters=8)
    index_bytes = build_index("ivf", vectors, {"nlist": 50, "nprobe": 4, "train_size": 501}).index_bytes
    # a bundle written before the clamp was recorded: its manifest says the nlist asked for
    r = Retriever(vectors, "ivf", {"nlist": 100_000, "nprobe": 4, "train_size": 501}, index_bytes=index_bytes)
    assert r.settings["nlist"] == 50 and r.notes == ["index setting nlist=100000 in the manifest; the index has nlist=50: serving with the index's"]
    wide = r.with_settings({"nprobe": 64})
    assert wide.settings["nprobe"] == 50 and "--index-setting nprobe=64 is above the index's nlist=50" in wide.notes[-1]


@pytest.mark.parametrize("kind,settings", [
    ("ivf", {"nlist": 501, "nprobe": 1, "train_size": 501}),  # one cell of ~1 item scanned: every query short
    ("ivf", {"nlist": 64, "nprobe": 1, "train_size": 501}),
    ("hnsw", {"m": 4, "ef_construction": 8, "ef_search": 1}),
    ("binary", {"rerank": 1}),
])
def test_answers_hold_k_items_whenever_the_catalogue_has_k_eligible(kind, settings):
    """Short ANN rows are answered again by exact search: k items (or every eligible one), exactly scored."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((501, 16)).astype(np.float32)
    queries = rng.standard_normal((12, 16)).astype(np.float32)
    r = Retriever(vectors, kind, settings)
    exclude = [rng.choice(np.arange(1, 501), size=n, replace=False) for n in (0, 10, 400, 450, 480, 495, 499, 500, 0, 3, 250, 100)]
    for k in (1, 20, 100, 500):
        scores, items = r.search(queries, k, exclude)
        for row, ex in enumerate(exclude):
            eligible = 500 - len(ex)
            got = items[row][items[row] >= 0]
            assert len(got) == min(k, eligible), (kind, k, row)
            assert not np.isin(got, ex).any() and (got >= 1).all() and len(set(got.tolist())) == len(got)
            np.testing.assert_allclose(scores[row][: len(got)], vectors[got] @ queries[row], rtol=1e-5, atol=1e-5)
    if kind == "ivf" and settings["nlist"] == 501:
        assert r.exact_fallbacks > 0
        _, ref = Retriever(vectors, "exact").search(queries, 100, exclude)
        np.testing.assert_array_equal(r.search(queries, 100, exclude)[1], ref)  # every row fell back: the exact answer
