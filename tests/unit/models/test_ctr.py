"""CTR models: shapes, any sparse module (compressed collection or plain EBC), the loss falls."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.embeddings import build_embedding_collection
from recsys.features import spec_from_dict
from recsys.models.ctr import DCN, DLRM, CTRTask, DCNConfig, DLRMConfig, build_ctr_model

NUM_DENSE = 3


def tiny_spec(dims=(8, 8, 8)):
    compressions = [{"kind": "full"}, {"kind": "hashed", "num_buckets": 13}, {"kind": "qr", "num_collisions": 4}]
    features = [{"name": "label", "kind": "label"}]
    features += [{"name": f"I{i}", "kind": "dense"} for i in range(NUM_DENSE)]
    for i, (d, c) in enumerate(zip(dims, compressions)):
        features.append({"name": f"C{i}", "kind": "sparse", "cardinality": 50, "embedding_dim": d, "compression": c,
                         "max_length": 3 if i == 2 else 1, "pooling": "mean" if i == 2 else "sum"})
    return spec_from_dict({"name": "tiny", "features": features})


def random_batch(spec, batch: int = 16, seed: int = 0) -> Batch:
    """Random ids and dense values; the label depends on C0's id parity and I0's sign (learnable).

    #        i = 0     i = 1    i = 2   <-- batch index
    # "C0"   [3]       [17]     [4]
    # "C2"   [1, 9]    []       [0]
    """
    g = torch.Generator().manual_seed(seed)
    keys, values, lengths = [], [], []
    for f in spec.sparse:
        lens = torch.randint(0, f.max_length + 1, (batch,), generator=g) if f.multi_valued else torch.ones(batch, dtype=torch.long)
        keys.append(f.name)
        lengths.append(lens)
        values.append(torch.randint(0, int(f.cardinality), (int(lens.sum()),), generator=g))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))
    dense = torch.randn(batch, NUM_DENSE, generator=g)  # (B, N)
    labels = ((values[0] % 2 == 0) ^ (dense[:, 0] > 0)).float()  # (B,)
    return Batch(dense=dense, sparse=kjt, labels=labels)


def plain_ebc(spec) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=f.embedding_dim, num_embeddings=int(f.cardinality), feature_names=[f.name])
            for f in spec.sparse
        ]
    )


@pytest.mark.parametrize("config", [DLRMConfig(dense_layers=(16, 8), over_layers=(16, 1)),
                                    DCNConfig(arch="dcn", dense_layers=(16, 8), over_layers=(16, 1), low_rank=4)])
@pytest.mark.parametrize("sparse_kind", ["compressed", "plain"])
def test_logits_shape(config, sparse_kind):
    spec = tiny_spec()
    sparse = build_embedding_collection(spec) if sparse_kind == "compressed" else plain_ebc(spec)
    model = build_ctr_model(config, spec, sparse)
    batch = random_batch(spec, batch=5)
    logits = model(batch.dense, batch.sparse)
    assert logits.shape == (5,)
    assert torch.isfinite(logits).all()
    assert isinstance(model, DLRM if config.arch == "dlrm" else DCN)


def test_dcn_takes_mixed_dims_dlrm_refuses():
    spec = tiny_spec(dims=(8, 4, 12))
    model = build_ctr_model(DCNConfig(arch="dcn", dense_layers=(8,), over_layers=(8, 1), low_rank=2), spec, build_embedding_collection(spec))
    batch = random_batch(spec, batch=4)
    assert model(batch.dense, batch.sparse).shape == (4,)
    with pytest.raises(ValueError, match="one embedding_dim"):
        build_ctr_model(DLRMConfig(dense_layers=(8,), over_layers=(8, 1)), spec, build_embedding_collection(spec))


def test_config_errors_name_the_field():
    spec = tiny_spec()
    with pytest.raises(ValueError, match="dense_layers: the last size is 4"):
        build_ctr_model(DLRMConfig(dense_layers=(16, 4), over_layers=(8, 1)), spec, build_embedding_collection(spec))
    with pytest.raises(ValueError, match="over_layers"):
        build_ctr_model(DLRMConfig(dense_layers=(8,), over_layers=(8, 2)), spec, build_embedding_collection(spec))


def test_meta_device_builds_without_memory():
    spec = tiny_spec()
    model = build_ctr_model(DCNConfig(arch="dcn", dense_layers=(8,), over_layers=(8, 1)), spec,
                            build_embedding_collection(spec, device="meta"), device="meta")
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_loss_falls_on_tiny_batch(arch):
    torch.manual_seed(0)
    spec = tiny_spec()
    config = DLRMConfig(dense_layers=(16, 8), over_layers=(16, 1)) if arch == "dlrm" else DCNConfig(arch="dcn", dense_layers=(16, 8), over_layers=(16, 1), low_rank=4)
    task = CTRTask(build_ctr_model(config, spec, build_embedding_collection(spec)))
    batch = random_batch(spec, batch=64, seed=1)
    opt = torch.optim.Adam(task.parameters(), lr=0.02)
    first, _ = task(batch)
    for _ in range(60):
        loss, logits = task(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logits.shape == (64,) and not logits.requires_grad
    assert loss.item() < 0.5 * first.item()
