"""Naive per-feature references: plain ``nn.EmbeddingBag`` / gathers, one module per table.

``NaiveEmbeddingBagCollection(collection)`` copies the weights of a compressed collection into
per-table ``nn.EmbeddingBag`` modules (and the methods' dense parameters into :attr:`params`) and
recomputes every feature with its family's naive reference (``Family.naive`` in
``recsys/embeddings/methods/<kind>.py``): index maps written out again (``x % m``, ``x // m``,
masks per block), products of per-value gathers before pooling, mixed-dim blocks through masked
``per_sample_weights``. Tests compare it with the compiled collection (same weights -> same
pooled outputs, gradients and updates); the benchmark uses it as the "naive implementation of
the same method" baseline (``sparse=True`` gradients).
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.collection import CompressedEmbeddingBagCollection
from recsys.embeddings.methods.family import NaiveTables, naive_param_key
from recsys.embeddings.methods.registry import family


def _bag(weight: torch.Tensor, sparse: bool) -> nn.EmbeddingBag:
    # Rows stored in half precision are compared in float32 (the kernels accumulate in float32).
    bag = nn.EmbeddingBag(weight.shape[0], weight.shape[1], mode="sum", sparse=sparse, include_last_offset=True)
    with torch.no_grad():
        bag.weight.copy_(weight.detach().float())
    return bag


class NaiveEmbeddingBagCollection(nn.Module):
    """Per-table ``nn.EmbeddingBag`` re-implementation of a compressed collection (same weights).

    Args:
        collection (CompressedEmbeddingBagCollection): an unsharded collection to copy.
        sparse (bool): sparse gradients (for training benchmarks). Default False.

    Attributes:
        tables (nn.ModuleDict): physical table name (dots as ``_``) -> ``nn.EmbeddingBag``.
        params (nn.ParameterDict): ``<feature>__<parameter name, dots as _>`` -> a copy of each
            method's dense parameter (mixed_dim's projections ``C1__projections_block0``, ...).
    """

    def __init__(self, collection: CompressedEmbeddingBagCollection, sparse: bool = False):
        super().__init__()
        weights = collection.table_weights()
        self.tables = nn.ModuleDict({name.replace(".", "_"): _bag(w, sparse) for name, w in weights.items()})
        self._methods = {name: collection.methods[name] for name in collection.feature_names}
        self._mean = dict(zip(collection.feature_names, collection._mean))
        self._names = collection.feature_names
        self._dims = collection.embedding_dims()
        self.params = nn.ParameterDict()
        for name, m in self._methods.items():
            for pname, p in m.named_parameters():
                self.params[naive_param_key(name, pname)] = nn.Parameter(p.detach().clone())
        self._view = NaiveTables(self.tables, self.params)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        jts = features.to_dict()
        outs = []
        for name in self._names:
            jt = jts[name]
            m = self._methods[name]
            out = family(m.kind).naive(m, self._view, jt.values(), jt.lengths())  # (B, D) sum-pooled
            if self._mean[name]:
                out = out / jt.lengths().clamp(min=1).unsqueeze(1)
            outs.append(out)
        return KeyedTensor(keys=list(self._names), length_per_key=list(self._dims), values=torch.cat(outs, 1))
