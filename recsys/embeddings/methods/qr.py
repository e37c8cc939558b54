"""``qr``: compositional embeddings from complementary partitions (Shi et al. 2020).

Id ``x`` is written in mixed radix ``(r_0, ..., r_{k-2}, top)``: digit j is
``(x // (r_0 ... r_{j-1})) mod r_j`` with integer ``floor`` division (exact for every int64, unlike
float division above 2^24); the 2-partition case ``[x mod m, x // m]`` is ``radices = [m]``. The top
digit has ``ceil(N / prod(r))`` rows; every id below the cardinality N gets a unique digit tuple.

Operations: ``mult`` (element-wise product of the k vectors), ``add`` and ``concat``. ``add`` and
``concat`` are linear, so they are applied to bag-pooled outputs. ``mult`` is not: each VALUE's
product is taken first and then pooled; for single-valued features the bag of one is that value
(EmbeddingBagCollection path), multi-valued bags go through an ``EmbeddingCollection``.

Init (so the combined vector has the scale of a full table's torchrec init ``U(-a, a)``,
``a = sqrt(1 / N)``): ``mult`` uses one zero-mean factor ``U(-a0, a0)`` (partition 0) and
ones-centred factors ``U(1 - s, 1 + s)``, ``s = 0.5``, for the others, with
``a0 = a / sqrt((1 + s^2 / 3) ^ (k - 1))`` so the product has exactly the variance ``a^2 / 3``;
``add`` uses ``U(-a / sqrt(k), a / sqrt(k))`` per partition; ``concat`` ``U(-a, a)``.
"""

from __future__ import annotations

import math

import torch

from recsys.embeddings.combine import Combiner, Concat, PerValue, Product, Sum
from recsys.embeddings.methods.base import Chunk, FeatureMethod, split_dim, uniform_bound
from recsys.embeddings.methods.family import Family, NaiveTables, bag_sum, offsets, per_feature_knob
from recsys.embeddings.plan import TableSpec
from recsys.features.methods.qr import SCHEMA, QRCompression

ONES_INIT_SPREAD = 0.5


def qr_num_rows(cardinality: int, radices: tuple[int, ...] | list[int]) -> list[int]:
    """Rows of each partition table: the radices, then ``ceil(N / prod(radices))``."""
    return [*radices, -(-cardinality // math.prod(radices))]


def qr_digits(ids: torch.Tensor, radices: list[int]) -> list[torch.Tensor]:
    """Mixed-radix digits of int64 ids; ``radices`` includes the top digit's radix.

    Every digit lies in ``[0, radices[j])`` for any int64 id; ids in ``[0, prod(radices))``
    map to unique tuples.
    """
    digits = []
    rest = ids
    for r in radices[:-1]:
        digits.append(torch.remainder(rest, r))
        rest = torch.div(rest, r, rounding_mode="floor")
    digits.append(torch.remainder(rest, radices[-1]))
    return digits


class QRMethod(FeatureMethod):
    """Args:
    feature (str): logical feature name.
    output_dim (int): embedding dim D.
    cardinality (int): N; ids lie in ``[0, N)``.
    radices (list[int]): low-digit radices (``[num_collisions]`` for quotient-remainder).
    operation (str): ``mult``, ``add`` or ``concat``.
    multi_valued (bool): bags may hold several values.
    """

    kind = "qr"

    def __init__(
        self,
        feature: str,
        output_dim: int,
        cardinality: int,
        radices: list[int],
        operation: str = "mult",
        multi_valued: bool = False,
    ):
        super().__init__(feature, output_dim, multi_valued)
        if operation not in ("mult", "add", "concat"):
            raise ValueError(f"feature {feature}: operation {operation!r}; allowed 'mult', 'add', 'concat'")
        self.cardinality = cardinality
        self.rows = qr_num_rows(cardinality, list(radices))
        self.operation = operation
        k = len(self.rows)
        self.dims = split_dim(output_dim, k) if operation == "concat" else [output_dim] * k
        self.keys = [f"{feature}__qr{j}" for j in range(k)]
        self.per_value = operation == "mult" and multi_valued

    def index_maps(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return qr_digits(ids, self.rows)

    def _init_bounds(self) -> list[tuple[float, float]]:
        a = uniform_bound(self.cardinality)
        k = len(self.rows)
        if self.operation == "mult":
            s = ONES_INIT_SPREAD
            a0 = a / math.sqrt((1 + s * s / 3) ** (k - 1))
            return [(-a0, a0)] + [(1 - s, 1 + s)] * (k - 1)
        if self.operation == "add":
            return [(-a / math.sqrt(k), a / math.sqrt(k))] * k
        return [(-a, a)] * k

    def tables(self) -> list[TableSpec]:
        return [
            TableSpec(f"{self.feature}__qr{j}", rows, dim, (key,), self.per_value, lo, hi)
            for j, (rows, dim, key, (lo, hi)) in enumerate(zip(self.rows, self.dims, self.keys, self._init_bounds()))
        ]

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        k = len(self.rows)
        return [(self.keys, torch.cat(self.index_maps(values)), lengths.repeat(k))]

    def combiner(self) -> Combiner:
        keys = tuple(self.keys)
        if self.operation == "concat":
            return Concat(keys)
        if self.operation == "add":
            return Sum(keys)
        # A product does not commute with pooling: bags take each value's product, then pool.
        return PerValue(Product(keys)) if self.per_value else Product(keys)

    def describe(self) -> tuple[str, str]:
        if len(self.rows) == 2:
            m = self.rows[0]
            t = f"x mod {m}, x // {m}"
        else:
            t = "mixed-radix digits " + "x".join(str(r) for r in self.rows)
        c = self.operation + (" per value, then pooled" if self.per_value else "")
        return t, c


def _naive(m: QRMethod, t: NaiveTables, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    # Digits written out: x mod r0, (x // r0) mod r1, ..., top = x // prod(r) (ids < N).
    digits, rest = [], values
    for r in m.rows[:-1]:
        digits.append(rest % r)
        rest = rest // r
    digits.append(rest)
    tables = [t.bag(f"{m.feature}__qr{j}") for j in range(len(m.rows))]
    if m.operation == "mult":
        per_value = torch.nn.functional.embedding(digits[0], tables[0].weight)
        for d, table in zip(digits[1:], tables[1:]):
            per_value = per_value * torch.nn.functional.embedding(d, table.weight)
        return bag_sum(per_value, lengths)
    offs = offsets(lengths)
    parts = [table(d, offs) for d, table in zip(digits, tables)]
    return sum(parts[1:], parts[0]) if m.operation == "add" else torch.cat(parts, 1)


def qr_collisions(n: int, rows: float) -> int:
    """num_collisions m with m + ceil(n / m) ~ rows (smaller root), within [2, sqrt(n)]."""
    root = math.isqrt(n)
    if rows * rows < 4 * n:
        return max(2, root)
    m = (rows - math.sqrt(rows * rows - 4 * n)) / 2
    return int(min(max(2, round(m)), max(2, root)))


def _size(f, s: float, options) -> QRCompression | None:
    """The knob: target rows ``R = s * N`` (twice for concat, whose tables are half as wide) ->
    ``num_collisions`` m, the smaller root of ``m + N / m = R``."""
    n = int(f.cardinality)
    if n < 8:
        return None
    m = qr_collisions(n, s * n * (2 if options.operation == "concat" else 1))
    return QRCompression(kind="qr", num_collisions=m, **options.model_dump()) if m < n else None


FAMILY = Family(
    schema=SCHEMA,
    build=lambda f, c, ctx: QRMethod(f.name, f.embedding_dim, int(f.cardinality), list(c.low_radices), c.operation, f.multi_valued),
    naive=_naive,
    solve=per_feature_knob(
        _size, note="qr with 2 partitions spans ~2/sqrt(N) .. 1/2 of a feature's full rows (num_collisions in [2, sqrt(N)])"
    ),
    lookup_target=0.7,
    colour="#2ca02c",
)
