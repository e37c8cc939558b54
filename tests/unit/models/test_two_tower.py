"""Two-tower model, sampled-softmax task (logQ, accidental hits, mixed negatives, SSL), serving module."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.data.catalogue import ItemCatalogue
from recsys.features import spec_from_dict
from recsys.models.two_tower import (
    StreamingFrequencyEstimator,
    TwoTowerConfig,
    TwoTowerRetrieval,
    TwoTowerTask,
    build_tower_collections,
    build_two_tower_model,
    build_two_tower_task,
    embed_items,
    full_softmax_loss,
    sampled_softmax_loss,
)
from recsys.retrieval_metrics import evaluate_retrieval, exact_topk, popularity_vectors

NUM_USERS, NUM_ITEMS, NUM_TAGS = 40, 30, 12  # cardinalities (index 0 = OOV)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: intra-op threads only add contention on a shared machine (10x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_spec(item_cardinality=NUM_ITEMS, shared_group=False):
    item_compression = {"kind": "full"} if item_cardinality != "raw" else {"kind": "hashed", "num_buckets": 64}
    segment_compression, tag_compression = {"kind": "full"}, {"kind": "qr", "num_collisions": 4}
    groups = []
    if shared_group:
        segment_compression = tag_compression = {"kind": "unified", "group": "g"}
        groups = [{"name": "g", "num_buckets": 16, "num_chunks": 2, "num_tables": 1}]
    features = [
        {"name": "label", "kind": "label"},
        {"name": "user_id", "kind": "sparse", "cardinality": NUM_USERS, "tower": "user", "embedding_dim": 8},
        {"name": "user_segment", "kind": "sparse", "cardinality": 5, "tower": "user", "embedding_dim": 8, "compression": segment_compression},
        {"name": "item_id", "kind": "sparse", "cardinality": item_cardinality, "tower": "item", "embedding_dim": 8, "compression": item_compression},
        {"name": "item_tags", "kind": "sparse", "cardinality": NUM_TAGS, "max_length": 3, "pooling": "mean", "tower": "item",
         "embedding_dim": 8, "compression": tag_compression},
        {"name": "ctx", "kind": "sparse", "cardinality": 7, "embedding_dim": 4},
    ]
    return spec_from_dict({"name": "tiny_tt", "features": features, "groups": groups})


def tiny_catalogue(seed: int = 0) -> ItemCatalogue:
    """Row i = item i (row 0 the OOV row, no tags); tags random lists."""
    rng = np.random.default_rng(seed)
    tags = [[] if i == 0 else rng.integers(1, NUM_TAGS, rng.integers(0, 4)).tolist() for i in range(NUM_ITEMS)]
    table = pa.table({"item_id": pa.array(np.arange(NUM_ITEMS), pa.int64()), "item_tags": pa.array(tags, pa.list_(pa.int64()))})
    return ItemCatalogue.from_table(table, ["item_id", "item_tags"])


def random_batch(catalogue: ItemCatalogue, batch: int = 12, seed: int = 0, duplicates: bool = True) -> Batch:
    """Users, their items with the catalogue's tags, a context feature (ignored by the towers)."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(1, NUM_USERS, (batch,), generator=g)
    items = torch.randint(1, 6 if duplicates else NUM_ITEMS, (batch,), generator=g)  # few items: accidental hits
    if not duplicates:
        items = torch.randperm(NUM_ITEMS - 1, generator=g)[:batch] + 1
    item_kjt = catalogue.kjt(items).to_dict()
    per_key = {
        "user_id": (users, torch.ones(batch, dtype=torch.int32)),
        "user_segment": (users % 5, torch.ones(batch, dtype=torch.int32)),
        "item_id": (item_kjt["item_id"].values(), item_kjt["item_id"].lengths()),
        "item_tags": (item_kjt["item_tags"].values(), item_kjt["item_tags"].lengths()),
        "ctx": (torch.randint(0, 7, (batch,), generator=g), torch.ones(batch, dtype=torch.int32)),
    }
    keys = ["user_id", "user_segment", "item_id", "item_tags", "ctx"]  # spec order
    kjt = KeyedJaggedTensor(keys=keys, values=torch.cat([per_key[k][0] for k in keys]),
                            lengths=torch.cat([per_key[k][1].to(torch.int32) for k in keys]), stride=batch)
    return Batch(dense=torch.zeros(batch, 0), sparse=kjt, labels=torch.ones(batch))


def naive_loss(user, item, item_ids, temperature, log_q=None, negatives=None, negative_ids=None, negative_log_q=None, mask=True):
    """Row by row: build the candidate list explicitly, drop accidental hits, log-softmax."""
    total = 0.0
    candidates = [(item[j], int(item_ids[j]), None if log_q is None else float(log_q[j]), j) for j in range(len(item))]
    if negatives is not None:
        candidates += [(negatives[m], int(negative_ids[m]), None if log_q is None else float(negative_log_q[m]), None)
                       for m in range(len(negatives))]
    for i in range(len(user)):
        logits, positive = [], None
        for vec, cid, lq, j in candidates:
            if mask and cid == int(item_ids[i]) and j != i:
                continue
            z = float(user[i] @ vec) / temperature - (lq if lq is not None else 0.0)
            if j == i:
                positive = len(logits)
            logits.append(z)
        m = max(logits)
        log_z = m + math.log(sum(math.exp(z - m) for z in logits))
        total += log_z - logits[positive]
    return total / len(user)


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("with_log_q", [True, False])
@pytest.mark.parametrize("num_negatives", [0, 5])
def test_sampled_softmax_matches_naive_reference(mask, with_log_q, num_negatives):
    g = torch.Generator().manual_seed(1)
    batch, dim = 9, 4
    user = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1)
    item = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1)
    item_ids = torch.tensor([3, 1, 3, 7, 1, 1, 2, 9, 4])  # duplicates: accidental hits
    log_q = torch.randn(batch, generator=g) if with_log_q else None
    negatives = negative_ids = negative_log_q = None
    if num_negatives:
        negatives = torch.nn.functional.normalize(torch.randn(num_negatives, dim, generator=g), dim=1)
        negative_ids = torch.tensor([3, 8, 1, 5, 3])  # hits on rows' own items too
        negative_log_q = torch.randn(num_negatives, generator=g) if with_log_q else None
    got = sampled_softmax_loss(user, item, item_ids, 0.2, log_q, negatives, negative_ids, negative_log_q, mask)
    want = naive_loss(user, item, item_ids, 0.2, log_q, negatives, negative_ids, negative_log_q, mask)
    assert got.item() == pytest.approx(want, rel=1e-5)


def counts_for_tests():
    counts = np.arange(NUM_ITEMS, dtype=np.int64)[::-1].copy()
    counts[0] = 0  # the OOV row: clamped to 1
    return counts


@pytest.mark.parametrize("num_negatives", [0, 7])
def test_task_loss_is_the_logq_corrected_reference(num_negatives):
    torch.manual_seed(0)
    spec, catalogue = tiny_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(16, 8), item_layers=(8,), num_mixed_negatives=num_negatives)
    model = build_two_tower_model(config, spec)
    counts = counts_for_tests()
    task = build_two_tower_task(config, model, spec, counts={"item_id": counts}, catalogue=catalogue, seed=3)
    batch = random_batch(catalogue)
    loss, out = task(batch)

    item_ids = batch.sparse["item_id"].values()
    p = np.maximum(counts, 1) / np.maximum(counts, 1).sum()
    n_uniform = NUM_ITEMS - 1  # rows 1..V-1: the OOV row is never sampled
    q = lambda ids: np.log(len(item_ids) * p[ids.numpy()] + num_negatives / n_uniform)  # noqa: E731
    negatives = negative_ids = negative_log_q = None
    if num_negatives:
        rows = catalogue.sample(num_negatives, torch.Generator().manual_seed(3))  # the task's draw
        negative_ids = rows
        with torch.no_grad():
            negatives = model.item_embeddings(catalogue.kjt(rows))
        negative_log_q = q(rows)
    want = naive_loss(out.user, out.item, item_ids, config.temperature, q(item_ids), negatives, negative_ids, negative_log_q)
    assert loss.item() == pytest.approx(want, rel=1e-4)
    assert out.ssl_loss.item() == 0.0 and out.main_loss.item() == pytest.approx(loss.item())


def test_full_softmax_task_is_the_catalogue_softmax_reference():
    """Every catalogue item but the OOV row is a candidate; the batch's own items are looked up in
    the same catalogue embedding; no logQ although the config keeps logq_correction on."""
    torch.manual_seed(0)
    spec, catalogue = tiny_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(16, 8), item_layers=(8,), loss="full_softmax", temperature=0.2)
    model = build_two_tower_model(config, spec)
    task = build_two_tower_task(config, model, spec, counts={"item_id": counts_for_tests()}, catalogue=catalogue)
    batch = random_batch(catalogue)
    loss, out = task(batch)
    loss.backward()

    item_ids = batch.sparse["item_id"].values()
    with torch.no_grad():
        vectors = model.item_embeddings(catalogue.kjt(torch.arange(NUM_ITEMS)))  # (V, D)
    want = 0.0
    for i in range(len(item_ids)):
        logits = [float(out.user[i] @ vectors[j]) / 0.2 for j in range(1, NUM_ITEMS)]  # row 0 never a candidate
        m = max(logits)
        want += m + math.log(sum(math.exp(z - m) for z in logits)) - logits[int(item_ids[i]) - 1]
    assert loss.item() == pytest.approx(want / len(item_ids), rel=1e-4)
    assert torch.allclose(out.item, vectors[item_ids], atol=1e-6)
    # Every item's row gets a gradient (they are all negatives), not only the batch's items.
    (grad,) = [p.grad for name, p in model.item_tower.sparse.named_parameters() if "item_id" in name]  # (V, D_f)
    assert bool((grad[1:].abs().sum(1) > 0).all())
    # Eval mode: the in-batch forward (evaluation reads out.user / out.item_ids only).
    task.eval()
    _, eval_out = task(batch)
    assert torch.equal(eval_out.item_ids, item_ids)


def test_full_softmax_errors():
    user, catalogue = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"item index 5 is not a catalogue item \[1, 5\)"):
        full_softmax_loss(user, catalogue, torch.tensor([1, 5]), 0.1)
    with pytest.raises(ValueError, match=r"item index 0 is not a catalogue item"):
        full_softmax_loss(user, catalogue, torch.tensor([0, 2]), 0.1)
    with pytest.raises(ValidationError, match="num_mixed_negatives: got 4 with loss: full_softmax"):
        TwoTowerConfig(arch="two_tower", loss="full_softmax", num_mixed_negatives=4)
    spec = tiny_spec()
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), loss="full_softmax")
    model = build_two_tower_model(config, spec)
    with pytest.raises(ValueError, match="full_softmax: every catalogue item is a negative, so it needs the catalogue"):
        build_two_tower_task(config, model, spec, counts={"item_id": counts_for_tests()})


def test_no_logq_and_no_masking_is_plain_in_batch_softmax():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), logq_correction=False, mask_accidental_hits=False)
    task = build_two_tower_task(config, build_two_tower_model(config, spec), spec)
    batch = random_batch(catalogue)
    loss, out = task(batch)
    logits = out.user @ out.item.T / config.temperature
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.arange(12)).item(), rel=1e-5)


def test_streaming_estimator_follows_the_hand_computed_sequence():
    est = StreamingFrequencyEstimator(num_buckets=1 << 16, alpha=0.5, initial_gap=1.0)
    a, b = torch.tensor([11]), torch.tensor([22])
    # step 1: a.      B_a = 0.5 * 1 + 0.5 * (1 - 0) = 1.0
    # step 2: a, a.   B_a = 0.5 * 1 + 0.5 * (2 - 1) = 1.0   (one update per bucket and step)
    # step 3: b.      B_b = 0.5 * 1 + 0.5 * (3 - 0) = 2.0
    # step 4: (none of a, b)
    # step 5: a, b.   B_a = 0.5 * 1 + 0.5 * (5 - 2) = 2.0;  B_b = 0.5 * 2 + 0.5 * (5 - 3) = 2.0
    # step 6: a.      B_a = 0.5 * 2 + 0.5 * (6 - 5) = 1.5
    steps = [[11], [11, 11], [22], [99], [11, 22], [11]]
    want_a = [1.0, 1.0, 1.0, 1.0, 2.0, 1.5]
    want_b = [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    for ids, wa, wb in zip(steps, want_a, want_b):
        est.update(torch.tensor(ids))
        assert est.expected_count(a).item() == pytest.approx(1 / wa)
        assert est.expected_count(b).item() == pytest.approx(1 / wb)
    assert int(est.step) == 6
    assert est.expected_count(torch.tensor([12345])).item() == 1.0  # unseen: the initial gap


def test_raw_item_ids_use_the_streaming_estimator():
    spec = tiny_spec(item_cardinality="raw")
    catalogue = tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), streaming_num_buckets=128)
    task = build_two_tower_task(config, build_two_tower_model(config, spec), spec)
    assert task.item_log_probs is None and isinstance(task.frequency_estimator, StreamingFrequencyEstimator)
    loss, _ = task(random_batch(catalogue))
    assert torch.isfinite(loss) and int(task.frequency_estimator.step) == 1
    task.eval()
    task(random_batch(catalogue))
    assert int(task.frequency_estimator.step) == 1  # evaluation does not count as a step
    with pytest.raises(ValueError, match="counts"):
        build_two_tower_task(config.model_copy(update={"frequency_estimate": "counts"}), task.model, spec)


def _grads(task: TwoTowerTask, batch: Batch):
    task.zero_grad()
    loss, out = task(batch)
    loss.backward()
    return loss, out, {n: p.grad.clone() if p.grad is not None else None for n, p in task.named_parameters()}


def test_ssl_loss_is_finite_weight_zero_is_main_and_it_trains_the_item_tower_only():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    base = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(16, 8))
    torch.manual_seed(0)
    model = build_two_tower_model(base, spec)
    counts = {"item_id": counts_for_tests()}
    batch = random_batch(catalogue, batch=16)
    plain = build_two_tower_task(base, model, spec, counts=counts)
    zero = build_two_tower_task(base.model_copy(update={"ssl_weight": 0.0}), model, spec, counts=counts)
    ssl = build_two_tower_task(base.model_copy(update={"ssl_weight": 0.5}), model, spec, counts=counts)
    loss_plain, _, g_plain = _grads(plain, batch)
    loss_zero, _, _ = _grads(zero, batch)
    loss_ssl, out, g_ssl = _grads(ssl, batch)
    assert loss_zero.item() == loss_plain.item()
    assert torch.isfinite(out.ssl_loss) and out.ssl_loss.item() > 0
    assert loss_ssl.item() == pytest.approx(out.main_loss.item() + 0.5 * out.ssl_loss.item(), rel=1e-6)
    assert out.main_loss.item() == pytest.approx(loss_plain.item(), rel=1e-6)
    item_params = [n for n in g_ssl if n.startswith("model.item_tower.")]
    user_params = [n for n in g_ssl if n.startswith("model.user_tower.")]
    assert any(not torch.allclose(g_ssl[n], g_plain[n]) for n in item_params if g_ssl[n] is not None)
    for n in user_params:
        if g_plain[n] is not None:
            assert torch.allclose(g_ssl[n], g_plain[n])


def test_ssl_views_mask_complementary_bags():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), ssl_weight=1.0)
    task = build_two_tower_task(config, build_two_tower_model(config, spec), spec, counts={"item_id": counts_for_tests()})
    _, item_kjt = task.split_features(random_batch(catalogue).sparse)
    v1, v2 = task._ssl_views(item_kjt)
    lengths = item_kjt.lengths()
    assert torch.equal(v1.lengths() + v2.lengths(), lengths)  # every bag is in exactly one view
    assert ((v1.lengths() == 0) | (v1.lengths() == lengths)).all()
    assert v1.values().numel() + v2.values().numel() == item_kjt.values().numel()


def test_learnable_temperature_gets_a_gradient():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), learnable_temperature=True, temperature=0.1)
    task = build_two_tower_task(config, build_two_tower_model(config, spec), spec, counts={"item_id": counts_for_tests()})
    assert isinstance(task.log_temperature, torch.nn.Parameter)
    assert task.temperature.item() == pytest.approx(0.1)
    loss, _ = task(random_batch(catalogue))
    loss.backward()
    assert task.log_temperature.grad is not None and task.log_temperature.grad.item() != 0.0
    fixed = build_two_tower_task(config.model_copy(update={"learnable_temperature": False}), task.model, spec, counts={"item_id": counts_for_tests()})
    assert "log_temperature" not in dict(fixed.named_parameters())


def test_split_features_is_per_tower_and_drops_other_features():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,))
    task = build_two_tower_task(config, build_two_tower_model(config, spec), spec, counts={"item_id": counts_for_tests()})
    batch = random_batch(catalogue)
    user, item = task.split_features(batch.sparse)
    assert user.keys() == ["user_id", "user_segment"] and item.keys() == ["item_id", "item_tags"]
    for kjt in (user, item):
        for key in kjt.keys():
            assert torch.equal(kjt[key].values(), batch.sparse[key].values())
            assert torch.equal(kjt[key].lengths(), batch.sparse[key].lengths())


def test_shapes_and_unit_norms():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    model = build_two_tower_model(TwoTowerConfig(arch="two_tower", user_layers=(16, 8), item_layers=(32, 8)), spec)
    batch = random_batch(catalogue, batch=10)
    user = model.user_embeddings(batch.sparse)
    item = model.item_embeddings(catalogue.kjt(torch.arange(NUM_ITEMS)))
    assert user.shape == (10, 8) and item.shape == (NUM_ITEMS, 8)
    assert torch.allclose(user.norm(dim=1), torch.ones(10), atol=1e-5)
    assert torch.allclose(item.norm(dim=1), torch.ones(NUM_ITEMS), atol=1e-5)
    assert torch.allclose(embed_items(model, catalogue, batch_size=7), item, atol=1e-6)


def test_builds_on_meta():
    spec = tiny_spec(shared_group=True)
    model = build_two_tower_model(TwoTowerConfig(arch="two_tower"), spec, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert model.embedding_dim == 64


def test_tables_do_not_collide_across_towers():
    user, item = build_tower_collections(tiny_spec(shared_group=True), device="meta")
    user_tables = {t.name for t in user.plan().tables}
    item_tables = {t.name for t in item.plan().tables}
    assert user_tables == {"user_id__full", "user__g__shared0"}
    assert item_tables == {"item_id__full", "item__g__shared0"}
    user, item = build_tower_collections(tiny_spec(), device="meta")  # no shared group: names unchanged
    assert {t.name for t in item.plan().tables} == {"item_id__full", "item_tags__qr0", "item_tags__qr1"}


def test_from_trained_gives_identical_user_vectors_and_topk():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    model = build_two_tower_model(TwoTowerConfig(arch="two_tower", user_layers=(16, 8), item_layers=(8,)), spec)
    retrieval = TwoTowerRetrieval.from_trained(model, catalogue=catalogue, k=5)
    batch = random_batch(catalogue)
    with torch.no_grad():
        want = model.user_embeddings(batch.sparse)
        got = retrieval.user_embeddings(batch.sparse)
        scores, items = retrieval(batch.sparse)
    assert torch.equal(got, want)
    ref_scores, ref_items = exact_topk(want, embed_items(model, catalogue), 5, excluded_items=[0])
    assert torch.equal(items, ref_items) and torch.allclose(scores, ref_scores)
    assert (items != 0).all()
    # an independent copy: training the model further leaves the serving module unchanged
    with torch.no_grad():
        for p in model.user_tower.parameters():
            p.add_(1.0)
    assert torch.equal(retrieval.user_embeddings(batch.sparse).detach(), got)
    with pytest.raises(ValueError, match="item_vectors"):
        TwoTowerRetrieval.from_trained(model)


def test_catalogue_kjt_gathers_rows():
    catalogue = tiny_catalogue()
    rows = torch.tensor([4, 0, 4, 17])
    kjt = catalogue.kjt(rows).to_dict()
    assert kjt["item_id"].values().tolist() == [4, 0, 4, 17]
    values, offsets = catalogue._features["item_tags"]
    want = [values[offsets[r] : offsets[r + 1]].tolist() for r in rows.tolist()]
    got_lengths = kjt["item_tags"].lengths().tolist()
    got = np.split(np.array(kjt["item_tags"].values().tolist()), np.cumsum(got_lengths)[:-1])
    assert [g.tolist() for g in got] == want
    assert all(1 <= i < NUM_ITEMS for i in catalogue.sample(200, torch.Generator().manual_seed(0)).tolist())
    with pytest.raises(ValueError, match="not columns of the catalogue"):
        ItemCatalogue.from_table(pa.table({"item_id": [0, 1]}), ["item_id", "genres"])


def test_config_and_builder_errors():
    with pytest.raises(ValidationError, match="same last size"):
        TwoTowerConfig(arch="two_tower", user_layers=(16, 8), item_layers=(16,))
    with pytest.raises(ValidationError, match="extra"):
        TwoTowerConfig(arch="two_tower", user_layer=(8,))
    spec = tiny_spec()
    with pytest.raises(ValueError, match="item_id_feature"):
        build_two_tower_model(TwoTowerConfig(arch="two_tower", item_id_feature="item_tags"), spec, device="meta")
    no_items = spec_from_dict({"name": "u", "features": [
        {"name": "label", "kind": "label"}, {"name": "user_id", "kind": "sparse", "cardinality": 5, "tower": "user"}]})
    with pytest.raises(ValueError, match="tower: item"):
        build_two_tower_model(TwoTowerConfig(arch="two_tower"), no_items, device="meta")
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), num_mixed_negatives=4)
    with pytest.raises(ValueError, match="catalogue"):
        build_two_tower_task(config, build_two_tower_model(config, spec), spec, counts={"item_id": counts_for_tests()})
    with pytest.raises(ValueError, match="counts"):
        build_two_tower_task(config.model_copy(update={"num_mixed_negatives": 0}), build_two_tower_model(config, spec), spec)
    raw = tiny_spec(item_cardinality="raw")
    with pytest.raises(ValueError, match="cardinality 'raw'"):
        build_two_tower_task(config, build_two_tower_model(config, raw), raw, catalogue=tiny_catalogue())
    one_item_feature = spec_from_dict({"name": "one", "features": [
        {"name": "label", "kind": "label"}, {"name": "user_id", "kind": "sparse", "cardinality": 5, "tower": "user"},
        {"name": "item_id", "kind": "sparse", "cardinality": 5, "tower": "item"}]})
    ssl = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), ssl_weight=0.1)
    with pytest.raises(ValueError, match="at least two features"):
        build_two_tower_task(ssl, build_two_tower_model(ssl, one_item_feature), one_item_feature, counts={"item_id": np.ones(5)})
    no_tags = ItemCatalogue.from_table(pa.table({"item_id": pa.array(np.arange(NUM_ITEMS), pa.int64())}), ["item_id"])
    with pytest.raises(ValueError, match="lacks item features"):
        build_two_tower_task(config, build_two_tower_model(config, spec), spec, counts={"item_id": counts_for_tests()}, catalogue=no_tags)


def test_planted_problem_beats_popularity():
    """10 user clusters, each with its own 10 items; a user's items come from its cluster."""
    rng = np.random.default_rng(0)
    num_users, num_items, clusters = 200, 100, 10  # ids 1..; index 0 = OOV
    spec = spec_from_dict({"name": "planted", "features": [
        {"name": "label", "kind": "label"},
        {"name": "user_id", "kind": "sparse", "cardinality": num_users + 1, "tower": "user", "embedding_dim": 16},
        {"name": "item_id", "kind": "sparse", "cardinality": num_items + 1, "tower": "item", "embedding_dim": 16},
    ]})
    user_cluster = np.arange(num_users + 1) % clusters
    item_cluster = np.arange(num_items + 1) % clusters
    popularity = 1.0 / np.arange(1, num_items // clusters + 1)  # Zipf within each cluster
    popularity /= popularity.sum()

    def draw(users):
        within = rng.choice(num_items // clusters, size=users.size, p=popularity)
        return 1 + ((user_cluster[users] - 1) % clusters) + clusters * within  # an item of the user's cluster

    train_users = np.repeat(np.arange(1, num_users + 1), 8)
    train_items = draw(train_users)
    assert (item_cluster[train_items] == user_cluster[train_users]).all()
    test_users = np.arange(1, num_users + 1)
    test_items = draw(test_users)
    counts = np.bincount(train_items, minlength=num_items + 1)

    torch.manual_seed(0)
    config = TwoTowerConfig(arch="two_tower", user_layers=(32, 16), item_layers=(32, 16), temperature=0.1)
    model = build_two_tower_model(config, spec)
    task = build_two_tower_task(config, model, spec, counts={"item_id": counts})
    optimizer = torch.optim.Adam(task.parameters(), lr=0.01)
    batch_size = 128
    for _ in range(120):
        pick = rng.integers(0, train_users.size, batch_size)
        kjt = KeyedJaggedTensor(
            keys=["user_id", "item_id"],
            values=torch.from_numpy(np.concatenate([train_users[pick], train_items[pick]])),
            lengths=torch.ones(2 * batch_size, dtype=torch.int32), stride=batch_size,
        )
        loss, _ = task(Batch(dense=torch.zeros(batch_size, 0), sparse=kjt, labels=torch.ones(batch_size)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        ones = torch.ones(test_users.size, dtype=torch.int32)
        users = model.user_embeddings(KeyedJaggedTensor(keys=["user_id"], values=torch.from_numpy(test_users), lengths=ones))
        items = model.item_embeddings(KeyedJaggedTensor(
            keys=["item_id"], values=torch.arange(num_items + 1), lengths=torch.ones(num_items + 1, dtype=torch.int32)))
    got = evaluate_retrieval(users, items, test_items, ks=(10,), excluded_items=[0], item_counts=counts)
    pop_users, pop_items = popularity_vectors(counts, test_users.size)
    baseline = evaluate_retrieval(pop_users, pop_items, test_items, ks=(10,), excluded_items=[0], item_counts=counts)
    # popularity finds each cluster's most popular item only (0.365); the model finds the cluster (0.955)
    assert baseline["recall@10"] < 0.5 and baseline["coverage@10"] == pytest.approx(0.1)
    assert got["recall@10"] > 0.85 and got["recall@10"] > 2 * baseline["recall@10"]
    assert got["recall@10/tail"] > baseline["recall@10/tail"]


def test_eval_forward_gives_vectors_and_targets_without_sampling():
    spec, catalogue = tiny_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,), num_mixed_negatives=7, ssl_weight=0.3)
    model = build_two_tower_model(config, spec)
    task = build_two_tower_task(config, model, spec, counts={"item_id": counts_for_tests()}, catalogue=catalogue).eval()
    state = task._generator.get_state()
    batch = random_batch(catalogue)
    with torch.no_grad():
        loss, out = task(batch)
    assert torch.equal(task._generator.get_state(), state)  # no negatives or masks drawn
    assert torch.equal(out.item_ids, batch.sparse["item_id"].values())
    assert torch.allclose(out.user, model.user_embeddings(batch.sparse))
    assert out.ssl_loss.item() == 0.0
    item_ids = batch.sparse["item_id"].values()
    p = counts_for_tests().clip(min=1) / counts_for_tests().clip(min=1).sum()
    want = naive_loss(out.user, out.item, item_ids, config.temperature, np.log(len(item_ids) * p[item_ids.numpy()]))
    assert loss.item() == pytest.approx(want, rel=1e-4)


def test_plans_per_tower_count_every_table_byte():
    model = build_two_tower_model(TwoTowerConfig(arch="two_tower", user_layers=(8,), item_layers=(8,)), tiny_spec())
    plans = model.plans()
    tables = {name: w for tower in (model.user_tower, model.item_tower) for name, w in tower.sparse.table_weights().items()}
    assert sum(p.weight_bytes for p in plans.values()) == sum(w.numel() * 4 for w in tables.values())


def history_spec():
    spec = tiny_spec()
    features = [f.model_dump() for f in spec.features]
    features.insert(2, {"name": "history_item_id", "kind": "sparse", "cardinality": NUM_ITEMS, "max_length": 4, "pooling": "mean",
                        "tower": "user", "embedding_dim": 16, "history_of": "item_id"})  # its own dim: unused when shared
    return spec_from_dict({"name": "tiny_history", "features": features, "groups": []})


def history_batch(catalogue: ItemCatalogue, batch: int = 8, seed: int = 0) -> tuple[Batch, list[list[int]]]:
    """random_batch plus a history bag per row (some empty)."""
    g = torch.Generator().manual_seed(seed)
    base = random_batch(catalogue, batch=batch, seed=seed).sparse.to_dict()
    bags = [torch.randint(1, NUM_ITEMS, (int(torch.randint(0, 5, (1,), generator=g)),), generator=g).tolist() for _ in range(batch)]
    history = KeyedJaggedTensor.from_lengths_sync(["history_item_id"], torch.tensor([v for b in bags for v in b], dtype=torch.int64),
                                                  torch.tensor([len(b) for b in bags], dtype=torch.int32))
    per_key = {**base, "history_item_id": history["history_item_id"]}
    keys = ["user_id", "history_item_id", "user_segment", "item_id", "item_tags", "ctx"]
    kjt = KeyedJaggedTensor(keys=keys, values=torch.cat([per_key[k].values() for k in keys]),
                            lengths=torch.cat([per_key[k].lengths().to(torch.int32) for k in keys]), stride=batch)
    return Batch(dense=torch.zeros(batch, 0), sparse=kjt, labels=torch.ones(batch)), bags


@pytest.mark.parametrize("loss", ["sampled_softmax", "full_softmax"])
def test_history_reads_the_item_id_table_in_one_call(loss):
    """history_table: item: no history table in the user collection; the history vector is the mean of
    item_id's rows; the item collection is called ONCE per step (batch items and histories together);
    history gradients land in item_id's table; serving's copy of the user tower alone gives the same vectors."""
    torch.manual_seed(0)
    spec, catalogue = history_spec(), tiny_catalogue()
    config = TwoTowerConfig(arch="two_tower", user_layers=(16, 8), item_layers=(8,), history_table="item", loss=loss)
    model = build_two_tower_model(config, spec)
    assert {t.name for t in model.user_tower.sparse.plan().tables} == {"user_id__full", "user_segment__full"}
    task = build_two_tower_task(config, model, spec, counts={"item_id": counts_for_tests()}, catalogue=catalogue)
    batch, bags = history_batch(catalogue)
    calls = []
    handle = model.item_tower.sparse.register_forward_hook(lambda *_: calls.append(1))
    loss_value, out = task(batch)
    handle.remove()
    assert len(calls) == 1

    table = dict(model.item_tower.sparse.named_parameters())
    (weight,) = [p for name, p in table.items() if "item_id" in name]  # (V, 8)
    user_kjt = batch.sparse
    with torch.no_grad():
        own = model.user_tower.sparse(user_kjt).to_dict()
        hist = torch.stack([weight[b].mean(0) if b else torch.zeros(8) for b in bags])  # (B, 8): empty bag -> 0
        x = torch.cat([own["user_id"], hist, own["user_segment"]], dim=1)
        want = torch.nn.functional.normalize(model.user_tower.mlp(x), dim=1)
    assert torch.allclose(out.user, want, atol=1e-5)

    loss_value.backward()
    only_in_history = sorted({v for b in bags for v in b} - set(batch.sparse["item_id"].values().tolist()))
    if loss == "sampled_softmax":
        assert only_in_history and (weight.grad[only_in_history].abs().sum(1) > 0).all()
    with torch.no_grad():
        retrieval = TwoTowerRetrieval.from_trained(model, catalogue=catalogue, k=5)
        assert torch.allclose(retrieval.user_embeddings(user_kjt), want, atol=1e-5)
        assert torch.allclose(model.user_embeddings(user_kjt), want, atol=1e-5)


def test_history_table_own_keeps_its_table_and_errors():
    spec = history_spec()
    own = build_two_tower_model(TwoTowerConfig(arch="two_tower"), spec)
    assert "history_item_id__full" in {t.name for t in own.user_tower.sparse.plan().tables}
    only_history = spec_from_dict({"name": "h", "features": [f.model_dump() for f in spec.features if f.name not in ("user_id", "user_segment")]})
    with pytest.raises(ValueError, match="history_table: item leaves the user tower no table of its own"):
        build_two_tower_model(TwoTowerConfig(arch="two_tower", history_table="item"), only_history)


@pytest.mark.parametrize("history_table", ["own", "item"])
def test_the_tasks_plan_holds_exactly_the_tables_the_model_holds(history_table):
    """results.json, the summary line and `recsys plan` take their bytes from Retrieval.plan: with
    history_table: item there is no history table to count."""
    from recsys.train.tasks import Retrieval

    spec = history_spec()
    config = TwoTowerConfig(arch="two_tower", user_layers=(16, 8), item_layers=(8,), history_table=history_table)
    model = build_two_tower_model(config, spec)
    held = {t.name for c in (model.user_tower.sparse, model.item_tower.sparse) for t in c.plan().tables}
    plan = Retrieval().plan(spec, None, config)
    assert {t.name for t in plan.tables} == held
    assert any("history" in name for name in held) == (history_table == "own")
