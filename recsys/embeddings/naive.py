"""Naive per-feature references: plain ``nn.EmbeddingBag`` / gathers, one module per table.

``NaiveEmbeddingBagCollection(collection)`` copies the weights of a compressed collection into
per-feature ``nn.EmbeddingBag`` modules and recomputes every method the straightforward way:
index maps written out again (``x % m``, ``x // m``, masks per block), products of per-value
gathers before pooling, mixed-dim blocks through masked ``per_sample_weights``. Tests compare it
with the compiled collection (same weights -> same pooled outputs); the benchmark uses it as the
"naive implementation of the same method" baseline (``sparse=True`` gradients).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.collection import CompressedEmbeddingBagCollection
from recsys.embeddings.hashing import hash_ids
from recsys.embeddings.methods.full import FullMethod
from recsys.embeddings.methods.hashed import HashedMethod
from recsys.embeddings.methods.mixed_dim import MixedDimMethod
from recsys.embeddings.methods.multi_hash import MultiHashMethod
from recsys.embeddings.methods.qr import QRMethod
from recsys.embeddings.methods.unified import UnifiedMethod


def _bag(weight: torch.Tensor, sparse: bool) -> nn.EmbeddingBag:
    bag = nn.EmbeddingBag(weight.shape[0], weight.shape[1], mode="sum", sparse=sparse, include_last_offset=True)
    with torch.no_grad():
        bag.weight.copy_(weight.detach())
    return bag


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])


def _bag_sum(per_value: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    sample = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    return torch.zeros(lengths.numel(), per_value.shape[1], dtype=per_value.dtype).index_add(0, sample, per_value)


class NaiveEmbeddingBagCollection(nn.Module):
    """Per-feature ``nn.EmbeddingBag`` re-implementation of a compressed collection (same weights).

    Args:
        collection (CompressedEmbeddingBagCollection): an unsharded collection to copy.
        sparse (bool): sparse gradients (for training benchmarks). Default False.
    """

    def __init__(self, collection: CompressedEmbeddingBagCollection, sparse: bool = False):
        super().__init__()
        weights = collection.table_weights()
        self.tables = nn.ModuleDict({name.replace(".", "_"): _bag(w, sparse) for name, w in weights.items()})
        self._methods = {name: collection.methods[name] for name in collection.feature_names}
        self._mean = dict(zip(collection.feature_names, collection._mean))
        self._names = collection.feature_names
        self._dims = collection.embedding_dims()
        self.projections = nn.ParameterDict()
        for name, m in self._methods.items():
            if isinstance(m, MixedDimMethod):
                for key, p in m.projections.items():
                    self.projections[f"{name}__{key}"] = nn.Parameter(p.detach().clone())

    def _table(self, name: str) -> nn.EmbeddingBag:
        return self.tables[name]

    def _feature(self, m, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        offsets = _offsets(lengths)
        f = m.feature
        if isinstance(m, FullMethod):
            return self._table(f"{f}__full")(values, offsets)
        if isinstance(m, HashedMethod):
            return self._table(f"{f}__hashed")(hash_ids(values, m.seed, m.num_buckets), offsets)
        if isinstance(m, MultiHashMethod):
            table = self._table(f"{f}__mh")
            rows = [hash_ids(values, s, m.num_buckets) for s in m.seeds]
            if m.importance_weights:
                w = self._table(f"{f}__mhw").weight[hash_ids(values, m.weight_seed, m.num_weight_buckets)]  # (N, 4)
                parts = [table(r, offsets, per_sample_weights=w[:, i]) for i, r in enumerate(rows)]
            else:
                parts = [table(r, offsets) for r in rows]
            return sum(parts[1:], parts[0]) if m.combiner_kind == "sum" else torch.cat(parts, 1)
        if isinstance(m, QRMethod):
            # Digits written out: x mod r0, (x // r0) mod r1, ..., top = x // prod(r) (ids < N).
            digits, rest = [], values
            for r in m.rows[:-1]:
                digits.append(rest % r)
                rest = rest // r
            digits.append(rest)
            tables = [self._table(f"{f}__qr{j}") for j in range(len(m.rows))]
            if m.operation == "mult":
                per_value = F.embedding(digits[0], tables[0].weight)
                for d, t in zip(digits[1:], tables[1:]):
                    per_value = per_value * F.embedding(d, t.weight)
                return _bag_sum(per_value, lengths)
            parts = [t(d, offsets) for d, t in zip(digits, tables)]
            return sum(parts[1:], parts[0]) if m.operation == "add" else torch.cat(parts, 1)
        if isinstance(m, MixedDimMethod):
            out = 0
            ends = m.starts[1:] + [m.cardinality]
            for i, (s, e) in enumerate(zip(m.starts, ends)):
                inside = (values >= s) & (values < e)
                rows = torch.where(inside, values - s, torch.zeros_like(values))
                part = self._table(f"{f}__md{i}")(rows, offsets, per_sample_weights=inside.float())
                key = f"{f}__block{i}"
                out = out + (part @ self.projections[key] if key in self.projections else part)
            return out
        if isinstance(m, UnifiedMethod):
            parts = []
            for c, s in enumerate(m.seeds):
                table = self._table(f"{m.group}__shared{c % m.num_tables}")
                parts.append(table(hash_ids(values, s, m.num_buckets), offsets))
            return torch.cat(parts, 1)
        raise TypeError(f"no naive reference for {type(m).__name__}")

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        jts = features.to_dict()
        outs = []
        for name in self._names:
            jt = jts[name]
            out = self._feature(self._methods[name], jt.values(), jt.lengths())
            if self._mean[name]:
                out = out / jt.lengths().clamp(min=1).unsqueeze(1)
            outs.append(out)
        return KeyedTensor(keys=list(self._names), length_per_key=list(self._dims), values=torch.cat(outs, 1))
