"""``tt``: TT-Rec, tensor-train embedding tables (Yin et al., MLSys 2021).

The ``N x D`` table is a tensor train of k cores. Id ``x`` is written in mixed radix (the digits
of :func:`recsys.embeddings.methods.qr.qr_digits`: ``k - 1`` low digits of ``n = ceil(N ** (1/k))``
values, the top digit ``ceil(N / n ** (k - 1))``); ``D = m_1 ... m_k`` (factors as even as
possible). Core i is an ordinary TorchRec table of ``n_i`` rows of ``r_{i-1} * m_i * r_i`` values
(``r_0 = r_k = 1``, the other ranks ``r``, a multiple of 4 so every row suits FBGEMM); digit i
picks row ``d_i`` of core i, and the id's vector is the chain product of the k slices
(:class:`~recsys.embeddings.combine.Contract`): ``v[j_1..j_k] = G_1[d_1][j_1, :] G_2[d_2][:, j_2, :]
... G_k[d_k][:, j_k]``.

Why not only tables + a linear combiner: the contraction is a product of lookups, so, as QR's
``mult``, it does not commute with bag pooling. Single-valued features read the pooled rows of the
EmbeddingBagCollection (a bag of one is its row); multi-valued bags go through an
``EmbeddingCollection`` (per-value rows), are contracted per value, then pooled. Every lookup is
still in TorchRec's collections, so ``DistributedModelParallel`` shards the cores as any table.

Init: core entries ``U(-b, b)``; one output value is a sum of ``r^(k-1)`` products of k entries,
so its variance is ``r^(k-1) (b^2/3)^k``; ``b = sqrt(3) (a^2 / (3 r^(k-1)))^(1/(2k))`` gives the
variance ``a^2 / 3`` of a full table's torchrec init ``U(-a, a)``, ``a = sqrt(1 / N)``.

Memory: ``4 (n_1 m_1 r + sum_{1<i<k} n_i r m_i r + n_k r m_k)`` bytes, about ``4 k N^(1/k) r^2 D^(1/k)``.
"""

from __future__ import annotations

import math

import torch

from recsys.embeddings.combine import Combiner, Contract, PerValue
from recsys.embeddings.methods.base import Chunk, FeatureMethod, uniform_bound
from recsys.embeddings.methods.family import Family, NaiveTables, bag_sum, per_feature_knob
from recsys.embeddings.methods.qr import qr_digits, qr_num_rows
from recsys.embeddings.plan import TableSpec
from recsys.features.methods.tt import SCHEMA, TTCompression


def factor_dim(dim: int, parts: int) -> list[int]:
    """``dim`` as ``parts`` integer factors, as even as possible, largest last (``16, 3 -> [2, 2, 4]``)."""
    factors = [1] * parts
    rest = dim
    primes = []
    p = 2
    while rest > 1:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    for q in sorted(primes, reverse=True):  # greedy: each prime to the smallest factor so far
        i = min(range(parts), key=lambda j: factors[j])
        factors[i] *= q
    return sorted(factors)


def tt_row_radices(cardinality: int, num_cores: int) -> list[int]:
    """Rows of each core: ``k - 1`` low digits of ``ceil(N ** (1/k))`` values, then the top digit."""
    n = max(2, math.ceil(cardinality ** (1 / num_cores) - 1e-9))
    while n ** (num_cores - 1) >= cardinality and n > 2:  # the top digit keeps >= 2 rows
        n -= 1
    return qr_num_rows(cardinality, [n] * (num_cores - 1))


def tt_shapes(dim: int, num_cores: int, rank: int) -> list[tuple[int, int, int]]:
    """``(r_in, m_i, r_out)`` of each core's row."""
    ms = factor_dim(dim, num_cores)
    ranks = [1] + [rank] * (num_cores - 1) + [1]
    return [(ranks[i], m, ranks[i + 1]) for i, m in enumerate(ms)]


def tt_bytes(cardinality: int, dim: int, num_cores: int, rank: int, value_bytes: int = 4) -> int:
    """Exact bytes of the cores."""
    rows = tt_row_radices(cardinality, num_cores)
    return value_bytes * sum(n * a * m * b for n, (a, m, b) in zip(rows, tt_shapes(dim, num_cores, rank)))


class TTMethod(FeatureMethod):
    """Args:
    feature (str): logical feature name.
    output_dim (int): embedding dim D.
    cardinality (int): N; ids lie in ``[0, N)``.
    rank (int): the TT rank r (multiple of 4).
    num_cores (int): k.
    multi_valued (bool): bags may hold several values.
    """

    kind = "tt"

    def __init__(self, feature: str, output_dim: int, cardinality: int, rank: int, num_cores: int = 3, multi_valued: bool = False):
        super().__init__(feature, output_dim, multi_valued)
        self.cardinality = cardinality
        self.rank = rank
        self.num_cores = num_cores
        self.rows = tt_row_radices(cardinality, num_cores)
        self.shapes = tt_shapes(output_dim, num_cores, rank)
        self.keys = [f"{feature}__tt{i}" for i in range(num_cores)]
        self.per_value = multi_valued

    def index_maps(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return qr_digits(ids, self.rows)

    def init_bound(self) -> float:
        a = uniform_bound(self.cardinality)
        k = self.num_cores
        return math.sqrt(3.0) * (a * a / (3.0 * self.rank ** (k - 1))) ** (1.0 / (2 * k))

    def tables(self) -> list[TableSpec]:
        b = self.init_bound()
        return [
            TableSpec(f"{self.feature}__tt{i}", n, r_in * m * r_out, (key,), self.per_value, -b, b)
            for i, (n, (r_in, m, r_out), key) in enumerate(zip(self.rows, self.shapes, self.keys))
        ]

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        digits = self.index_maps(values)
        if self.per_value:  # cores of different widths live in different EmbeddingCollections (one per dim)
            return [([key], d, lengths) for key, d in zip(self.keys, digits)]
        return [(self.keys, torch.cat(digits), lengths.repeat(self.num_cores))]

    def combiner(self) -> Combiner:
        c = Contract(tuple(self.keys), tuple(self.shapes))
        # A contraction is a product of lookups: per value for bags, then pooled.
        return PerValue(c) if self.per_value else c

    def describe(self) -> tuple[str, str]:
        t = "mixed-radix digits " + "x".join(str(r) for r in self.rows)
        c = f"tensor-train contraction, rank {self.rank}, D = " + "x".join(str(m) for _, m, _ in self.shapes)
        return t, c + (" per value, then pooled" if self.per_value else "")


def _naive(m: TTMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    # Digits written out (x mod n, (x // n) mod n, ..., top), then the train contracted with einsum.
    digits, rest = [], values
    for r in m.rows[:-1]:
        digits.append(rest % r)
        rest = rest // r
    digits.append(rest)
    n = values.numel()
    out = torch.ones(n, 1, 1)  # (n, M, r)
    for i, (d, (r_in, mi, r_out)) in enumerate(zip(digits, m.shapes)):
        core = torch.nn.functional.embedding(d, t.weight(f"{m.feature}__tt{i}")).view(n, r_in, mi, r_out)
        out = torch.einsum("nMr,nrms->nMms", out, core).reshape(n, -1, r_out)
    return bag_sum(out.reshape(n, -1), lengths)


def _size(f, s: float, options) -> TTCompression | None:
    """The knob: the largest rank (a multiple of 4) whose cores take at most ``s`` of the feature's
    full bytes; ``None`` (keep full) when even that saves nothing."""
    n, d, k = int(f.cardinality), f.embedding_dim, options.num_cores
    if n < 2**k:
        return None
    target = s * n * d * 4
    rank = 4  # the smallest train, even above the target (the solver's notes say when it misses)
    for r in range(8, 513, 4):
        if tt_bytes(n, d, k, r) > target:
            break
        rank = r
    if tt_bytes(n, d, k, rank) >= n * d * 4:
        return None
    return TTCompression(kind="tt", rank=rank, num_cores=k)


FAMILY = Family(
    schema=SCHEMA,
    build=lambda f, c, ctx: TTMethod(f.name, f.embedding_dim, int(f.cardinality), c.rank, c.num_cores, f.multi_valued),
    naive=_naive,
    solve=per_feature_knob(_size, note="tt: each feature's rank is the largest multiple of 4 within the budget's share"),
    lookup_target=0.7,
    colour="#8c564b",
)
