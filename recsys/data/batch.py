"""Training batches: Arrow rows -> ``Batch(dense, KeyedJaggedTensor, labels)``.

:func:`collate` turns a ``pyarrow.Table`` / ``RecordBatch`` in the ingest layout
(:mod:`recsys.data.layout`) into a :class:`Batch` straight from the Arrow buffers: no per-row
Python, one copy of each column into the batch's own tensors. :func:`validate_columns` and
:func:`check_ranges` are the edge checks (once per data set, not per batch): the columns and
their Arrow types match the spec, and every id lies in ``[0, cardinality)``.

The sparse part of a batch of ``B = 3`` rows with features ``C1`` (single-valued) and
``M1`` (multi-valued, row 1 an empty list)::

    #        i = 0     i = 1    i = 2   <-- batch index
    # "C1"   [4]       [7]      [1]
    # "M1"   [2, 5]    []       [3, 3, 9]
    #
    # keys    = ["C1", "M1"]                 spec order
    # values  = [4, 7, 1, 2, 5, 3, 3, 9]     int64, key-major: all rows of C1, then of M1
    # lengths = [1, 1, 1, 2, 0, 3]           (F * B,) int32
    # offsets = [0, 1, 2, 3, 5, 5, 8]        (F * B + 1,) int32
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from recsys.features.spec import DatasetSpec, SparseFeature

__all__ = ["Batch", "collate", "batch_columns", "validate_columns", "check_ranges"]


@dataclass
class Batch(Pipelineable):
    """One training batch; a torchrec ``Pipelineable`` so TrainPipelines can copy it to a device.

    Mirrors ``torchrec.datasets.utils.Batch`` with shorter field names.

    Args:
        dense: ``(B, num_dense)`` float32, columns in spec order (``(B, 0)`` without dense features).
        sparse: KeyedJaggedTensor, keys = the spec's sparse features in spec order, int64 values,
            one length per key and row (see the module docstring for the layout).
        labels: ``(B,)`` float32.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=torch.device(device), non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(dense=self.dense.pin_memory(), sparse=self.sparse.pin_memory(), labels=self.labels.pin_memory())


# -- edge checks ------------------------------------------------------------------------------


def batch_columns(spec: DatasetSpec) -> list[str]:
    """The columns :func:`collate` reads: label, dense, sparse (spec order; no timestamp)."""
    return [f.name for f in spec.features]


def _expected_type(f) -> str:
    if isinstance(f, SparseFeature):
        return "list<int64>" if f.multi_valued else "int64"
    return "float32"


def _type_ok(f, t: pa.DataType) -> bool:
    if isinstance(f, SparseFeature):
        if f.multi_valued:
            return (pa.types.is_list(t) or pa.types.is_large_list(t)) and t.value_type == pa.int64()
        return t == pa.int64()
    return t == pa.float32()


def validate_columns(schema: pa.Schema, spec: DatasetSpec, *, source: str = "<table>") -> None:
    """Check that a schema holds every column :func:`collate` needs, with the ingest layout's types.

    Columns the spec does not list (other than its timestamp) are errors too: they usually mean
    the data set was written with another spec.

    Args:
        schema: the Arrow schema of a table or parquet file.
        spec: the data set's feature spec.
        source: what the schema belongs to (a file path), for the message.

    Raises:
        ValueError: naming the missing and unexpected columns and every type mismatch at once.
    """
    if spec.label is None:
        raise ValueError(f"feature spec {spec.name!r} has no label feature; a training Batch needs one")
    names = schema.names
    wanted = batch_columns(spec)
    allowed = set(wanted) | ({spec.timestamp} if spec.timestamp else set())
    problems = []
    missing = [c for c in wanted if c not in names]
    unexpected = [c for c in names if c not in allowed]
    if missing:
        problems.append(f"missing columns {missing}")
    if unexpected:
        problems.append(f"unexpected columns {unexpected}")
    for f in spec.features:
        if f.name in names and not _type_ok(f, schema.field(f.name).type):
            kind = f"multi-valued, max_length {f.max_length}" if getattr(f, "multi_valued", False) else f.kind
            problems.append(
                f"column {f.name!r} ({kind}) has type {schema.field(f.name).type}; expected {_expected_type(f)}"
            )
    if problems:
        raise ValueError(
            f"{source}: columns do not match feature spec {spec.name!r}: " + "; ".join(problems)
            + " (re-ingest the data with this spec, or pass the spec it was written with)"
        )


def check_ranges(files: Sequence[str | Path], spec: DatasetSpec, *, batch_rows: int = 1 << 20) -> dict[str, tuple[int, int]]:
    """Scan parquet files and check every id of every vocabulary feature is in ``[0, cardinality)``.

    Training calls this once before it starts: an id outside its table would otherwise be an
    out-of-bounds lookup deep inside FBGEMM. Features with ``cardinality: raw`` are skipped
    (hashing maps any int64).

    Args:
        files: parquet files of a data set (e.g. ``layout.split_files(root, "train")``).
        spec: the resolved feature spec (real cardinalities, from ``layout.dataset_spec``).
        batch_rows: rows read at a time (bounds memory).

    Returns:
        Per checked feature, the ``(min, max)`` id seen (``(0, -1)`` if no ids at all).

    Raises:
        ValueError: naming the feature, the offending value, its file and row, and the allowed range.
    """
    feats = [f for f in spec.sparse if f.has_vocab]
    seen = {f.name: (np.iinfo(np.int64).max, np.iinfo(np.int64).min) for f in feats}
    for path in files:
        pf = pq.ParquetFile(path)
        validate_columns(pf.schema_arrow, spec, source=str(path))
        row0 = 0
        for rb in pf.iter_batches(batch_size=batch_rows, columns=[f.name for f in feats]):
            for f in feats:
                col = rb.column(f.name)
                ids = pc.list_flatten(col) if f.multi_valued else col
                if len(ids) == 0:
                    continue
                mm = pc.min_max(ids)
                lo, hi = mm["min"].as_py(), mm["max"].as_py()
                if lo < 0 or hi >= int(f.cardinality):
                    bad = lo if lo < 0 else hi
                    row = row0 + _first_row_with(col, bad, f.multi_valued)
                    raise ValueError(
                        f"feature {f.name!r}: id {bad} in {path} (row {row}) is outside [0, {f.cardinality}); "
                        f"ids must be vocabulary indices < cardinality {f.cardinality}: re-ingest the data, "
                        "or use the spec from its manifest (layout.dataset_spec)"
                    )
                old = seen[f.name]
                seen[f.name] = (min(old[0], lo), max(old[1], hi))
            row0 += rb.num_rows
    return {k: (lo, hi) if lo <= hi else (0, -1) for k, (lo, hi) in seen.items()}


def _first_row_with(col: pa.Array, value: int, multi_valued: bool) -> int:
    if multi_valued:
        # Row of the first matching value: parent indices map flattened positions to rows.
        flat_pos = pc.index(pc.list_flatten(col), value).as_py()
        return int(pc.list_parent_indices(col)[flat_pos].as_py())
    return int(pc.index(col, value).as_py())


# -- collate ----------------------------------------------------------------------------------


def _chunks(table: pa.Table | pa.RecordBatch, name: str) -> list[pa.Array]:
    col = table.column(name)
    return col.chunks if isinstance(col, pa.ChunkedArray) else [col]


def _fill_column(out: np.ndarray, chunks: Iterable[pa.Array], name: str) -> None:
    """Copy a fixed-width column chunk by chunk into ``out`` (a possibly strided 1-D view)."""
    pos = 0
    for chunk in chunks:
        if chunk.null_count:
            raise ValueError(f"column {name!r} has {chunk.null_count} null values; the ingest layout has none")
        n = len(chunk)
        out[pos : pos + n] = chunk.to_numpy(zero_copy_only=False)
        pos += n


def _list_chunk(chunk: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of one list<int64> chunk, whatever its slice offset; null lists are empty."""
    if chunk.null_count:
        chunk = chunk.fill_null(pa.scalar([], chunk.type))
    offsets = chunk.offsets.to_numpy()  # (n + 1,), absolute into the child array: may not start at 0
    start, stop = int(offsets[0]), int(offsets[-1])
    child = chunk.values.slice(start, stop - start)  # .values ignores the slice; cut it ourselves
    if child.null_count:
        raise ValueError(f"column {name!r} has {child.null_count} null ids inside its lists")
    return child.to_numpy(), np.diff(offsets)


def collate(table: pa.Table | pa.RecordBatch, spec: DatasetSpec) -> Batch:
    """Build a :class:`Batch` from Arrow rows in the ingest layout, without per-row Python.

    Single-valued int64 columns become values directly (lengths all 1); list<int64> columns
    contribute their (sliced) child values and ``diff(offsets)`` as lengths, so sliced tables,
    chunked columns and null lists (= empty) all work. Types are not re-checked here (hot path):
    call :func:`validate_columns` once per data set.

    Args:
        table: ``B`` rows holding at least :func:`batch_columns` of ``spec``.
        spec: the data set's feature spec.

    Returns:
        ``Batch`` with ``dense (B, num_dense)``, ``labels (B,)`` and the KJT drawn below, built with
        lengths, offsets, stride and per-key lengths so torchrec needs no device sync to read them.

    Example::

        #        i = 0     i = 1    i = 2
        # "C1"   [4]       [7]      [1]
        # "M1"   [2, 5]    []       [3, 3, 9]
        batch = collate(pa.table({"label": ..., "I1": ..., "C1": [4, 7, 1], "M1": [[2, 5], [], [3, 3, 9]]}), spec)
        batch.sparse.values()   # tensor([4, 7, 1, 2, 5, 3, 3, 9])
        batch.sparse.lengths()  # tensor([1, 1, 1, 2, 0, 3], dtype=torch.int32)
    """
    b = table.num_rows
    sparse = spec.sparse
    num_keys = len(sparse)

    value_parts: list[np.ndarray] = []
    lengths = np.empty(num_keys * b, dtype=np.int32)  # (F * B,)
    length_per_key: list[int] = []
    for k, f in enumerate(sparse):
        key_lengths = lengths[k * b : (k + 1) * b]
        if not f.multi_valued:
            for chunk in _chunks(table, f.name):
                if chunk.null_count:
                    raise ValueError(f"column {f.name!r} (sparse ids) has {chunk.null_count} null values")
                value_parts.append(chunk.to_numpy())  # zero-copy view of the Arrow buffer
            key_lengths.fill(1)
            length_per_key.append(b)
            continue
        pos, total = 0, 0
        for chunk in _chunks(table, f.name):
            vals, lens = _list_chunk(chunk, f.name)
            value_parts.append(vals)
            key_lengths[pos : pos + lens.size] = lens
            pos += lens.size
            total += vals.size
        length_per_key.append(total)

    # The one copy of the ids: Arrow buffers -> one contiguous, writable, key-major tensor.
    values = np.concatenate(value_parts) if value_parts else np.empty(0, np.int64)  # (sum lengths,)
    if values.size >= 2**31:  # int32 offsets would overflow; torchrec wants one index dtype
        lengths = lengths.astype(np.int64)
    offsets = np.zeros(num_keys * b + 1, dtype=lengths.dtype)  # (F * B + 1,)
    np.cumsum(lengths, out=offsets[1:])
    offset_per_key = np.concatenate([[0], np.cumsum(length_per_key)]).tolist()
    kjt = KeyedJaggedTensor(
        keys=[f.name for f in sparse],
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(lengths),
        offsets=torch.from_numpy(offsets),
        stride=b,
        length_per_key=length_per_key,
        offset_per_key=offset_per_key,
    )

    dense = np.empty((b, len(spec.dense)), dtype=np.float32)  # (B, D)
    for j, f in enumerate(spec.dense):
        _fill_column(dense[:, j], _chunks(table, f.name), f.name)
    labels = np.empty(b, dtype=np.float32)  # (B,)
    _fill_column(labels, _chunks(table, spec.label.name), spec.label.name)
    return Batch(dense=torch.from_numpy(dense), sparse=kjt, labels=torch.from_numpy(labels))
