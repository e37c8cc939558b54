"""Delimited text with a header row (CSV, TSV, ...) whose columns a feature spec names -> the ingest layout.

    recsys ingest csv clicks.csv --spec features/X.yaml --out DIR [--delimiter ,] [--label COL] [--split 0.8,0.1,0.1]
    recsys ingest csv clicks.tsv.gz --spec features/X.yaml --out DIR --delimiter '\\t' --skip-bad-rows

The first line is the header; every spec feature names a column of it (``--label COL``: the
column that holds the spec's label, when it is named differently). Other columns are ignored.

* label: ``0`` or ``1`` (a click), as Criteo's and Avazu's; any finite number with ``--rating-label``
  (``label_is_rating``: a rating or another numeric target).
* dense features: numbers (``1.5``, ``-3``, ``1e-3``); empty -> null (missing; the writer stores
  0, after the spec's transform).
* sparse features (single-valued): any text; each value -> a stable non-negative int64 raw id,
  blake2b of its bytes (:func:`bytes_id`, equal to :func:`recsys.data.movielens.string_id` of the
  UTF-8 text), so a value gets the same id in every file and run; empty -> raw id ``-1``
  (MISSING_ID), indexed like any other value.

Fields are split on the delimiter alone: quoted fields holding the delimiter are not supported
(such a line has too many fields and is reported). gzip input is recognised by its bytes and a
UTF-8 byte order mark is skipped (:func:`recsys.data.criteo.open_binary`). Lines are in time
order, so the split is by row position (first 80% train, next 10% validation, last 10% test by
default), bad lines included, as for Criteo.

Bad lines (wrong field count, NUL bytes, a label that is not 0 / 1 (or not a number, for a rating
label), a dense value that is not a number) raise a ``ValueError`` naming file, line and field, or
with ``skip_bad_rows`` are skipped and counted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from recsys.data.criteo import Fields, count_lines, open_binary, read_line_blocks, split_fields
from recsys.data.parquet_source import (
    DEFAULT_FRACTIONS,
    MISSING_ID,
    BadRows,
    add_by_split,
    check_fractions,
    check_split_rows,
    row_order_boundaries,
    show,
    split_codes,
)
from recsys.data.writer import DatasetWriter
from recsys.features.spec import DatasetSpec

__all__ = ["CsvLayout", "bytes_id", "csv_layout", "ingest_csv", "ingest_delimited", "parse_delimiter", "read_header"]

# A derived column: (fields of the block, column index) -> ({feature: values}, bad mask, allowed text).
Derive = Callable[[Fields, int], tuple[dict[str, np.ndarray], np.ndarray, str]]


def bytes_id(value: bytes) -> int:
    """A stable non-negative int64 raw id for a field's bytes: blake2b (8 bytes), top bit cleared."""
    digest = hashlib.blake2b(value, digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
DELIMITER_ALLOWED = ("one or more punctuation characters, a tab or a space (e.g. ',', ';', '|', '::', '\\t'), "
                     "or a name: " + ", ".join(DELIMITER_NAMES))


def parse_delimiter(text: str) -> bytes:
    """``","`` / ``"\\t"`` / ``"tab"`` / ``";"`` / ``"::"`` -> the separator byte(s).

    A delimiter must never occur inside a value it separates: letters and digits (ids, words),
    ``.``, ``+`` and ``-`` (numbers), quotes (quoted fields are not supported), backslashes (an
    escape the shell did not expand, e.g. ``'\\|'``), newlines and other control characters are refused.

    Raises:
        ValueError: the delimiter and what is allowed.
    """
    sep = DELIMITER_NAMES.get(text, text)
    if not sep:
        raise ValueError(f"--delimiter {text!r}: empty; give {DELIMITER_ALLOWED}")
    bad = sorted({c for c in sep if c.isalnum() or c in ".+-'\"\\" or (not c.isprintable() and c != "\t")})
    if bad:
        raise ValueError(f"--delimiter {text!r}: {', '.join(repr(c) for c in bad)} cannot separate fields "
                         f"(it occurs inside values, or is not text); give {DELIMITER_ALLOWED}")
    return sep.encode("utf-8")


def read_header(path: Path, sep: bytes) -> list[str]:
    """The header line's column names (gzip and a UTF-8 BOM handled)."""
    with open_binary(path) as fh:
        first = fh.readline()
    if not first.strip():
        raise ValueError(f"{path}: empty file; expected a header line naming the columns, then one line per row")
    try:
        text = first.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}, line 1: the header is not UTF-8 text (binary or UTF-16 data?)") from None
    return text.split(sep.decode("utf-8"))


@dataclass(frozen=True)
class CsvLayout:
    """Which header column feeds which feature.

    Attributes:
        header: the file's column names.
        label: (label feature, its column index).
        dense / sparse: (feature, column index) each.
        derived: (column index, how its features are computed) for columns that yield features of
            other names (Avazu's ``hour`` -> ``day_of_week``, ``hour_of_day``).
    """

    header: list[str]
    label: tuple[str, int]
    dense: list[tuple[str, int]]
    sparse: list[tuple[str, int]]
    derived: list[tuple[int, Derive]] = field(default_factory=list)
    label_is_rating: bool = False  # any finite number; else 0 or 1 (a click)
    label_hint: str = "--rating-label for a rating or other numeric label"


def csv_layout(path: Path, header: list[str], spec: DatasetSpec, *, label: str | None = None,
               derived: dict[str, tuple[str, ...]] | None = None, derive: dict[str, Derive] | None = None,
               label_is_rating: bool = False, sep: bytes | None = None) -> CsvLayout:
    """Match the spec's features to header columns; every problem at once.

    Args:
        label: the label's column name, if not the spec label's name.
        derived: column -> the feature names it yields (not looked up in the header).
        derive: column -> the function that computes them.
        label_is_rating: the label is any finite number (default: 0 or 1).
        sep: the delimiter, to say so when the header does not split on it.

    Raises:
        ValueError: a spec feature has no column (the header is listed), a duplicated column, no
            label, or a multi-valued sparse feature.
    """
    derived = derived or {}
    made = {name for names in derived.values() for name in names}
    problems = []
    if spec.label is None:
        problems.append("the spec has no label feature")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        problems.append(f"columns {dupes} appear more than once in the header")
    multi = [f.name for f in spec.sparse if f.multi_valued]
    if multi:
        problems.append(f"multi-valued sparse features {multi}: a CSV field holds one value; use max_length 1")
    index = {c: i for i, c in enumerate(header)}
    label_column = label or (spec.label.name if spec.label is not None else None)
    wanted = ([label_column] if label_column else []) + [f.name for f in spec.dense] + [f.name for f in spec.sparse if f.name not in made]
    wanted += [c for c in derived if c not in wanted]
    missing = [c for c in wanted if c not in index]
    if missing:
        problems.append(f"columns {missing} named by the spec{' / --label' if label else ''} are not in the header {header}")
        others = [d for d in (",", ";", "\t", "|") if len(header) == 1 and d in header[0] and d.encode() != sep]
        if others:  # one column holding another separator: the delimiter is the likely mistake
            problems.append(f"the header did not split on --delimiter {(sep or b',').decode()!r} but holds {others[0]!r}: "
                            f"is the delimiter {others[0]!r}? (--delimiter {'tab' if others[0] == chr(9) else repr(others[0])})")
    if problems:
        raise ValueError(f"{path}: the feature spec {spec.name!r} does not fit this file: " + "; ".join(problems))
    return CsvLayout(
        header=header,
        label=(spec.label.name, index[label_column]),
        dense=[(f.name, index[f.name]) for f in spec.dense],
        sparse=[(f.name, index[f.name]) for f in spec.sparse if f.name not in made],
        derived=[(index[c], (derive or {})[c]) for c in derived],
        label_is_rating=label_is_rating,
    )


def _field_bytes(f: Fields, j: int) -> np.ndarray:
    """Column ``j`` of every line as a numpy bytes array (``S<width>``)."""
    starts, ends = f.starts[:, j], f.ends[:, j]
    width = int((ends - starts).max(initial=0)) or 1
    idx = starts[:, None] + np.arange(width)
    inside = idx < ends[:, None]
    mat = np.where(inside, f.data[np.where(inside, idx, 0)], 0).astype(np.uint8)
    return np.ascontiguousarray(mat).view(f"S{width}").ravel()


def parse_tokens(f: Fields, j: int) -> np.ndarray:
    """Column ``j`` as raw ids: each distinct value hashed once (:func:`bytes_id`), empty -> MISSING_ID."""
    values = _field_bytes(f, j)
    uniq, inverse = np.unique(values, return_inverse=True)
    ids = np.fromiter((bytes_id(u) if u else MISSING_ID for u in uniq.tolist()), np.int64, uniq.size)
    return ids[inverse.ravel()]


def parse_numbers(f: Fields, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Column ``j`` as float64 (NaN where empty) and a bad mask (not a finite number)."""
    values = _field_bytes(f, j)
    empty = values == b""
    out = np.full(values.size, np.nan)
    try:
        out[~empty] = values[~empty].astype(np.float64)
        bad = ~np.isfinite(out) & ~empty
    except ValueError:  # some value is not a number: find which, one at a time
        bad = np.zeros(values.size, bool)
        for i in np.flatnonzero(~empty):
            try:
                out[i] = float(values[i])
            except ValueError:
                bad[i] = True
        bad |= ~np.isfinite(out) & ~empty & ~bad
    return out, bad


def parse_block(block: bytes, first_line: int, sep: bytes, layout: CsvLayout) -> tuple[pa.Table, np.ndarray, np.ndarray, Callable[[int], str]]:
    """One block of lines -> (table of good rows, their line numbers, bad line numbers, reason)."""
    header = layout.header
    f, struct_bad, struct_reason = split_fields(block, first_line, sep, len(header), f"({header[0]}, ..., {header[-1]})")
    if first_line == 1 and f.lines.size and f.lines[0] == 1:  # the header line
        keep = f.lines != 1
        f = Fields(f.data, f.starts[keep], f.ends[keep], f.lines[keep])
    struct_bad = struct_bad[struct_bad != 1]
    checks: list[tuple[int, np.ndarray, str]] = []
    name, j = layout.label
    y, bad_y = parse_numbers(f, j)
    if layout.label_is_rating:
        checks.append((j, bad_y | np.isnan(y), "a number (the label, a rating)"))
    else:  # as Criteo's: a click label is 0 or 1; BCE on a 5-star rating trains garbage silently
        checks.append((j, bad_y | ((y != 0) & (y != 1)), f"0 or 1 (the click label; {layout.label_hint})"))
    arrays: dict[str, pa.Array] = {name: pa.array(np.nan_to_num(y).astype(np.float32))}
    for name, j in layout.dense:
        x, bad_x = parse_numbers(f, j)
        checks.append((j, bad_x, "a number, or empty for missing"))
        arrays[name] = pa.array(x, from_pandas=True)  # NaN (empty) -> null = missing
    for name, j in layout.sparse:
        arrays[name] = pa.array(parse_tokens(f, j))
    for j, derive in layout.derived:
        values, bad_d, allowed = derive(f, j)
        checks.append((j, bad_d, allowed))
        arrays.update({k: pa.array(v) for k, v in values.items()})
    bad = np.logical_or.reduce([m for _, m, _ in checks]) if checks else np.zeros(f.lines.size, bool)
    table, lines = pa.table(arrays), f.lines
    if bad.any():
        table, lines = table.filter(pa.array(~bad)), f.lines[~bad]
    bad_lines = np.union1d(struct_bad, f.lines[bad]) if bad.any() else struct_bad
    struct_set = set(struct_bad.tolist())

    def reason(line: int) -> str:
        if line in struct_set:
            return struct_reason(line)
        i = int(np.searchsorted(f.lines, line))
        for j, mask, allowed in checks:
            if mask[i]:
                return f"field {header[j]}: got {show(f.text(i, j))}; expected {allowed}"
        return "bad line"

    return table, lines, bad_lines, reason


def ingest_delimited(
    path: str | Path,
    out_dir: str | Path,
    spec: DatasetSpec,
    layout_of: Callable[[Path, list[str]], CsvLayout],
    *,
    sep: bytes,
    source: dict[str, Any],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    skip_bad_rows: bool = False,
    chunk_rows: int = 200_000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The shared engine of :func:`ingest_csv` and :func:`recsys.data.avazu.ingest_avazu`.

    ``layout_of(path, header)`` checks the header and says which column feeds which feature.
    """
    fractions = check_fractions(fractions)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows {chunk_rows}: expected a positive number of lines")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give a delimited text file with a header line")
    layout = layout_of(path, read_header(path, sep))
    rows = count_lines(path) - 1
    if rows <= 0:
        raise ValueError(f"{path}: only a header line; expected one line per row after it")
    boundaries = row_order_boundaries(rows, fractions)
    bad = BadRows(skip_bad_rows)
    with DatasetWriter(out_dir, spec) as writer:
        kept, t0 = 0, time.perf_counter()
        for first_line, block in read_line_blocks(path, chunk_rows):
            table, lines, bad_lines, reason = parse_block(block, first_line, sep, layout)
            bad.found(path, bad_lines, reason)
            add_by_split(writer, table, split_codes(lines - 2, boundaries))  # line 2 is row 0
            kept += table.num_rows
            if log:
                last_line = first_line + block.count(b"\n") - 1
                log(f"  {path}: {last_line:,} lines read, {kept:,} rows kept, {time.perf_counter() - t0:.1f} s")
        if kept == 0:
            raise ValueError(f"{path}: no valid lines ({bad.count} bad lines skipped)")
        check_split_rows(writer, f"--split {','.join(f'{x:g}' for x in fractions)} by line position")
        return writer.finish(
            source={**source, "path": str(path), "lines": rows + 1, "header": layout.header},
            split={"method": "row_order", "fractions": list(fractions), "boundaries": boundaries,
                   "unit": "row position after the header (bad lines included)"},
            extra={**bad.manifest(), "missing_id": MISSING_ID},
        )


def ingest_csv(
    path: str | Path,
    out_dir: str | Path,
    spec: DatasetSpec,
    *,
    delimiter: str = ",",
    label: str | None = None,
    label_is_rating: bool = False,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    skip_bad_rows: bool = False,
    chunk_rows: int = 200_000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest a delimited text file with a header whose columns the spec names.

    Args:
        path: the file (optionally gzip).
        out_dir: output folder (see :class:`~recsys.data.writer.DatasetWriter`).
        spec: feature spec; each feature reads the column of its name.
        delimiter: the field separator (``,``; ``\\t`` or ``tab`` for TSV).
        label: the column holding the spec's label feature, if named differently.
        label_is_rating: the label is any finite number (a rating); default: 0 or 1, as a click.
        fractions: (train, validation, test) fractions of the rows, in file order.
        skip_bad_rows: skip and count bad lines instead of raising.
        chunk_rows: lines parsed per block.
        log: progress printer.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: bad delimiter, a spec column missing from the header, or a bad line (file,
            line, field, value and what is allowed).
    """
    sep = parse_delimiter(delimiter)
    return ingest_delimited(
        path, out_dir, spec, lambda p, header: csv_layout(p, header, spec, label=label, label_is_rating=label_is_rating, sep=sep),
        sep=sep, source={"kind": "csv", "format": "delimited text with header", "delimiter": sep.decode("utf-8"), "label_column": label,
                         "label": "rating" if label_is_rating else "click (0 / 1)"},
        fractions=fractions, skip_bad_rows=skip_bad_rows, chunk_rows=chunk_rows, log=log,
    )
