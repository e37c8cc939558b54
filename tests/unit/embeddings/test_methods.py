"""Every method against its naive per-feature reference (same weights), sum / mean, bags."""

from __future__ import annotations

import pytest
import torch

from recsys.embeddings import build_embedding_collection
from recsys.embeddings.naive import NaiveEmbeddingBagCollection

from emb_helpers import VARIANTS, random_kjt, variant_spec


def _randomize(collection) -> None:
    """Weights far from init (and away from the ones-centred factors) so mismatches show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in collection.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("max_length", [1, 5])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_naive_reference(variant: str, max_length: int, pooling: str):
    spec = variant_spec(variant, max_length=max_length, pooling=pooling)
    collection = build_embedding_collection(spec)
    _randomize(collection)
    naive = NaiveEmbeddingBagCollection(collection)
    kjt = random_kjt(spec, batch=9, seed=max_length)

    kt = collection(kjt)
    expected = naive(kjt)
    assert kt.keys() == ["A", "B"]
    assert kt.length_per_key() == [16, 16]
    assert kt.values().shape == (9, 32)
    torch.testing.assert_close(kt.values(), expected.values(), rtol=1e-5, atol=1e-5)
    # Empty bags are zero vectors, like torchrec.
    lengths = kjt["A"].lengths()
    assert torch.all(kt["A"][lengths == 0] == 0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gradients_reach_every_table(variant: str):
    spec = variant_spec(variant, max_length=3)
    collection = build_embedding_collection(spec)
    kjt = random_kjt(spec, batch=64, seed=3, skewed=True)
    collection(kjt).values().square().sum().backward()
    for name, p in collection.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_features_of_different_dims_and_kinds_in_one_collection():
    from emb_helpers import make_spec

    spec = make_spec({"A": VARIANTS["qr_mult"], "B": VARIANTS["multi_hash_weights"], "C": VARIANTS["mixed_dim"]}, max_length=4)
    spec = spec.model_copy(update={"features": [f.model_copy(update={"embedding_dim": d}) for f, d in zip(spec.features, (8, 16, 32))]})
    collection = build_embedding_collection(spec)
    kt = collection(random_kjt(spec, batch=5))
    assert kt.length_per_key() == [8, 16, 32] and kt.values().shape == (5, 56)
    assert set(collection.embeddings) == {"dim8", "dim16", "dim4"}  # per-value ECs, one per dim


def test_input_key_order_and_extra_keys_do_not_matter():
    spec = variant_spec("hashed", max_length=3)
    collection = build_embedding_collection(spec)
    kjt = random_kjt(spec, batch=6)
    d = kjt.to_dict()
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    shuffled = KeyedJaggedTensor.from_jt_dict({"B": d["B"], "X": d["A"], "A": d["A"]})
    torch.testing.assert_close(collection(shuffled).values(), collection(kjt).values())
