"""Generic parquet ingest, and the split and bad-row rules every ingest source shares.

    recsys ingest parquet PATH --spec features/X.yaml --out DIR [--split 0.8,0.1,0.1] [--timestamp-split]
    recsys ingest parquet PATH --spec features/X.yaml --out DIR --skip-bad-rows

PATH is one parquet file or a folder of them (read recursively, in sorted path order). Its
columns must hold every spec feature with raw values: sparse ids as integers (lists of integers
for multi-valued features), dense values as numbers, the label as a number, and the spec's
timestamp column (integer seconds) when the spec has one. Other columns are ignored (listed in
the manifest as ``ignored_columns``).

Missing values: a null sparse id becomes raw id ``-1`` (as a missing Criteo categorical; the
vocabulary treats it like any id), a null list is empty, a null dense value is missing (the
writer stores 0). A dense NaN, +inf or -inf is treated as missing too (stored as 0 before the
transform) and counted per feature in the manifest's ``nonfinite_dense``. A null or non-finite
label or a null timestamp makes the row bad: an error naming file, row (1-based within the file)
and field, or with ``skip_bad_rows`` a skipped, counted row.

Split rules (shared by every source):

* **row order** (:func:`row_order_boundaries`): the first ``round(N * f_train)`` rows are train,
  the next rows up to ``round(N * (f_train + f_validation))`` validation, the rest test, where N
  counts every input row (bad rows included, so boundaries do not move when rows are skipped).
* **timestamp** (:func:`timestamp_boundaries`): global time quantiles. With the good rows'
  timestamps sorted as ``s``, boundary ``k`` is ``s[round(N * (f_0 + ... + f_k))]``; a row goes
  to the first split whose boundary is greater than its timestamp. Rows sharing a timestamp
  always land in the same split (ties go to the later split), so no instant is cut in two and
  split sizes are the fractions up to the rows of the boundary instants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.layout import SPLITS
from recsys.data.writer import DatasetWriter
from recsys.features.spec import DatasetSpec, DenseFeature, LabelFeature, SparseFeature

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
MISSING_ID = -1
MAX_EXAMPLES = 10


# -- split rules --------------------------------------------------------------------------------
FRACTIONS_ALLOWED = "expected 3 fractions > 0 (train, validation, test) that sum to 1, e.g. 0.8,0.1,0.1"


def fractions_problem(values: Sequence[float]) -> str | None:
    """Why (train, validation, test) fractions are not allowed, or None when they are."""
    if len(values) != 3:
        return f"got {len(values)} fraction(s)"
    for name, f in zip(SPLITS, values):
        if not np.isfinite(f) or f <= 0:
            return f"{name} fraction {f:g} is not > 0 (every split needs rows)"
    if abs(sum(values) - 1) > 1e-6:
        return f"fractions sum to {sum(values):g}"
    return None


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, validation, test) fractions: three numbers > 0 that sum to 1.

    A zero fraction is refused: every split must receive rows (training needs train rows,
    model selection validation rows, the final report test rows).

    Raises:
        ValueError: naming ``--split``, the fractions received and what is allowed.
    """
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"--split {list(fractions)}: not numbers; {FRACTIONS_ALLOWED}") from None
    problem = fractions_problem(values)
    if problem:
        raise ValueError(f"--split {','.join(f'{f:g}' for f in values)}: {problem}; {FRACTIONS_ALLOWED}")
    return values  # type: ignore[return-value]


def row_order_boundaries(num_rows: int, fractions: Sequence[float]) -> list[int]:
    """Row positions where validation and test start (0-based positions ``< b[0]`` are train)."""
    cum = np.cumsum(fractions)[:-1]
    return [int(round(num_rows * c)) for c in cum]


def timestamp_boundaries(timestamps: np.ndarray, fractions: Sequence[float]) -> list[int]:
    """Timestamps where validation and test start (see the module docstring for ties)."""
    ts = np.sort(np.asarray(timestamps, np.int64))
    if ts.size == 0:
        return [0, 0]
    return [int(ts[k]) if k < ts.size else int(ts[-1]) + 1 for k in row_order_boundaries(ts.size, fractions)]


def split_codes(keys: np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    """0 / 1 / 2 (train / validation / test) for row positions or timestamps."""
    return np.searchsorted(np.asarray(boundaries, np.int64), keys, side="right")


def add_by_split(writer: DatasetWriter, table: pa.Table, codes: np.ndarray) -> None:
    """Hand each split's rows of ``table`` to the writer (row order kept)."""
    for code, split in enumerate(SPLITS):
        mask = codes == code
        if mask.all():
            writer.add(split, table)
        elif mask.any():
            writer.add(split, table.filter(pa.array(mask)))


def check_split_rows(writer: DatasetWriter, how: str) -> None:
    """Refuse to finish a data set with an empty split (tiny input, or every row skipped there).

    Args:
        writer: the writer, after every row was added.
        how: how rows were split, for the message (e.g. ``"fractions 0.8,0.1,0.1 by row order"``).

    Raises:
        ValueError: naming the empty split and the rows each split received.
    """
    rows = writer.rows
    for split in SPLITS:
        if rows[split] == 0:
            counts = ", ".join(f"{rows[s]} {s}" for s in SPLITS)
            raise ValueError(
                f"split {split!r} has 0 rows after splitting ({counts}; {how}); every split needs rows: "
                "give more input rows, or a larger fraction for that split"
            )


# -- bad rows -------------------------------------------------------------------------------------
class BadRows:
    """Raises on the first bad row, or (``skip=True``) counts them and keeps a few examples.

    Args:
        skip: count and skip bad rows instead of raising.
        unit: what a position is called in messages: ``line`` (text files) or ``row`` (parquet).
        max_examples: how many bad rows to keep as examples for the manifest.
    """

    def __init__(self, skip: bool, *, unit: str = "line", max_examples: int = MAX_EXAMPLES):
        self.skip = skip
        self.unit = unit
        self.max_examples = max_examples
        self.count = 0
        self.examples: list[dict[str, Any]] = []

    def found(self, file: str | Path, positions: np.ndarray, reason: Callable[[int], str]) -> None:
        """Record bad rows of one file.

        Args:
            file: the file they came from.
            positions: their 1-based line / row numbers, ascending.
            reason: position -> why it is bad; called only for the first few.

        Raises:
            ValueError: ``"FILE, line N: field X: got V; expected ..."`` unless skipping.
        """
        if len(positions) == 0:
            return
        if not self.skip:
            first = int(positions[0])
            raise ValueError(
                f"{file}, {self.unit} {first}: {reason(first)} (or rerun with --skip-bad-rows to skip and count bad rows)"
            )
        self.count += len(positions)
        for p in positions[: max(0, self.max_examples - len(self.examples))]:
            self.examples.append({"file": str(file), self.unit: int(p), "reason": reason(int(p))})

    def manifest(self) -> dict[str, Any]:
        return {"skipped_rows": self.count, "skipped_examples": self.examples}


def show(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- parquet source -------------------------------------------------------------------------------
def parquet_files(path: str | Path) -> list[Path]:
    """PATH itself, or every ``*.parquet`` under the folder PATH (sorted; hidden names skipped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give a parquet file or a folder of them")
    if path.is_file():
        return [path]
    files = sorted(
        p for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise ValueError(f"{path}: folder holds no *.parquet files")
    return files


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from None


def _check_schema(path: Path, schema: pa.Schema, spec: DatasetSpec, columns: list[str]) -> None:
    problems = []
    for name in columns:
        if name not in schema.names:
            problems.append(f"column {name!r} is missing")
            continue
        t = schema.field(name).type
        f = spec.feature(name) if name != spec.timestamp else None
        if f is None:
            ok, allowed = pa.types.is_integer(t), "integer seconds (timestamp)"
        elif isinstance(f, SparseFeature) and f.multi_valued:
            ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
            allowed = "a list of integer raw ids (multi-valued sparse)"
        elif isinstance(f, SparseFeature):
            ok, allowed = pa.types.is_integer(t), "integer raw ids (sparse)"
        else:
            ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            allowed = "numbers (" + ("label" if isinstance(f, LabelFeature) else "dense") + ")"
        if not ok:
            problems.append(f"column {name!r} has type {t}; expected {allowed}")
    if problems:
        raise ValueError(f"{path}: columns do not match feature spec {spec.name!r}: " + "; ".join(problems))


def _batches(files: list[Path], columns: list[str], chunk_rows: int) -> Iterator[tuple[Path, int, pa.Table]]:
    """(file, 1-based row number of the batch's first row, batch) over all files."""
    for path in files:
        row = 1
        for batch in _open(path).iter_batches(batch_size=chunk_rows, columns=columns):
            yield path, row, pa.Table.from_batches([batch])
            row += batch.num_rows


def _clean(table: pa.Table, spec: DatasetSpec) -> tuple[pa.Table, np.ndarray, Callable[[int], str]]:
    """Fill missing values; returns (table, bad row mask, row index -> reason)."""
    bad = np.zeros(table.num_rows, bool)
    checks: list[tuple[str, np.ndarray, str]] = []
    cols = {}
    for f in spec.features:
        arr = table.column(f.name).combine_chunks()
        if isinstance(f, LabelFeature):
            x = arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
            mask = ~np.isfinite(x)
            checks.append((f.name, mask, "a finite number (label)"))
            arr = pa.array(np.where(mask, 0.0, x))
        elif isinstance(f, DenseFeature):
            arr = arr.cast(pa.float64())  # null = missing; NaN / inf: non-finite (the writer's rule)
        elif not f.multi_valued and arr.null_count:
            arr = arr.cast(pa.int64()).fill_null(MISSING_ID)
        cols[f.name] = arr
    if spec.timestamp is not None:
        arr = table.column(spec.timestamp).combine_chunks()
        mask = arr.is_null().to_numpy(zero_copy_only=False)
        checks.append((spec.timestamp, mask, "integer seconds (timestamp)"))
        cols[spec.timestamp] = arr.fill_null(0)
    for _, mask, _ in checks:
        bad |= mask

    def reason(i: int) -> str:
        for name, mask, allowed in checks:
            if mask[i]:
                return f"field {name}: got {show(table.column(name)[i].as_py())}; expected {allowed}"
        return "bad row"

    return pa.table(cols), bad, reason


def ingest_parquet(
    path: str | Path,
    out_dir: str | Path,
    spec: DatasetSpec,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    timestamp_split: bool = False,
    skip_bad_rows: bool = False,
    chunk_rows: int = 200_000,
) -> dict[str, Any]:
    """Ingest parquet files holding the spec's columns with raw values.

    Args:
        path: a parquet file or a folder of them.
        out_dir: output folder (see :class:`~recsys.data.writer.DatasetWriter`).
        spec: the feature spec; its column names are read from the files.
        fractions: (train, validation, test) fractions.
        timestamp_split: split by global time quantiles of the spec's timestamp column
            (default False: by row order over the files in sorted order).
        skip_bad_rows: skip and count bad rows instead of raising.
        chunk_rows: rows per batch read.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: unreadable file, columns not matching the spec, or a bad row (file, row, field).
    """
    fractions = check_fractions(fractions)
    if timestamp_split and spec.timestamp is None:
        raise ValueError(f"--timestamp-split: feature spec {spec.name!r} has no 'timestamp' column; drop the flag or add one")
    files = parquet_files(path)
    columns = [f.name for f in spec.features] + ([spec.timestamp] if spec.timestamp else [])
    total, ignored, file_offset = 0, set(), {}
    for f in files:
        meta = _open(f)
        schema = meta.schema_arrow
        _check_schema(f, schema, spec, columns)
        ignored |= set(schema.names) - set(columns)
        file_offset[f] = total  # global position of the file's first row
        total += meta.metadata.num_rows
    if total == 0:
        raise ValueError(f"{path}: no rows in {len(files)} parquet file(s)")

    bad = BadRows(skip_bad_rows, unit="row")
    if timestamp_split:
        parts = []
        for _, _, t in _batches(files, [spec.timestamp], chunk_rows):
            parts.append(pc.drop_null(t.column(0)).to_numpy().astype(np.int64))
        boundaries = timestamp_boundaries(np.concatenate(parts), fractions)
        split_info = {"method": "timestamp", "column": spec.timestamp, "fractions": list(fractions),
                      "boundaries": boundaries, "ties": "rows sharing a boundary timestamp go to the later split"}
    else:
        boundaries = row_order_boundaries(total, fractions)
        split_info = {"method": "row_order", "fractions": list(fractions), "boundaries": boundaries,
                      "order": "files in sorted path order, rows in file order"}

    with DatasetWriter(out_dir, spec) as writer:
        kept = 0
        for file, first_row, table in _batches(files, columns, chunk_rows):
            table, bad_mask, reason = _clean(table, spec)
            if bad_mask.any():
                rows = np.flatnonzero(bad_mask)
                bad.found(file, rows + first_row, lambda r, fr=first_row: reason(r - fr))
                table = table.filter(pa.array(~bad_mask))
            if timestamp_split:
                keys = table.column(spec.timestamp).to_numpy()
            else:
                keys = file_offset[file] + first_row - 1 + np.flatnonzero(~bad_mask)
            add_by_split(writer, table, split_codes(keys, boundaries))
            kept += table.num_rows
        if kept == 0:
            raise ValueError(f"{path}: no valid rows ({bad.count} bad rows skipped)")
        check_split_rows(writer, f"--split {','.join(f'{x:g}' for x in fractions)} by {split_info['method']}")
        return writer.finish(
            source={"kind": "parquet", "paths": [str(f) for f in files], "rows": total},
            split=split_info,
            extra={**bad.manifest(), "missing_id": MISSING_ID, "ignored_columns": sorted(ignored)},
        )
