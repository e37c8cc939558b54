"""Plans: what a compressed collection is made of, and its exact memory.

A plan lists the physical TorchRec tables (rows x dim), the dense projections, and per logical
feature its index transform and combiner. Memory is counted from the tables and projections
themselves, so ``plan.weight_bytes + plan.projection_bytes`` equals the bytes of the module's
parameters; optimizer state is an estimate reported separately.

Example printout (``print(collection.plan().format())``)::

    feature  kind       out  transform                        combiner            tables
    C1       hashed     16   splitmix64(x, seed) mod 1000     identity            C1__hashed
    ...
    table            rows      dim   bytes        init
    C1__hashed       1000      16    64,000       U(-0.0316, 0.0316)
    ...
    weights 1.2 MB + projections 0 B = 1.2 MB; full tables 4.8 MB; ratio 0.250 (1/4.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.features.methods.base import PRECISION_BYTES

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class TableSpec:
    """One physical TorchRec table.

    Attributes:
        name: table name (unique in the collection).
        num_embeddings: rows.
        embedding_dim: columns (a multiple of 4 for FBGEMM).
        feature_names: physical features that read it (several for shared tables).
        per_value: in an ``EmbeddingCollection`` (per-value vectors, combined before pooling)
            instead of the ``EmbeddingBagCollection``.
        init_min, init_max: uniform init bounds.
        precision: ``fp32`` or ``fp16`` rows (FBGEMM ``weights_precision``); bytes count it.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: tuple[str, ...]
    per_value: bool = False
    init_min: float = -0.01
    init_max: float = 0.01
    precision: str = "fp32"

    @property
    def num_bytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * PRECISION_BYTES[self.precision]


@dataclass(frozen=True)
class ProjectionSpec:
    """A dense ``in_dim x out_dim`` matrix (mixed-dimension blocks)."""

    name: str
    in_dim: int
    out_dim: int
    init: str = "N(0, 1/in)"

    @property
    def num_bytes(self) -> int:
        return self.in_dim * self.out_dim * FLOAT32_BYTES


@dataclass(frozen=True)
class FeaturePlan:
    """How one logical feature is embedded."""

    feature: str
    kind: str
    output_dim: int
    pooling: str
    transform: str
    combiner: str
    tables: tuple[str, ...]
    full_bytes: int | None  # None for raw-id features (no full table exists)


@dataclass(frozen=True)
class EmbeddingPlan:
    """The compiled plan of a whole collection."""

    features: tuple[FeaturePlan, ...]
    tables: tuple[TableSpec, ...]
    projections: tuple[ProjectionSpec, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def weight_bytes(self) -> int:
        return sum(t.num_bytes for t in self.tables)

    @property
    def projection_bytes(self) -> int:
        return sum(p.num_bytes for p in self.projections)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.projection_bytes

    @property
    def full_bytes(self) -> int:
        """Bytes of one full ``cardinality x embedding_dim`` table per feature (raw-id features excluded)."""
        return sum(f.full_bytes or 0 for f in self.features)

    @property
    def ratio(self) -> float:
        """``total_bytes / full_bytes`` over the features that have a full-table baseline."""
        return self.total_bytes / self.full_bytes if self.full_bytes else float("nan")

    def optimizer_bytes(self, optimizer: str) -> int:
        """Estimated optimizer state: ``rowwise_adagrad`` (one float per table row, full state for
        projections) or ``adam`` (two floats per parameter)."""
        if optimizer == "rowwise_adagrad":
            return sum(t.num_embeddings * FLOAT32_BYTES for t in self.tables) + self.projection_bytes
        if optimizer == "adam":  # two FP32 moments per value, whatever the rows' precision
            return 2 * (sum(t.num_embeddings * t.embedding_dim * FLOAT32_BYTES for t in self.tables) + self.projection_bytes)
        if optimizer == "sgd":
            return 0
        raise ValueError(f"optimizer {optimizer!r}: allowed 'sgd', 'rowwise_adagrad', 'adam'")

    def format(self) -> str:
        """A human-readable table of features, physical tables and bytes."""
        rows = [("feature", "kind", "out", "pool", "transform", "combiner", "tables")]
        rows += [
            (f.feature, f.kind, str(f.output_dim), f.pooling, f.transform, f.combiner, ",".join(f.tables))
            for f in self.features
        ]
        lines = _columns(rows)
        lines.append("")
        trows = [("table", "rows", "dim", "bytes", "collection", "init", "precision")]
        trows += [
            (
                t.name,
                f"{t.num_embeddings:,}",
                str(t.embedding_dim),
                f"{t.num_bytes:,}",
                "EC (per value)" if t.per_value else "EBC",
                f"U({t.init_min:.4g}, {t.init_max:.4g})",
                t.precision,
            )
            for t in self.tables
        ]
        trows += [(p.name, f"{p.in_dim}x{p.out_dim}", "-", f"{p.num_bytes:,}", "projection", p.init, "fp32") for p in self.projections]
        lines += _columns(trows)
        lines.append("")
        ratio = self.ratio
        lines.append(
            f"weights {_human(self.weight_bytes)} + projections {_human(self.projection_bytes)} = "
            f"{_human(self.total_bytes)} ({self.total_bytes:,} B); full tables {_human(self.full_bytes)}; "
            f"ratio {ratio:.4f} (1/{1 / ratio:.1f})" if ratio and ratio == ratio else "ratio n/a"
        )
        lines.append(
            f"optimizer state (estimate): rowwise_adagrad {_human(self.optimizer_bytes('rowwise_adagrad'))}, "
            f"adam {_human(self.optimizer_bytes('adam'))}"
        )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"
