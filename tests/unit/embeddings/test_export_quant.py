"""Serving: torch.export of every method and TorchRec int8 / fp16 quantization."""

from __future__ import annotations

import pytest
import torch
import torchrec.quant.embedding_modules as quant_modules

from recsys.embeddings import build_embedding_collection
from recsys.embeddings.export import CollectionExportWrapper, export_collection, quantize_collection

from emb_helpers import VARIANTS, random_kjt, variant_spec

EXPORTED = ["full", "hashed", "multi_hash_weights", "qr_mult", "mixed_dim", "unified", "tt"]


@pytest.mark.parametrize("variant", EXPORTED)
def test_torch_export_matches_eager(variant: str):
    spec = variant_spec(variant, max_length=3)
    collection = build_embedding_collection(spec).eval()
    program = export_collection(collection, random_kjt(spec, batch=8, seed=0))
    other = random_kjt(spec, batch=8, seed=7)  # a different number of ids
    wrapper = CollectionExportWrapper(collection, other.keys())
    torch.testing.assert_close(program.module()(other.values(), other.lengths()), wrapper(other.values(), other.lengths()))


@pytest.mark.parametrize("dtype, tol", [(torch.qint8, 0.02), (torch.float16, 1e-3)])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_quantized_outputs_close_to_float(variant: str, dtype: torch.dtype, tol: float):
    spec = variant_spec(variant, max_length=3)
    collection = build_embedding_collection(spec)
    quantized = quantize_collection(collection, dtype)
    inner = [quantized.embedding_bags, *quantized.embeddings.values()]
    assert all(isinstance(m, (quant_modules.EmbeddingBagCollection, quant_modules.EmbeddingCollection)) for m in inner if m is not None)
    kjt = random_kjt(spec, batch=16)
    expected = collection(kjt).values()
    got = quantized(kjt).values()
    assert got.dtype == torch.float32 and got.shape == expected.shape
    scale = expected.abs().max().clamp(min=1e-6)
    assert float((got - expected).abs().max() / scale) < tol
