"""The collection's vectorised combine paths for mixed_dim equal the naive reference.

- no projections (every block at full dim): all blocks read as one column block, one reduction;
- projected blocks read as ONE column block of the pooled output (``pooled_pieces``): one matmul,
  no copy of the activations, no identity for unprojected blocks.
"""

from __future__ import annotations

import pytest
import torch

from recsys.embeddings import build_embedding_collection
from recsys.embeddings.naive import NaiveEmbeddingBagCollection

from emb_helpers import make_spec, random_kjt


def _randomize(collection) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in collection.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "compression, op",
    [
        ({"kind": "mixed_dim", "num_blocks": 4, "alpha": 1e-6}, "pieces"),
        ({"kind": "mixed_dim", "num_blocks": 4, "alpha": 0.6}, "pieces"),
        ({"kind": "mixed_dim", "num_blocks": 3, "block_boundaries": [10, 200], "base_dim": 24}, "pieces"),
    ],
)
@pytest.mark.parametrize("max_length", [1, 4])
def test_mixed_dim_combine_paths_match_naive(compression: dict, op: str, max_length: int):
    spec = make_spec({"A": compression, "F": {"kind": "full"}, "B": compression}, max_length=max_length, pooling="mean")
    collection = build_embedding_collection(spec)
    _randomize(collection)
    assert {r[0] for r in collection._runs} == {op, "concat"}
    kjt = random_kjt(spec, batch=11, seed=5, skewed=True)
    out = collection(kjt).values()
    torch.testing.assert_close(out, NaiveEmbeddingBagCollection(collection)(kjt).values(), rtol=1e-5, atol=1e-5)
    # Gradients of the projections equal those of the per-feature combine (the reference path).
    grads = {}
    for path in ("vectorised", "per_feature"):
        collection.zero_grad()
        if path == "per_feature":
            kt = collection.embedding_bags(_physical(collection, kjt))
            view = kt.to_dict()
            lengths = [kjt[n].lengths() for n in collection.feature_names]
            ref = torch.cat([collection.methods[n].combine(view, {}, n_) for n, n_ in zip(collection.feature_names, lengths)], 1)
            ref = ref / torch.repeat_interleave(torch.stack([n_.clamp(min=1) for n_ in lengths], 1).float(), 16, dim=1)
            torch.testing.assert_close(ref, out, rtol=1e-5, atol=1e-5)
            ref.square().sum().backward()
        else:
            collection(kjt).values().square().sum().backward()
        grads[path] = {n: p.grad.clone() for n, p in collection.named_parameters() if p.grad is not None}
    assert grads["vectorised"].keys() == grads["per_feature"].keys()
    for name, g in grads["vectorised"].items():
        torch.testing.assert_close(g, grads["per_feature"][name], rtol=1e-4, atol=1e-5)


def _physical(collection, kjt):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    jts = kjt.to_dict()
    keys, values, lengths = [], [], []
    for name in collection.feature_names:
        for k, v, n in collection.methods[name].transform(jts[name].values(), jts[name].lengths()):
            keys.extend(k)
            values.append(v)
            lengths.append(n)
    return KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths), stride=kjt.stride())
