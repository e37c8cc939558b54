"""Baselines: item-kNN against a dense numpy reference, ALS and selection deterministic, the shared evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.baselines import BASELINES, Interactions, evaluate_baselines, rank_fitted
from recsys.baselines.als import ALS
from recsys.baselines.itemknn import ItemKNN, item_neighbours
from recsys.baselines.popularity import Popularity
from recsys.retrieval_metrics import evaluate_retrieval, user_item_csr
from recsys.retrieval_protocols import evaluate_per_user, exclusion_for, split_queries


def interactions(seed: int, users: int = 40, items: int = 30, rows: int = 400) -> Interactions:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, rows)
    # a popularity skew, duplicates, and the last 3 items (and item 0, the OOV row) never trained
    i = np.minimum(rng.zipf(1.3, rows), items - 4) + rng.integers(0, 2, rows)
    i = np.clip(i, 1, items - 4)
    return Interactions(u, i, users, items)


def reference_itemknn(train: Interactions, k: int) -> np.ndarray:
    """Dense numpy: cosine over the binary matrix, top-k neighbours (ties: lower index), X @ S."""
    x = np.zeros((train.num_users, train.num_items))
    x[train.users, train.items] = 1.0
    co = x.T @ x
    n = np.sqrt(x.sum(axis=0))
    denom = np.outer(n, n)
    sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
    np.fill_diagonal(sim, 0.0)
    s = np.zeros_like(sim)
    for i in range(sim.shape[0]):
        order = np.lexsort((np.arange(sim.shape[1]), -sim[i]))[:k]
        keep = order[sim[i, order] > 0]
        s[i, keep] = sim[i, keep]
    return x @ s


@pytest.mark.parametrize("k", [1, 3, 10, 100])
def test_itemknn_matches_dense_reference(k):
    train = interactions(0)
    fitted = ItemKNN().fit(train, {"neighbours": k})
    want = reference_itemknn(train, k)
    got = fitted.scores(np.arange(train.num_users)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_itemknn_neighbour_ties_go_to_the_lower_index():
    # items 1, 2, 3 each co-occur once with item 0 and have one user each: equal similarity
    train = Interactions(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 2, 0, 3]), 3, 4)
    neighbours, sims = item_neighbours(train.matrix(np.float64), 2)
    assert neighbours[0].tolist() == [1, 2]  # 1, 2, 3 tie: the two lowest
    assert sims[0] == pytest.approx([1 / math.sqrt(3)] * 2)
    assert neighbours[1].tolist() == [0, -1]  # only one positive neighbour: the rest is padding


def test_popularity_scores_are_training_counts():
    train = interactions(1)
    scores = Popularity().fit(train, {}).scores(np.array([0, 5]))
    assert scores.shape == (2, train.num_items)
    assert scores[1].tolist() == np.bincount(train.items, minlength=train.num_items).astype(float).tolist()


def test_popularity_through_the_evaluator_equals_the_vector_path():
    from recsys.retrieval_metrics import popularity_vectors

    train = interactions(2)
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 40, 60), rng.integers(0, 30, 60)
    seen = user_item_csr(train.users, train.items, 40)
    queries = split_queries("per_row", users, items, 40, seen)
    counts = train.item_counts()
    got = rank_fitted(Popularity().fit(train, {}), queries, "per_row", 30, (5, 10), counts, [0])
    u, v = popularity_vectors(counts, len(users))
    want = evaluate_retrieval(u, v, items, ks=(5, 10), exclude_indptr=queries.block(0, 60)[1],
                              exclude_indices=queries.block(0, 60)[2], excluded_items=[0], item_counts=counts)
    assert got == want


def test_als_is_deterministic_given_the_seed_and_any_thread_count():
    train = interactions(3)
    params = {"factors": 8, "regularization": 0.1, "alpha": 5.0, "iterations": 5}
    a = ALS().fit(train, params, seed=7, num_threads=1)
    b = ALS().fit(train, params, seed=7, num_threads=2)
    c = ALS().fit(train, params, seed=8, num_threads=1)
    assert torch.equal(a.user_factors, b.user_factors) and torch.equal(a.item_factors, b.item_factors)
    assert not torch.equal(a.user_factors, c.user_factors)
    assert a.scores(np.array([1, 2])).shape == (2, train.num_items)
    # items never trained have zero factors: they score 0
    never = np.setdiff1d(np.arange(train.num_items), train.items)
    assert torch.all(a.item_factors[torch.as_tensor(never)] == 0)


@pytest.mark.parametrize("protocol", ["per_row", "per_user"])
def test_evaluate_baselines_selects_on_validation_and_is_deterministic(protocol, monkeypatch):
    # small grids keep the test fast; the selection rule is what is tested
    monkeypatch.setattr(ALS, "grid", ({"factors": 4, "regularization": 0.1, "alpha": 1.0, "iterations": 3},
                                      {"factors": 8, "regularization": 0.1, "alpha": 10.0, "iterations": 3}))
    train = interactions(4, users=60, items=40, rows=900)
    rng = np.random.default_rng(4)
    val_rows = (rng.integers(0, 60, 120), rng.integers(1, 40, 120))
    test_rows = (rng.integers(0, 60, 120), rng.integers(1, 40, 120))
    seen = {"train": user_item_csr(train.users, train.items, 60), "validation": user_item_csr(*val_rows, 60)}
    exclude = ("train", "validation")
    validation = split_queries(protocol, *val_rows, 60, exclusion_for("validation", exclude, seen.__getitem__))
    test = split_queries(protocol, *test_rows, 60, exclusion_for("test", exclude, seen.__getitem__))
    kwargs = dict(ks=(5, 20), select="recall@20", item_counts=train.item_counts(), seed=3, num_threads=1)
    lines = []
    first = evaluate_baselines(["als", "itemknn", "popularity"], train, validation, test, log=lines.append, **kwargs)
    again = evaluate_baselines(["als", "itemknn", "popularity"], train, validation, test, **kwargs)
    for name in ("als", "itemknn", "popularity"):
        assert first[name].validation == again[name].validation and first[name].test == again[name].test, name
        grid = first[name].grid
        best = max(range(len(grid)), key=lambda i: (grid[i]["recall@20"], -i))  # first of the best
        assert dict(first[name].params) == grid[best]["params"]
        assert first[name].validation["recall@20"] == grid[best]["recall@20"]
    # the chosen ALS, refitted by hand and ranked by the protocol's own function, gives the same test numbers
    als = ALS().fit(train, first["als"].params, seed=3, num_threads=1)
    if protocol == "per_user":
        want = evaluate_per_user(als.user_factors[torch.as_tensor(test.users)], als.item_factors, test.target_indptr, test.targets,
                                 ks=(5, 20), exclude_indptr=test.block(0, len(test))[2], exclude_indices=test.block(0, len(test))[3],
                                 excluded_items=[0], item_counts=train.item_counts())
    else:
        want = evaluate_retrieval(als.user_factors[torch.as_tensor(test.users)], als.item_factors, test.targets, ks=(5, 20),
                                  exclude_indptr=test.block(0, len(test))[1], exclude_indices=test.block(0, len(test))[2],
                                  excluded_items=[0], item_counts=train.item_counts())
    assert first["als"].test == pytest.approx(want, rel=1e-6, nan_ok=True)
    assert [line.split(":")[0] for line in lines] == ["baseline ALS", "baseline item-kNN", "baseline popularity"]


def test_errors_name_the_problem():
    train = interactions(5)
    q = split_queries("per_row", np.array([1]), np.array([2]), 40)
    with pytest.raises(ValueError, match=r"model.baselines: got \['knn'\]; allowed: \['als', 'itemknn', 'popularity'\]"):
        evaluate_baselines(["knn"], train, q, q, ks=(5,), select="recall@5")
    with pytest.raises(ValueError, match="selection metric 'recall@50'"):
        evaluate_baselines(["popularity"], train, q, q, ks=(5,), select="recall@50")
    with pytest.raises(ValueError, match="itemknn.neighbours: got 0"):
        ItemKNN().fit(train, {"neighbours": 0})
    with pytest.raises(ValueError, match=r"item indices 0..30 outside \[0, 30\)"):
        Interactions(np.array([0, 1]), np.array([0, 30]), 2, 30)
    with pytest.raises(ValueError, match="model.eval_protocol: got 'per_item'"):
        split_queries("per_item", np.array([1]), np.array([2]), 40)


def test_registry_names_and_labels():
    assert list(BASELINES) == ["als", "itemknn", "popularity"]
    assert [cls.label for cls in BASELINES.values()] == ["ALS", "item-kNN", "popularity"]
    for cls in BASELINES.values():
        assert cls.grid and all(isinstance(p, dict) for p in cls.grid)


def test_module_command_prints_the_baselines_of_a_data_set(tmp_path, capsys):
    from jobs import synth
    from recsys.baselines.__main__ import main

    data = tmp_path / "ia"
    assert synth.main(["interactions", "--out", str(data), "--rows", "3000", "--users", "100", "--items", "80", "--seed", "2"]) == 0
    capsys.readouterr()
    argv = [str(data), "--protocol", "per_user", "--exclude", "train,validation", "--baselines", "itemknn,popularity", "--ks", "5,20"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "baseline item-kNN: neighbours" in out and "per_user, excluded ['train', 'validation']" in out
    assert "item-kNN   test recall@20" in out and "popularity test recall@20" in out
    assert main(argv) == 0 and capsys.readouterr().out.splitlines()[-2:] == out.splitlines()[-2:]  # deterministic
    assert main([str(data), "--exclude", "validation"]) == 2
    assert "--exclude: got 'validation'; allowed: train, train,validation or none" in capsys.readouterr().err
    assert main([str(data), "--baselines", "svd"]) == 2
    assert "--baselines: got ['svd']" in capsys.readouterr().err
