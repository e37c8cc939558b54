"""Full-corpus retrieval metrics, both protocols, against brute-force references (ties, exclusions, thirds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.retrieval_metrics import (
    RetrievalEvaluator,
    evaluate_retrieval,
    exact_topk,
    popularity_thirds,
    popularity_vectors,
    topk_lower_index,
)


def integer_problem(seed: int, rows: int = 40, items: int = 30, dim: int = 3):
    """Small integer vectors: dot products are exact in float32 and full of ties."""
    rng = np.random.default_rng(seed)
    users = rng.integers(-2, 3, (rows, dim)).astype(np.float32)
    vectors = rng.integers(-1, 2, (items, dim)).astype(np.float32)
    targets = rng.integers(0, items, rows)
    lengths = rng.integers(0, 6, rows)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = rng.integers(0, items, int(indptr[-1]))
    # some rows list their own target among the excluded items: it must stay ranked
    for r in range(0, rows, 4):
        if lengths[r]:
            indices[indptr[r]] = targets[r]
    counts = rng.zipf(1.5, items).clip(max=1000) * (rng.random(items) < 0.8)
    return users, vectors, targets, indptr, indices, counts


def reference_order(scores: np.ndarray, removed: set[int]) -> list[int]:
    """Items by score descending, ties by lower index, without the removed ones."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return [int(j) for j in order if int(j) not in removed]


def reference_metrics(users, vectors, targets, ks, indptr=None, indices=None, excluded=(), counts=None):
    """One row at a time: sort the whole catalogue, find the target, count."""
    num_items = vectors.shape[0]
    rows = users.shape[0]
    hits = {k: [] for k in ks}
    ndcg = {k: [] for k in ks}
    ap = {k: [] for k in ks}
    rr = []
    covered = {k: set() for k in ks}
    for r in range(rows):
        scores = users[r].astype(np.float64) @ vectors.T.astype(np.float64)
        removed = set(int(j) for j in excluded)
        if indptr is not None:
            removed |= set(int(j) for j in indices[indptr[r] : indptr[r + 1]])
        removed.discard(int(targets[r]))
        order = reference_order(scores, removed)
        rank = order.index(int(targets[r])) + 1
        rr.append(1.0 / rank)
        for k in ks:
            hits[k].append(float(rank <= k))
            ndcg[k].append(1.0 / math.log2(1 + rank) if rank <= k else 0.0)
            ap[k].append(1.0 / rank if rank <= k else 0.0)
            covered[k].update(order[:k])
    out = {"rows": rows, "mrr": float(np.mean(rr))}
    eligible = num_items - len(set(excluded))
    for k in ks:
        out[f"recall@{k}"] = out[f"hit_rate@{k}"] = float(np.mean(hits[k]))
        out[f"ndcg@{k}"] = float(np.mean(ndcg[k]))
        out[f"precision@{k}"] = float(np.mean(hits[k])) / k
        out[f"map@{k}"] = float(np.mean(ap[k]))
        out[f"coverage@{k}"] = len(covered[k]) / eligible
    if counts is not None:
        thirds = reference_thirds(counts)
        for t, name in enumerate(("head", "torso", "tail")):
            sel = [r for r in range(rows) if thirds[targets[r]] == t]
            out[f"rows/{name}"] = len(sel)
            for k in ks:
                out[f"recall@{k}/{name}"] = float(np.mean([hits[k][r] for r in sel])) if sel else float("nan")
    return out


def reference_thirds(counts) -> list[int]:
    total = int(np.sum(counts))
    ranked = sorted(range(len(counts)), key=lambda j: (-int(counts[j]), j))
    out = [2] * len(counts)
    before = 0
    for j in ranked:
        if total and 3 * before < total:
            out[j] = 0
        elif total and 3 * before < 2 * total:
            out[j] = 1
        before += int(counts[j])
    return out


def assert_same(got: dict, want: dict):
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for key in want:
        if isinstance(want[key], float) and math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_exclusion", [False, True])
def test_metrics_match_brute_force(seed, with_exclusion):
    users, vectors, targets, indptr, indices, counts = integer_problem(seed)
    ks = (1, 5, 10, 50)  # 50 > V: every item is in the list
    kwargs = dict(indptr=indptr, indices=indices, excluded=[0]) if with_exclusion else {}
    want = reference_metrics(users, vectors, targets, ks, counts=counts, **kwargs)
    got = evaluate_retrieval(
        torch.from_numpy(users), torch.from_numpy(vectors), targets, ks=ks, item_counts=counts, chunk_size=7,
        **(dict(exclude_indptr=indptr, exclude_indices=indices, excluded_items=[0]) if with_exclusion else {}),
    )
    assert_same(got, want)


def test_chunking_and_batches_do_not_change_the_metrics():
    users, vectors, targets, indptr, indices, counts = integer_problem(3, rows=50)
    u, v = torch.from_numpy(users), torch.from_numpy(vectors)
    whole = evaluate_retrieval(u, v, targets, exclude_indptr=indptr, exclude_indices=indices, item_counts=counts)
    evaluator = RetrievalEvaluator(v, item_counts=counts, chunk_size=3)
    for a, b in [(0, 17), (17, 18), (18, 50)]:  # three "ranks" / batches, one of a single row
        sub_ptr = indptr[a : b + 1] - indptr[a]
        evaluator.update(u[a:b], targets[a:b], sub_ptr, indices[indptr[a] : indptr[b]])
    assert_same(evaluator.compute(), whole)


def test_merging_two_evaluators_by_sum_and_max_is_exact():
    users, vectors, targets, _, _, counts = integer_problem(4, rows=30)
    u, v = torch.from_numpy(users), torch.from_numpy(vectors)
    whole = evaluate_retrieval(u, v, targets, item_counts=counts)
    a, b = RetrievalEvaluator(v, item_counts=counts), RetrievalEvaluator(v, item_counts=counts)
    a.update(u[:11], targets[:11])
    b.update(u[11:], targets[11:])
    a.sums += b.sums  # what all_reduce(SUM) does
    a.covered = torch.maximum(a.covered, b.covered)  # all_reduce(MAX)
    assert_same(a.compute(), whole)


def test_topk_breaks_ties_by_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    values, idx = topk_lower_index(scores, 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert values.tolist() == [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]
    _, idx = topk_lower_index(scores, 5)
    assert idx.tolist() == [[1, 2, 4, 5, 3], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("seed", [0, 5])
def test_exact_topk_matches_brute_force_order(seed):
    users, vectors, targets, indptr, indices, _ = integer_problem(seed, rows=25, items=40)
    k = 12
    scores, items = exact_topk(
        torch.from_numpy(users), torch.from_numpy(vectors), k, exclude_indptr=indptr, exclude_indices=indices,
        excluded_items=[0, 1], targets=torch.from_numpy(targets), chunk_size=4,
    )
    for r in range(users.shape[0]):
        s = users[r].astype(np.float64) @ vectors.T.astype(np.float64)
        removed = {0, 1} | set(int(j) for j in indices[indptr[r] : indptr[r + 1]])
        removed.discard(int(targets[r]))
        want = reference_order(s, removed)[:k]
        assert items[r].tolist() == want
        assert scores[r].tolist() == [float(s[j]) for j in want]


def test_exact_topk_pads_when_exclusion_leaves_fewer_than_k_items():
    users = torch.ones(1, 2)
    vectors = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    scores, items = exact_topk(users, vectors, 3, exclude_indptr=np.array([0, 1]), exclude_indices=np.array([1]))
    assert items.tolist() == [[0, 2, -1]]
    assert scores[0, 2].item() == float("-inf")


def test_target_in_its_exclusion_set_stays_ranked():
    users = torch.ones(1, 1)
    vectors = torch.tensor([[1.0], [5.0], [3.0]])
    # item 1 (best) is the target and also excluded: still rank 1; item 2 excluded: gone
    got = evaluate_retrieval(users, vectors, [1], ks=[1], exclude_indptr=[0, 2], exclude_indices=[1, 2])
    assert got["recall@1"] == 1.0 and got["mrr"] == 1.0
    got = evaluate_retrieval(users, vectors, [0], ks=[1], exclude_indptr=[0, 2], exclude_indices=[1, 2])
    assert got["mrr"] == 1.0  # only items 0 remains besides the excluded ones
    got = evaluate_retrieval(users, vectors, [0], ks=[1])
    assert got["mrr"] == pytest.approx(1 / 3)


def test_mrr_uses_the_full_rank():
    users = torch.ones(1, 1)
    vectors = torch.arange(200, 0, -1, dtype=torch.float32)[:, None]  # item i has rank i + 1
    got = evaluate_retrieval(users, vectors, [149], ks=[10, 100])
    assert got["mrr"] == pytest.approx(1 / 150)
    assert got["recall@100"] == 0.0 and got["ndcg@100"] == 0.0


def test_popularity_thirds_split_interactions():
    # total 100; ranked 1 (50, before 0 < 33.3: head), 3 (30, before 50 < 66.7: torso),
    # 2 (10, before 80: tail), 4 (10, the tie ranks after 2, before 90: tail), then the zeros
    counts = np.array([0, 50, 10, 30, 10, 0, 0])
    assert popularity_thirds(counts).tolist() == [2, 0, 2, 1, 2, 2, 2]
    counts = np.array([10, 10, 10])  # ties by lower index: before = 0, 10, 20 of 30
    assert popularity_thirds(counts).tolist() == [0, 1, 2]
    assert popularity_thirds(np.zeros(4, np.int64)).tolist() == [2, 2, 2, 2]
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.integers(0, 20, rng.integers(1, 30))
        assert popularity_thirds(c).tolist() == reference_thirds(c)


def test_popularity_baseline_through_the_same_function():
    _, _, targets, indptr, indices, counts = integer_problem(6, rows=30)
    counts = counts.astype(np.int64) + (1 << 25)  # beyond float32's exact integers: float64 keeps them
    counts[3] += 1
    users, items = popularity_vectors(counts, len(targets))
    got = evaluate_retrieval(users, items, targets, ks=(5, 10), exclude_indptr=indptr, exclude_indices=indices, item_counts=counts)
    want = reference_metrics(users.numpy(), items.numpy(), targets, (5, 10), indptr, indices, counts=counts)
    assert_same(got, want)


def test_errors_name_the_problem():
    v = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="same D"):
        evaluate_retrieval(torch.zeros(3, 4), v, [0, 1, 2])
    with pytest.raises(ValueError, match="item indices in"):
        evaluate_retrieval(torch.zeros(1, 2), v, [5])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_retrieval(torch.full((1, 2), float("nan")), v, [0])
    with pytest.raises(ValueError, match="rows \\+ 1"):
        evaluate_retrieval(torch.zeros(2, 2), v, [0, 1], exclude_indptr=[0, 1], exclude_indices=[0])
    with pytest.raises(ValueError, match="ks"):
        RetrievalEvaluator(v, ks=[])


def test_training_items_as_exclusion_rows():
    from recsys.retrieval_metrics import exclusion_rows, user_item_csr

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 6, 50), rng.integers(0, 9, 50)
    csr = user_item_csr(users, items, num_users=7)  # user 6 has no items
    for u in range(7):
        assert csr[1][csr[0][u] : csr[0][u + 1]].tolist() == sorted(set(items[users == u].tolist()))
    rows = np.array([3, 6, 3, 0])
    indptr, indices = exclusion_rows(csr, rows)
    for r, u in enumerate(rows):
        assert indices[indptr[r] : indptr[r + 1]].tolist() == sorted(set(items[users == u].tolist()))
    with pytest.raises(ValueError, match="users must be indices"):
        user_item_csr([7], [0], num_users=7)


# -- protocol per_user -------------------------------------------------------------------------


def per_user_problem(seed: int, users: int = 30, items: int = 25, dim: int = 3):
    """Integer vectors (ties everywhere), 1..12 distinct held-out items per user (many above the
    smallest k), exclusion sets that sometimes hold a target, zero-count (never trained) items."""
    rng = np.random.default_rng(seed)
    u = rng.integers(-2, 3, (users, dim)).astype(np.float32)
    v = rng.integers(-1, 2, (items, dim)).astype(np.float32)
    targets = [sorted(rng.choice(items, size=int(rng.integers(1, 13)), replace=False).tolist()) for _ in range(users)]
    excluded = []
    for r, t in enumerate(targets):
        e = set(rng.choice(items, size=int(rng.integers(0, 6)), replace=False).tolist())
        if r % 3 == 0:
            e.add(t[0])  # a target in its own exclusion set stays ranked
        excluded.append(sorted(e))
    counts = rng.zipf(1.5, items).clip(max=1000) * (rng.random(items) < 0.7)  # ~30% never in training
    return u, v, targets, excluded, counts


def csr(lists):
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    return indptr, np.array([j for x in lists for j in x], np.int64)


def reference_per_user(users, vectors, targets, excluded, ks, always_excluded=(), counts=None):
    """One user at a time, the LightGCN / RecBole definitions written out."""
    per = {name: {k: [] for k in ks} for name in ("recall", "precision", "hit_rate", "ndcg", "map")}
    rr, covered = [], {k: set() for k in ks}
    pairs = []  # (target, position in the full order)
    for r in range(users.shape[0]):
        scores = users[r].astype(np.float64) @ vectors.T.astype(np.float64)
        t = set(targets[r])
        removed = (set(always_excluded) | set(excluded[r])) - t
        order = reference_order(scores, removed)
        positions = sorted(order.index(j) + 1 for j in t)
        rr.append(1.0 / positions[0])
        pairs += [(j, order.index(j) + 1) for j in t]
        for k in ks:
            hit_pos = [p for p in positions if p <= k]
            per["recall"][k].append(len(hit_pos) / len(t))
            per["precision"][k].append(len(hit_pos) / k)
            per["hit_rate"][k].append(float(bool(hit_pos)))
            ideal = sum(1 / math.log2(1 + p) for p in range(1, min(len(t), k) + 1))
            per["ndcg"][k].append(sum(1 / math.log2(1 + p) for p in hit_pos) / ideal)
            per["map"][k].append(sum((i + 1) / p for i, p in enumerate(hit_pos)) / min(len(t), k))
            covered[k].update(order[:k])
    out = {"rows": users.shape[0], "mrr": float(np.mean(rr))}
    eligible = vectors.shape[0] - len(set(always_excluded))
    for k in ks:
        for name in per:
            out[f"{name}@{k}"] = float(np.mean(per[name][k]))
        out[f"coverage@{k}"] = len(covered[k]) / eligible
    if counts is not None:
        thirds = reference_thirds(counts)
        for third, name in enumerate(("head", "torso", "tail")):
            sel = [p for j, p in pairs if thirds[j] == third]
            out[f"rows/{name}"] = len(sel)
            for k in ks:
                out[f"recall@{k}/{name}"] = float(np.mean([p <= k for p in sel])) if sel else float("nan")
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_exclusion", [False, True])
def test_per_user_matches_brute_force(seed, with_exclusion):
    from recsys.retrieval_protocols import evaluate_per_user

    users, vectors, targets, excluded, counts = per_user_problem(seed)
    ks = (1, 3, 10, 40)  # 40 > V
    tptr, tidx = csr(targets)
    kwargs = {}
    if with_exclusion:
        eptr, eidx = csr(excluded)
        kwargs = dict(exclude_indptr=eptr, exclude_indices=eidx, excluded_items=[0])
    want = reference_per_user(users, vectors, targets, excluded if with_exclusion else [[]] * len(targets), ks,
                              always_excluded=[0] if with_exclusion else (), counts=counts)
    got = evaluate_per_user(torch.from_numpy(users), torch.from_numpy(vectors), tptr, tidx, ks=ks, item_counts=counts,
                            chunk_size=7, **kwargs)
    assert_same(got, want)


def test_per_user_by_hand():
    # one user, order by score: item 0 (4), 1 (3), 2 (3, tie: after 1), 3 (1); held out: 2 and 3
    users = torch.ones(1, 1)
    vectors = torch.tensor([[4.0], [3.0], [3.0], [1.0]])
    from recsys.retrieval_protocols import evaluate_per_user

    got = evaluate_per_user(users, vectors, [0, 2], [2, 3], ks=[2, 3, 4])
    assert got["recall@2"] == 0.0 and got["hit_rate@2"] == 0.0
    assert got["recall@3"] == 0.5 and got["precision@3"] == pytest.approx(1 / 3) and got["hit_rate@3"] == 1.0
    assert got["ndcg@3"] == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert got["map@4"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert got["mrr"] == pytest.approx(1 / 3)  # the best-ranked target is at position 3
    # excluding items 0 and 1 (not targets) moves the targets to positions 1 and 2
    got = evaluate_per_user(users, vectors, [0, 2], [2, 3], ks=[2], exclude_indptr=[0, 2], exclude_indices=[0, 1])
    assert got["recall@2"] == 1.0 and got["ndcg@2"] == pytest.approx(1.0) and got["map@2"] == 1.0 and got["mrr"] == 1.0


def test_per_user_with_one_target_equals_per_row():
    users, vectors, targets, indptr, indices, counts = integer_problem(7)
    from recsys.retrieval_protocols import evaluate_per_user

    u, v = torch.from_numpy(users), torch.from_numpy(vectors)
    per_row = evaluate_retrieval(u, v, targets, exclude_indptr=indptr, exclude_indices=indices, item_counts=counts, ks=(1, 5, 10))
    per_user = evaluate_per_user(u, v, np.arange(len(targets) + 1), targets, exclude_indptr=indptr, exclude_indices=indices,
                                 item_counts=counts, ks=(1, 5, 10))
    assert_same(per_user, per_row)


def test_per_user_merging_and_scores_path():
    from recsys.retrieval_protocols import PerUserEvaluator, evaluate_per_user

    users, vectors, targets, excluded, counts = per_user_problem(4)
    u, v = torch.from_numpy(users), torch.from_numpy(vectors)
    tptr, tidx = csr(targets)
    eptr, eidx = csr(excluded)
    whole = evaluate_per_user(u, v, tptr, tidx, exclude_indptr=eptr, exclude_indices=eidx, item_counts=counts)
    a, b = PerUserEvaluator(v, item_counts=counts), PerUserEvaluator(v, item_counts=counts)
    a.update(u[:11], tptr[:12], tidx, eptr[:12], eidx)  # CSR slices keep their absolute offsets
    b.update_scores(u[11:].double() @ v.double().T, tptr[11:], tidx, eptr[11:], eidx)  # precomputed scores
    a.sums += b.sums
    a.covered = torch.maximum(a.covered, b.covered)
    assert_same(a.compute(), whole)


def test_per_user_errors_name_the_problem():
    from recsys.retrieval_protocols import evaluate_per_user

    v = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="user 1 of this batch has no held-out item"):
        evaluate_per_user(torch.zeros(2, 2), v, [0, 1, 1], [3])
    with pytest.raises(ValueError, match=r"item indices in \[0, 5\)"):
        evaluate_per_user(torch.zeros(1, 2), v, [0, 1], [5])
    with pytest.raises(ValueError, match="target_indptr: got 2 offsets for 2 rows"):
        evaluate_per_user(torch.zeros(2, 2), v, [0, 1], [0])


def test_metric_names_are_the_keys_of_both_protocols():
    from recsys.retrieval_metrics import metric_names
    from recsys.retrieval_protocols import evaluate_per_user

    v = torch.eye(3)
    names = set(metric_names([5, 20]))
    for got in (evaluate_retrieval(v, v, [0, 1, 2], ks=[5, 20], item_counts=np.ones(3, np.int64)),
                evaluate_per_user(v, v, [0, 1, 2, 3], [0, 1, 2], ks=[5, 20], item_counts=np.ones(3, np.int64))):
        assert {k for k in got if k != "rows" and not k.startswith("rows/")} == names
    assert {"recall@20", "ndcg@20", "precision@5", "map@20", "hit_rate@5", "mrr", "recall@20/tail"} <= names


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_lower_index_against_a_full_sort(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-3, 4, (50, 12)).astype(np.float64)  # ties at every cut
    scores[:5] = rng.normal(size=(5, 12))  # and rows without ties
    for k in (1, 4, 11, 12, 20):
        values, idx = topk_lower_index(torch.from_numpy(scores), k)
        for r in range(scores.shape[0]):
            want = reference_order(scores[r], set())[:k]
            assert idx[r].tolist() == want and values[r].tolist() == scores[r, want].tolist(), (k, r)
    # with a floor, only the picks above it must follow the rule
    values, idx = topk_lower_index(torch.from_numpy(scores), 4, floor=0.0)
    for r in range(scores.shape[0]):
        above = [j for j in reference_order(scores[r], set())[:4] if scores[r, j] > 0]
        assert idx[r].tolist()[: len(above)] == above
