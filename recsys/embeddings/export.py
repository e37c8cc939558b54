"""Serving paths: ``torch.export`` of a collection and TorchRec inference quantization.

``torch.export`` takes tensors, so :class:`CollectionExportWrapper` rebuilds the KJT from flat
``values`` / ``lengths`` (keys fixed at export) and returns the ``(B, sum(D_f))`` tensor. The
number of values is a dynamic dimension; the hashes and digit maps are plain int64 ops, so the
exported program computes the same rows bit for bit.

:func:`quantize_collection` swaps the inner ``EmbeddingBagCollection`` (and per-value
``EmbeddingCollection``s) for TorchRec's quantized ones (int8 / int4 / fp16 rows); transforms and
combiners (projections included) stay float.
"""

from __future__ import annotations

import torch
import torchrec
import torchrec.quant.embedding_modules as quant_modules
from torch import nn
from torchrec.inference.modules import quantize_embeddings
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


class CollectionExportWrapper(nn.Module):
    """``(values, lengths) -> (B, sum(D_f))`` around a collection, for ``torch.export``.

    Args:
        collection (nn.Module): a (possibly quantized) compressed collection.
        keys (list[str]): the input features, in the order of ``lengths`` (``F * B`` entries).
    """

    def __init__(self, collection: nn.Module, keys: list[str]):
        super().__init__()
        self.collection = collection
        self.keys = list(keys)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        kjt = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths)
        return self.collection(kjt).values()


def export_collection(collection: nn.Module, example: KeyedJaggedTensor) -> torch.export.ExportedProgram:
    """Export with a dynamic number of ids (the batch size stays that of ``example``)."""
    wrapper = CollectionExportWrapper(collection, example.keys())
    num_values = torch.export.Dim("num_values", min=2, max=1 << 40)
    return torch.export.export(
        wrapper,
        (example.values(), example.lengths()),
        dynamic_shapes={"values": {0: num_values}, "lengths": None},
        strict=False,
    )


def quantize_collection(collection: nn.Module, dtype: torch.dtype = torch.qint8) -> nn.Module:
    """A copy whose TorchRec tables are quantized (``torch.qint8``, ``torch.quint4x2``, ``torch.float16``)."""
    return quantize_embeddings(
        collection,
        dtype=dtype,
        inplace=False,
        additional_qconfig_spec_keys=[torchrec.EmbeddingCollection],
        additional_mapping={torchrec.EmbeddingCollection: quant_modules.EmbeddingCollection},
    )
