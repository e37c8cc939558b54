"""``dhe``: deep hash embeddings (Kang et al., KDD 2021).

No embedding table: id ``x`` is encoded as ``k`` seeded splitmix64 hashes, each mapped to
``[-1, 1]`` (``h_i(x) mod 2^20`` scaled; the paper's uniform encoding), and an MLP (``L`` hidden
layers of width ``h`` with Mish, then a linear layer to ``D``) turns that encoding into the
feature's vector. Memory is the MLP's parameters,
``k h + h + (L - 1)(h^2 + h) + h D + D`` values, whatever the cardinality, so it reaches the
smallest budgets; every lookup is a small dense network instead of a row read.

Why not tables + a combiner: there are no rows to look up. The method keeps the
``KJT -> KeyedTensor`` contract through the :class:`~recsys.embeddings.combine.Network` combiner
(the plan hands it the feature's ids); its parameters are dense, so ``DistributedModelParallel``
replicates them data-parallel (DDP) as it does mixed_dim's projections. The network is
nonlinear, so bags are encoded per value, then pooled. No batch norm (the paper's): a bag-pooled
feature would mix values of different bags in its statistics.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recsys.embeddings.combine import Network
from recsys.embeddings.hashing import hash_ids, hash_ids_many, stable_seed
from recsys.embeddings.methods.base import Chunk, FeatureMethod
from recsys.embeddings.methods.family import BuildContext, Family, NaiveTables, bag_sum, per_feature_knob
from recsys.embeddings.plan import ProjectionSpec, TableSpec
from recsys.features.methods.dhe import SCHEMA, DHECompression

ENCODING_BUCKETS = 1 << 20


def dhe_num_values(num_hashes: int, hidden_dim: int, num_layers: int, output_dim: int) -> int:
    """Parameters of the MLP (weights and biases)."""
    return num_hashes * hidden_dim + hidden_dim + (num_layers - 1) * (hidden_dim * hidden_dim + hidden_dim) + hidden_dim * output_dim + output_dim


class DHEMethod(FeatureMethod):
    """Args:
    feature (str): logical feature name (seeds the hashes).
    output_dim (int): embedding dim D.
    hidden_dim (int): MLP width h.
    num_hashes (int): encoding width k.
    num_layers (int): hidden layers L.
    multi_valued (bool): bags may hold several values.
    device: where the MLP is allocated (``meta`` allocates nothing).
    """

    kind = "dhe"

    def __init__(self, feature: str, output_dim: int, hidden_dim: int, num_hashes: int = 64, num_layers: int = 2,
                 multi_valued: bool = False, device: torch.device | str | None = None):
        super().__init__(feature, output_dim, multi_valued)
        self.hidden_dim = hidden_dim
        self.num_hashes = num_hashes
        self.num_layers = num_layers
        self.seeds = [stable_seed(feature, 2000 + i) for i in range(num_hashes)]
        dims = [num_hashes] + [hidden_dim] * num_layers + [output_dim]
        self.mlp = nn.ModuleList(nn.Linear(a, b, device=device) for a, b in zip(dims, dims[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.mlp:
            if layer.weight.device.type != "meta":
                layer.reset_parameters()

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """``(N,)`` int64 ids -> ``(N, k)`` floats in ``[-1, 1]``."""
        hashed = hash_ids_many(ids, self.seeds, ENCODING_BUCKETS, interleave=True)  # (N, k)
        return hashed.to(torch.float32) * (2.0 / (ENCODING_BUCKETS - 1)) - 1.0

    def encode_values(self, ids: torch.Tensor) -> torch.Tensor:
        """Each id's vector, ``(N, D)``: the MLP on its encoding."""
        x = self.encode(ids)
        for layer in self.mlp[:-1]:
            x = nn.functional.mish(layer(x))
        return self.mlp[-1](x)

    def tables(self) -> list[TableSpec]:
        return []

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        return []  # no table lookups: the Network combiner reads the logical ids

    def combiner(self) -> Network:
        return Network(self.feature)

    def projection_specs(self) -> list[ProjectionSpec]:
        """The MLP's weights and biases (counted in the plan's dense bytes)."""
        out = []
        for i, layer in enumerate(self.mlp):
            init = f"U(+-1/sqrt({layer.in_features}))"  # torch's Linear default
            out.append(ProjectionSpec(f"{self.feature}.mlp{i}.weight", layer.in_features, layer.out_features, init))
            out.append(ProjectionSpec(f"{self.feature}.mlp{i}.bias", 1, layer.out_features, init))
        return out

    def describe(self) -> tuple[str, str]:
        return (f"{self.num_hashes} x splitmix64(x, seed_i) mod 2^20 -> [-1, 1]",
                f"MLP {self.num_hashes}-" + "-".join([str(self.hidden_dim)] * self.num_layers) + f"-{self.output_dim} (Mish), per value")


def _naive(m: DHEMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    # One hash per seed, scaled to [-1, 1]; the layers as explicit matmuls; Mish written out.
    enc = torch.stack([hash_ids(values, s, ENCODING_BUCKETS).double() / (ENCODING_BUCKETS - 1) * 2 - 1 for s in m.seeds], 1)
    x = enc.float()
    for i in range(len(m.mlp)):
        x = x @ t.param(m.feature, f"mlp.{i}.weight").T + t.param(m.feature, f"mlp.{i}.bias")
        if i < len(m.mlp) - 1:
            x = x * torch.tanh(torch.log1p(torch.exp(x)))
    return bag_sum(x, lengths)


def _size(f, s: float, options) -> DHECompression | None:
    """The knob: the widest MLP whose parameters take at most ``s`` of the feature's full bytes
    (raw-id features: of ``s`` x 10^6 rows); ``None`` (keep full) when even width 8 saves nothing."""
    rows = int(f.cardinality) if f.has_vocab else 1_000_000
    k, L, d = options.num_hashes, options.num_layers, f.embedding_dim
    target = s * rows * d
    # Largest h with dhe_num_values(h) <= target: the positive root of (L-1) h^2 + (k + L + d) h + d - target.
    a, b, c = L - 1, k + L + d, d - target
    h = int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)) if a else int(-c / b)
    h = max(8, min(h, 8192))
    if f.has_vocab and dhe_num_values(k, h, L, d) >= rows * d:
        return None
    return DHECompression(kind="dhe", hidden_dim=h, num_hashes=k, num_layers=L)


FAMILY = Family(
    schema=SCHEMA,
    build=lambda f, c, ctx: DHEMethod(f.name, f.embedding_dim, c.hidden_dim, c.num_hashes, c.num_layers, f.multi_valued, ctx.device),
    naive=_naive,
    solve=per_feature_knob(_size, note="dhe: each feature's MLP width is the widest within the budget's share (at least 8)"),
    lookup_target=0.1,
    colour="#e377c2",
)
