"""Compression specs: how a sparse feature's ids become rows of physical TorchRec tables.

A tagged union on ``kind``; each kind has its own typed, frozen schema. They are compiled into
plans (index transform -> physical TorchRec tables -> combiner) by :mod:`recsys.embeddings`.

Example (YAML, inside a sparse feature)::

    compression: {kind: full}
    compression: {kind: hashed, num_buckets: 1000000}
    compression: {kind: multi_hash, num_buckets: 500000, num_hashes: 2, combiner: sum, importance_weights: true}
    compression: {kind: qr, num_collisions: 64, operation: mult}
    compression: {kind: qr, radices: [256, 256], operation: concat}     # 3 partitions (mixed radix)
    compression: {kind: mixed_dim, num_blocks: 4, alpha: 0.5}
    compression: {kind: unified, group: shared}   # the group is declared in the spec's `groups:`

Checks that need the feature (cardinality, embedding_dim) live in
:class:`recsys.features.spec.SparseFeature`; checks across features (unified groups) in
:class:`recsys.features.spec.DatasetSpec`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recsys.features.errors import NAME_PATTERN as _NAME_PATTERN
from recsys.features.errors import Problem, Problems

# Hyperparameter types shared by the compression kinds and the budget solver's options
# (recsys.features.budget_options), so both accept exactly the same values.
NumHashes = Annotated[int, Field(ge=2, le=8)]
MultiHashCombiner = Literal["sum", "concat"]
QROperation = Literal["mult", "add", "concat"]
NumBlocks = Annotated[int, Field(ge=2, le=16)]
NumChunks = Annotated[int, Field(ge=1, le=16)]
NumTables = Annotated[int, Field(ge=1)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FullCompression(_Spec):
    """One ``cardinality x embedding_dim`` table over the feature's vocabulary (the baseline)."""

    kind: Literal["full"] = "full"


class HashedCompression(_Spec):
    """Hashing trick: row ``h_f(x) mod num_buckets`` of one ``num_buckets x embedding_dim`` table.

    Args:
        num_buckets: rows of the table (>= 1).
    """

    kind: Literal["hashed"]
    num_buckets: Annotated[int, Field(ge=1)]


class MultiHashCompression(_Spec):
    """``num_hashes`` independent hashes into ONE shared ``num_buckets``-row table.

    Args:
        num_buckets: rows of the shared table.
        num_hashes: k >= 2 probes per id.
        combiner: ``sum`` (each probe has the feature's dim) or ``concat`` (the feature's dim is
            split into k parts, each a multiple of 4).
        importance_weights: learn k weights per id (hash embeddings, Svenstrup et al. 2017), read
            from a second hashed table of ``num_weight_buckets`` rows; the probe vectors are
            weighted per id, before bag pooling.
        num_weight_buckets: rows of the importance-weight table; default ``num_buckets``.
    """

    kind: Literal["multi_hash"]
    num_buckets: Annotated[int, Field(ge=1)]
    num_hashes: NumHashes = 2
    combiner: MultiHashCombiner = "sum"
    importance_weights: bool = False
    num_weight_buckets: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _weight_buckets_need_weights(self) -> "MultiHashCompression":
        if self.num_weight_buckets is not None and not self.importance_weights:
            raise Problems([Problem(
                "num_weight_buckets",
                f"got {self.num_weight_buckets} but importance_weights is false; set importance_weights: true or remove num_weight_buckets",
            )])
        return self


class QRCompression(_Spec):
    """Compositional embeddings from complementary partitions (Shi et al. 2020).

    Two partitions: ``x mod m`` (``m`` rows) and ``x // m`` (``ceil(N / m)`` rows) with
    ``m = num_collisions``. k partitions: mixed-radix digits of ``x`` with the given ``radices``
    for the low digits; the top digit gets ``ceil(N / prod(radices))`` rows. Every id below the
    cardinality gets a unique tuple of rows.

    Args:
        num_collisions: ``m`` of the 2-partition (ids sharing a quotient row); or
        radices: explicit low-digit radices ``[r_0, ..., r_{k-2}]`` (k partitions).
        operation: ``mult`` (element-wise product, per value then pooled), ``add`` or ``concat``.
    """

    kind: Literal["qr"]
    num_collisions: Annotated[int, Field(ge=2)] | None = None
    radices: tuple[Annotated[int, Field(ge=2)], ...] | None = None
    operation: QROperation = "mult"

    @model_validator(mode="after")
    def _one_partitioning(self) -> "QRCompression":
        if (self.num_collisions is None) == (self.radices is None):
            got = "neither num_collisions nor radices" if self.num_collisions is None else "both num_collisions and radices"
            raise Problems([Problem("", (
                f"got {got}; give exactly one of num_collisions (2 partitions) "
                "or radices (k partitions)"
            ))])
        if self.radices is not None and len(self.radices) < 1:
            raise Problems([Problem("radices", "got []; give at least one radix (>= 2), or use num_collisions")])
        return self

    @property
    def low_radices(self) -> tuple[int, ...]:
        return (self.num_collisions,) if self.num_collisions is not None else tuple(self.radices)


class MixedDimCompression(_Spec):
    """Mixed-dimension embeddings (Ginart et al. 2021) over frequency-ordered ids.

    Ids ``0..N-1`` (0 = OOV, then by descending frequency) are split into ``num_blocks`` blocks;
    block i gets dim ``d_i = round4(base_dim * (p_i / p_0) ** alpha)`` where ``p_i`` is the mean
    popularity of an id in block i (hot blocks keep large dims), and a projection ``d_i -> D``.

    Args:
        num_blocks: number of frequency blocks (>= 2).
        alpha: temperature of the power law, in ``(0, 1]``; 0 would be uniform dims.
        base_dim: dim of the hottest block; default the feature's ``embedding_dim``.
        block_boundaries: explicit increasing start indices of blocks 1.. (``num_blocks - 1``
            values in ``(0, cardinality)``); default geometric ``N ** (i / num_blocks)``.
        block_dims: explicit dims of the ``num_blocks`` blocks (multiples of 4), with
            ``block_boundaries``; default derived from the popularity law above. ``recsys train``
            writes both into the resolved spec, so a checkpoint rebuilds its model without the
            data set's vocabulary counts.
    """

    kind: Literal["mixed_dim"]
    num_blocks: NumBlocks = 4
    alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    base_dim: Annotated[int, Field(ge=4)] | None = None
    block_boundaries: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    block_dims: tuple[Annotated[int, Field(ge=4)], ...] | None = None

    @field_validator("base_dim")
    @classmethod
    def _dim_multiple_of_4(cls, v: int | None) -> int | None:
        if v is not None and v % 4:
            raise ValueError(f"got {v}; FBGEMM's fused kernels need a multiple of 4 (e.g. {v + 4 - v % 4})")
        return v

    @model_validator(mode="after")
    def _boundaries(self) -> "MixedDimCompression":
        b = self.block_boundaries
        if b is not None:
            if len(b) != self.num_blocks - 1:
                raise Problems([Problem(
                    "block_boundaries",
                    f"got {list(b)} ({len(b)} values); num_blocks {self.num_blocks} needs {self.num_blocks - 1}",
                )])
            if any(x >= y for x, y in zip(b, b[1:])):
                raise Problems([Problem("block_boundaries", f"got {list(b)}; the boundaries must be strictly increasing")])
        d = self.block_dims
        if d is not None:
            if b is None:
                raise Problems([Problem("block_dims", f"got {list(d)}; block_dims needs block_boundaries too")])
            if len(d) != self.num_blocks:
                raise Problems([Problem("block_dims", f"got {list(d)} ({len(d)} values); num_blocks {self.num_blocks} needs {self.num_blocks}")])
            if any(x % 4 for x in d):
                raise Problems([Problem("block_dims", f"got {list(d)}; FBGEMM's fused kernels need multiples of 4")])
        return self


class UnifiedCompression(_Spec):
    """Feature multiplexing (Coleman et al. 2023): the feature shares the table(s) of a group.

    Args:
        group: name of a group declared in the data set spec's ``groups:`` list.
    """

    kind: Literal["unified"]
    group: str = Field(pattern=_NAME_PATTERN)


class FeatureGroup(_Spec):
    """A multiplexed group: ``num_tables`` shared ``num_buckets x (embedding_dim / num_chunks)`` tables.

    Each feature of the group hashes its ids ``num_chunks`` times with its own seeds (one per
    chunk) and concatenates the lookups; chunk c reads table ``c mod num_tables``.

    Args:
        name: the group name features refer to with ``{kind: unified, group: NAME}``.
        num_buckets: rows of each shared table.
        num_chunks: lookups per feature; the feature's dim is split into equal chunks (multiples of 4).
        num_tables: shared tables, chunks assigned round-robin (<= num_chunks).
    """

    name: str = Field(pattern=_NAME_PATTERN)
    num_buckets: Annotated[int, Field(ge=1)]
    num_chunks: NumChunks = 1
    num_tables: NumTables = 1

    @model_validator(mode="after")
    def _tables_le_chunks(self) -> "FeatureGroup":
        check_tables_le_chunks(self.num_tables, self.num_chunks)
        return self


def check_tables_le_chunks(num_tables: int, num_chunks: int) -> None:
    """Raises :class:`Problems` at ``num_tables`` when a shared table would get no chunk."""
    if num_tables > num_chunks:
        raise Problems([Problem(
            "num_tables", f"got {num_tables}; allowed: <= num_chunks ({num_chunks}), since a table needs at least one chunk"
        )])


CompressionSpec = Annotated[
    Union[FullCompression, HashedCompression, MultiHashCompression, QRCompression, MixedDimCompression, UnifiedCompression],
    Field(discriminator="kind"),
]

COMPRESSION_KINDS: tuple[str, ...] = ("full", "hashed", "multi_hash", "qr", "mixed_dim", "unified")
