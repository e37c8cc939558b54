"""The index-kind registry: every kind builds, loads and answers through it; the 8-bit kinds keep no float32 copy;
search settings go with each call, never into the shared index."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serving.index_kinds import INDEX_KINDS, INDEX_REGISTRY, index_kind
from serving.retriever import BUILD_SETTINGS, SERVE_TIME_SETTINGS, Retriever, build_index, check_settings, resolve_index_settings
from serving.testing import recall_at_k, synthetic_catalogue


@pytest.fixture(scope="module")
def catalogue():
    return synthetic_catalogue("mixture", 4000, 16, 40, seed=3)


def test_every_kind_is_one_registry_entry_read_by_export_bundle_and_the_benches():
    from jobs import bench_serve, export
    from serving import bundle

    assert bundle.INDEX_KINDS == INDEX_KINDS == tuple(INDEX_REGISTRY)
    assert {"exact", "ivf", "ivf_sq8", "hnsw", "hnsw_sq8", "binary"} <= set(INDEX_KINDS)
    for parser in (bench_serve.build_parser(), export.build_parser()):
        (index_action,) = [a for a in parser._actions if a.dest == "index"]
        assert tuple(index_action.choices) == INDEX_KINDS
    for name, kind in INDEX_REGISTRY.items():
        assert BUILD_SETTINGS[name] == kind.setting_names and set(SERVE_TIME_SETTINGS[name]) <= set(kind.setting_names)
        for num_items in (2, 1000, 1_000_000):  # the defaults, resolved, are settings the kind accepts
            settings, _ = resolve_index_settings(name, None, num_items)
            kind.check(settings)
            assert sorted(settings) == sorted(kind.setting_names)


def test_unknown_kinds_settings_and_out_of_range_values_are_named():
    with pytest.raises(ValueError, match=r"index: got 'ivf_pq'; choose one of \['exact', 'ivf', 'ivf_sq8'"):
        index_kind("ivf_pq")
    with pytest.raises(ValueError, match=r"index setting m: got 1000; the hnsw_sq8 index takes m in \[1, 256\]"):
        check_settings("hnsw_sq8", {"m": 1000})
    with pytest.raises(ValueError, match=r"\['nlist'\] are not settings of the ivf_sq8 index; allowed: \['nprobe', 'rerank'\]"):
        check_settings("ivf_sq8", {"nlist": 8}, serve_time=True)
    settings, notes = resolve_index_settings("ivf_sq8", {"nlist": 900, "nprobe": 1000}, 500)
    assert settings["nlist"] == 500 and settings["nprobe"] == 500 and len(notes) == 2


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_every_kind_answers_exactly_scored_with_recall_against_exact(kind, catalogue):
    vectors, queries = catalogue
    _, ref = Retriever(vectors, "exact").search(queries, 100)
    settings = {"rerank": 2500} if kind == "binary" else None  # 16-bit sign codes: a weak candidate generator
    r = Retriever(vectors, kind, settings)
    exclude = [np.arange(1, 30)] * len(queries)
    scores, items = r.search(queries, 100, exclude)
    assert (items >= 30).all() and (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, vectors[items]), rtol=1e-6, atol=1e-6)
    _, items = r.search(queries, 100)
    assert recall_at_k(items, ref) >= 0.95, kind


def test_ivf_flat_scanning_every_cell_finds_the_exact_lists(catalogue):
    vectors, queries = catalogue
    scores, items = Retriever(vectors, "exact").search(queries, 100)
    ivf = Retriever(vectors, "ivf", {"nlist": 16, "nprobe": 16, "train_size": 4000})
    got_scores, got_items = ivf.search(queries, 100)
    np.testing.assert_array_equal(got_items, items)
    np.testing.assert_allclose(got_scores, scores, rtol=1e-6)  # the rerank's einsum rounds apart from the matmul


@pytest.mark.parametrize("flat, compact", [("ivf", "ivf_sq8"), ("hnsw", "hnsw_sq8")])
def test_the_8_bit_kinds_keep_no_float32_copy(flat, compact, catalogue):
    vectors, _ = catalogue
    dim = vectors.shape[1]
    sizes = {k: build_index(k, vectors, resolve_index_settings(k, None, len(vectors))[0]).bytes_per_item(vectors, None)["index"]
             for k in (flat, compact)}
    assert sizes[flat] >= 4 * dim  # the float32 copy
    assert sizes[flat] - sizes[compact] >= 3 * dim - 1, sizes  # 1 byte instead of 4 per dimension (HNSW: the graph stays)


@pytest.mark.parametrize("kind, key, values", [("ivf_sq8", "nprobe", (1, 64)), ("hnsw", "ef_search", (100, 600))])
def test_search_settings_go_with_each_call_not_into_the_shared_index(kind, key, values, catalogue):
    vectors, queries = catalogue
    base = Retriever(vectors, kind, {"nlist": 64, "nprobe": 8, "train_size": 4000} if kind == "ivf_sq8" else None)
    narrow, wide = (base.with_settings({key: v}) for v in values)
    assert narrow._index is wide._index is base._index
    expected = {name: r.search(queries, 100)[1] for name, r in (("narrow", narrow), ("wide", wide))}
    assert not np.array_equal(expected["narrow"], expected["wide"])  # the setting matters for this query set
    got, errors = {}, []

    def run(name, r):
        try:
            for _ in range(5):
                got.setdefault(name, []).append(r.search(queries, 100)[1])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, r)) for n, r in (("narrow", narrow), ("wide", wide))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in ("narrow", "wide"):
        for items in got[name]:
            np.testing.assert_array_equal(items, expected[name])
    if kind == "ivf_sq8":
        assert base._index.nprobe == 1  # faiss's own default: never written by a search


def test_a_bundle_without_the_file_its_kind_needs_is_refused_naming_it(tmp_path):
    from serving.bundle import BundleError, load_bundle
    from serving.testing import synthetic_bundle

    path = synthetic_bundle(tmp_path / "b", 500, dim=8, index="ivf_sq8", num_users=50)
    (path / "index.faiss").unlink()
    with pytest.raises(BundleError, match=r"index.faiss: missing; the bundle's ivf_sq8 index needs it"):
        load_bundle(path, verify=False)


def test_8_bit_ivf_with_a_rerank_margin_finds_what_the_float32_copy_finds(catalogue):
    vectors, queries = catalogue
    _, ref = Retriever(vectors, "exact").search(queries, 100)
    cells = {"nlist": 64, "nprobe": 64, "train_size": 4000}  # every cell: the float32 copy finds the exact lists
    flat = recall_at_k(Retriever(vectors, "ivf", cells).search(queries, 100)[1], ref)
    sq8 = Retriever(vectors, "ivf_sq8", {**cells, "rerank": 1})
    tight, margin = (recall_at_k(sq8.with_settings({"rerank": n}).search(queries, 100)[1], ref) for n in (1, 150))
    assert flat == 1.0 and tight < 1.0 and margin == 1.0, (tight, margin)  # 8-bit order near the cut, repaired by rerank
