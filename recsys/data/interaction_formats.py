"""Readers of interaction logs for ``recsys ingest interactions`` (see :mod:`recsys.data.interactions_ingest`).

Every reader turns one file into :class:`LogPart` blocks: the raw text (bytes) of the user and
item fields, the optional timestamp / rating / split fields, and each row's line (text) or row
(parquet) number, so that a bad value is reported as ``FILE, line N: field X: got V; expected ...``
by :class:`~recsys.data.parquet_source.BadRows`. Formats:

* **delimited text** (CSV, TSV, any delimiter; gzip recognised by its bytes, a UTF-8 BOM skipped):
  read in blocks of lines; blocks without a double quote are split by the vectorized
  :func:`recsys.data.criteo.split_fields`, blocks with one by Python's :mod:`csv` (quoted fields
  holding the delimiter); columns by header name or by 0-based position;
* **parquet**: one file or a folder of them, in batches; integer, string, float and timestamp
  columns;
* **RecBole atomic files** (``NAME.inter``, ``NAME.user``, ``NAME.item``): tab-separated, a
  typed header ``name:type`` (``token``, ``token_seq`` (space-separated), ``float``,
  ``float_seq``);
* **LightGCN lists**: one line per user, ``user item item ...`` separated by spaces, 0-based ids;
  the items of a line are in time order.

Side-feature files (a user or item key plus attribute columns) are small and read whole by
:func:`recsys.data.interaction_features.read_side_table`.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.criteo import open_binary, read_line_blocks, read_text_bytes, split_fields
from recsys.data.csv_source import _field_bytes, bytes_id
from recsys.data.parquet_source import BadRows, parquet_files, show

FORMATS: tuple[str, ...] = ("log", "recbole", "lightgcn")
ROLES: tuple[str, ...] = ("user", "item", "timestamp", "rating", "split")
RECBOLE_TYPES: tuple[str, ...] = ("token", "token_seq", "float", "float_seq")
_INT = re.compile(rb"-?\d{1,18}")
_PARQUET_MAGIC = b"PAR1"


# -- tokens -> stable raw ids ---------------------------------------------------------------------
class TokenTable:
    """Distinct field values (bytes) -> dense codes in order of first appearance.

    Memory is O(distinct values); each row keeps one int64 code. :meth:`raw_ids` turns the codes
    into the layout's int64 raw ids once every file is read, by one rule per column: when every
    value is a decimal integer, the integer itself (``"1193"`` -> 1193, so vocab files show the
    original ids); otherwise :func:`~recsys.data.csv_source.bytes_id` of the bytes, with the text
    kept as the vocabulary token.
    """

    def __init__(self) -> None:
        self._codes: dict[bytes, int] = {}
        self.tokens: list[bytes] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def codes(self, values: np.ndarray) -> np.ndarray:
        """``(n,)`` bytes values -> ``(n,)`` int64 codes (new values get the next codes)."""
        if values.size == 0:
            return np.zeros(0, np.int64)
        uniq, inverse = np.unique(values, return_inverse=True)
        out = np.empty(uniq.size, np.int64)
        for k, u in enumerate(uniq.tolist()):
            code = self._codes.get(u)
            if code is None:
                code = self._codes[u] = len(self.tokens)
                self.tokens.append(u)
            out[k] = code
        return out[inverse.ravel()]

    def lookup(self, values: list[bytes]) -> np.ndarray:
        """Codes of known values, -1 for values never seen."""
        return np.fromiter((self._codes.get(v, -1) for v in values), np.int64, len(values))

    def is_integer(self) -> bool:
        return all(_INT.fullmatch(t) for t in self.tokens)

    def raw_ids(self) -> tuple[np.ndarray, dict[int, str]]:
        """(raw id per code, raw id -> text for hashed values); see the class docstring."""
        if self.is_integer():
            return np.array([int(t) for t in self.tokens], np.int64), {}
        raw = np.array([bytes_id(t) for t in self.tokens], np.int64)
        return raw, {int(r): t.decode("utf-8", "replace") for r, t in zip(raw.tolist(), self.tokens)}


def as_bytes(values: np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Any column (numbers, strings; numpy or Arrow) as a numpy bytes array, the way a text file spells it.

    Arrow columns are dictionary-encoded first, so Python touches each distinct value once.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if len(values) == 0:
            return np.zeros(0, "S1")
        encoded = pc.dictionary_encode(values)
        distinct = np.array([str(v).encode("utf-8") for v in encoded.dictionary.to_pylist()], dtype=bytes)
        return distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr
    return np.array([str(v).encode("utf-8") for v in arr.tolist()], dtype=bytes) if arr.size else np.zeros(0, "S1")


class FileBadRows:
    """:class:`~recsys.data.parquet_source.BadRows` that names a position ``row`` in parquet files and
    ``line`` in text files (one run may read both: a CSV log with parquet item features)."""

    def __init__(self, skip: bool):
        self.skip = skip
        self._by_unit = {"line": BadRows(skip), "row": BadRows(skip, unit="row")}

    def found(self, file: str | Path, positions: np.ndarray, reason: Callable[[int], str]) -> None:
        if len(positions):
            self._by_unit["row" if is_parquet(Path(file)) else "line"].found(file, positions, reason)

    @property
    def count(self) -> int:
        return sum(b.count for b in self._by_unit.values())

    def manifest(self) -> dict[str, Any]:
        examples = self._by_unit["line"].examples + self._by_unit["row"].examples
        return {"skipped_rows": self.count, "skipped_examples": examples[: self._by_unit["line"].max_examples]}


# -- value parsers (numpy bytes arrays -> numbers, with a bad mask) ------------------------------
def parse_floats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` bytes -> (float64, bad mask: empty, not a number or not finite)."""
    out = np.full(values.size, np.nan)
    try:
        out[:] = values.astype(np.float64)
    except ValueError:
        for i, v in enumerate(values.tolist()):
            try:
                out[i] = float(v)
            except ValueError:
                pass
    return out, ~np.isfinite(out)


def parse_times(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` bytes -> (time keys, bad mask).

    Integers stay int64 (exact, any unit); other numbers are float64 seconds; ISO 8601 dates /
    times (``2024-01-31``, ``2024-01-31T12:00:00``, ``2024-01-31 12:00:00+01:00``) become float64
    seconds since 1970-01-01 UTC. A block mixing integers with other spellings is float64.
    """
    if values.size and all(_INT.fullmatch(v) for v in np.unique(values).tolist()):
        return values.astype(np.int64), np.zeros(values.size, bool)
    out, bad = parse_floats(values)
    if bad.any():
        text = pd.Series([v.decode("utf-8", "replace") for v in values[bad].tolist()])
        when = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        ok = when.notna().to_numpy()
        # seconds whatever resolution pandas picked (pandas 3 infers s / ms / us / ns from the text)
        seconds = ((when[ok] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64) if ok.any() else np.zeros(0)
        idx = np.flatnonzero(bad)
        out[idx[ok]] = seconds
        bad[idx[ok]] = False
    return out, bad


TIME_ALLOWED = "an integer, a number, or an ISO 8601 date / time (e.g. 2024-01-31T12:00:00)"


# -- one block of rows --------------------------------------------------------------------------
@dataclass
class LogPart:
    """One block of rows of one file: raw field bytes per role, and where each row came from.

    Attributes:
        path: the file.
        positions: ``(n,)`` 1-based line (text) or row (parquet) numbers of the good rows.
        fields: role (``user``, ``item``, ``timestamp``, ``rating``, ``split``) -> ``(n,)`` values
            (numpy bytes, as a text file spells them).
        names: role -> the field's name in messages (the header name, or ``column <j>``).
    """

    path: Path
    positions: np.ndarray
    fields: dict[str, np.ndarray]
    names: dict[str, str]


@dataclass(frozen=True)
class Columns:
    """Where each role's field is: a header name or a 0-based position (``None``: absent)."""

    user: str | int
    item: str | int
    timestamp: str | int | None = None
    rating: str | int | None = None
    split: str | int | None = None

    def roles(self) -> dict[str, str | int]:
        return {r: getattr(self, r) for r in ROLES if getattr(self, r) is not None}


def column_ref(text: str | int | None) -> str | int | None:
    """``"3"`` -> 3 (a 0-based position), ``"userId"`` -> a header name."""
    if text is None or isinstance(text, int):
        return text
    return int(text) if text.isdigit() else text


def sniff_delimiter(path: Path) -> bytes:
    """The separator of a delimited file from its first line: tab, comma, ';', '|' or space."""
    with open_binary(path) as fh:
        first = fh.readline()
    for sep in (b"\t", b",", b";", b"|", b" "):
        if sep in first:
            return sep
    return b","


def _resolve(path: Path, columns: dict[str, str | int], header: list[str] | None, width: int) -> dict[str, int]:
    """Role -> field index; every problem at once."""
    out, problems = {}, []
    for role, ref in columns.items():
        if isinstance(ref, int):
            if ref >= width:
                problems.append(f"--{role} {ref}: the file has {width} fields per line (positions 0..{width - 1})")
            out[role] = ref
        elif header is None:
            problems.append(f"--{role} {ref!r}: a column name, but the file is read without a header; give a 0-based position or --header")
        elif ref not in header:
            problems.append(f"--{role} {ref!r}: not a column of the header {header}")
        else:
            out[role] = header.index(ref)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return out


def has_header(columns: dict[str, str | int], header: bool | None) -> bool:
    """``--header`` / ``--no-header``, or by default: a header unless every column is a position."""
    if header is not None:
        return header
    return not all(isinstance(ref, int) for ref in columns.values())


def _first_line(path: Path) -> bytes:
    with open_binary(path) as fh:
        first = fh.readline().rstrip(b"\r\n")
    if not first.strip():
        raise ValueError(f"{path}: empty file; expected one line per interaction")
    if b"\x00" in first:
        raise ValueError(f"{path}, line 1: NUL byte: binary or UTF-16 data; expected text or parquet")
    return first


def _csv_block(block: bytes, first_line: int, sep: bytes, width: int, layout: str) -> tuple[list[list[bytes]], np.ndarray, np.ndarray, dict[int, str]]:
    """A block with quotes: (rows, their lines, bad lines, reasons) through Python's csv module."""
    text = block.decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text), delimiter=sep.decode("utf-8"))
    rows, lines, bad, reasons, previous = [], [], [], {}, 0
    for parts in reader:
        line = first_line + previous
        previous = reader.line_num
        if not parts:
            continue
        if len(parts) != width or "\x00" in "".join(parts):
            bad.append(line)
            reasons[line] = ("NUL byte: binary or UTF-16 data; expected text" if "\x00" in "".join(parts)
                             else f"expected {width} {sep.decode()!r}-separated fields {layout}, got {len(parts)}")
            continue
        rows.append([p.encode("utf-8", "surrogateescape") for p in parts])
        lines.append(line)
    return rows, np.array(lines, np.int64), np.array(bad, np.int64), reasons


def read_delimited(path: Path, columns: Columns, *, sep: bytes | None, header: bool | None, bad: BadRows | FileBadRows,
                   chunk_rows: int, header_names: list[str] | None = None, quoting: bool = True) -> Iterator[LogPart]:
    """Blocks of a delimited text log (see the module docstring).

    Args:
        path: the file (gzip or plain).
        columns: where user, item, ... are.
        sep: the delimiter; None: :func:`sniff_delimiter`.
        header: the first line is a header (None: see :func:`has_header`).
        bad: where bad lines go (raise, or skip and count).
        chunk_rows: lines per block.
        header_names: the header's field names when the first line spells them otherwise
            (RecBole's ``name:type``); implies a header.
        quoting: read double-quoted fields (CSV); False: quotes are ordinary characters (RecBole).
    """
    sep = sep if sep is not None else sniff_delimiter(path)
    first = _first_line(path)
    with_header = header_names is not None or has_header(columns.roles(), header)
    raw_header = header_names or (next(csv.reader([first.decode("utf-8", "replace")], delimiter=sep.decode()))
                                  if len(sep) == 1 and quoting else first.decode("utf-8", "replace").split(sep.decode()))
    head = raw_header if with_header else None
    width = len(raw_header)
    index = _resolve(path, columns.roles(), head, width)
    field_name = {role: head[j] if head else f"column {j}" for role, j in index.items()}
    layout = f"({', '.join(head)})" if head else ""
    for first_line, block in read_line_blocks(path, chunk_rows):
        if quoting and len(sep) == 1 and b'"' in block:  # the csv module takes one-character delimiters
            rows, lines, bad_lines, reasons = _csv_block(block, first_line, sep, width, layout)
            vals = {role: np.array([r[j] for r in rows], dtype=bytes) if rows else np.zeros(0, "S1") for role, j in index.items()}
            reason: Callable[[int], str] = reasons.__getitem__
        else:
            f, bad_lines, reason = split_fields(block, first_line, sep, width, layout)
            lines = f.lines
            vals = {role: _field_bytes(f, j) if lines.size else np.zeros(0, "S1") for role, j in index.items()}
        if with_header and first_line == 1:
            keep = lines != 1
            lines, vals = lines[keep], {k: v[keep] for k, v in vals.items()}
            bad_lines = bad_lines[bad_lines != 1]
        bad.found(path, bad_lines, reason)
        yield LogPart(path, lines, vals, field_name)


def is_parquet(path: Path) -> bool:
    """A parquet file (by its magic bytes) or a folder of them."""
    if path.is_dir():
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == _PARQUET_MAGIC


def read_parquet_log(path: Path, columns: Columns, *, bad: BadRows | FileBadRows, chunk_rows: int) -> Iterator[LogPart]:
    """Batches of a parquet log; columns by name (or position in the file's schema)."""
    for file in parquet_files(path):
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{file}: not a readable parquet file ({exc})") from None
        names = pf.schema_arrow.names
        index = _resolve(file, columns.roles(), names, len(names))
        wanted = {role: names[j] for role, j in index.items()}
        row = 1
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=sorted(set(wanted.values()))):
            n = batch.num_rows
            null = np.zeros(n, bool)
            which: list[tuple[np.ndarray, str]] = []
            vals: dict[str, np.ndarray] = {}
            for role, name in wanted.items():
                col = batch.column(name)
                mask = col.is_null().to_numpy(zero_copy_only=False)
                which.append((mask, name))
                null |= mask
                if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
                    col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
                if role in ("user", "item", "split"):
                    vals[role] = as_bytes(col.fill_null("" if pa.types.is_string(col.type) else 0))
                elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
                    vals[role] = as_bytes(col.fill_null(0))
                else:
                    vals[role] = as_bytes(pc.cast(col, pa.string()).fill_null(""))
            positions = row + np.arange(n)
            if null.any():
                bad.found(file, positions[null], lambda p, r=row, w=which: next(
                    f"field {name}: got None (null); expected a value" for mask, name in w if mask[p - r]))
                vals = {k: v[~null] for k, v in vals.items()}
                positions = positions[~null]
            yield LogPart(file, positions, vals, dict(wanted))
            row += n


def read_lightgcn(path: Path, *, bad: BadRows | FileBadRows) -> Iterator[LogPart]:
    """One LightGCN list file: ``user item item ...`` per line, spaces, 0-based integer ids."""
    text = read_text_bytes(path)
    if not text.strip():
        raise ValueError(f"{path}: empty file; expected one line per user: user item item ... (0-based ids)")
    users, items, lines = [], [], []
    bad_lines, reasons = [], {}
    for n, line in enumerate(text.split(b"\n"), start=1):
        parts = line.split()
        if not parts:
            continue  # blank lines (a trailing newline, LightGCN's own readers skip them)
        wrong = next((p for p in parts if not re.fullmatch(rb"\d{1,18}", p)), None)
        if wrong is not None or b"\x00" in line:
            bad_lines.append(n)
            which = "user" if wrong == parts[0] else "item"
            reasons[n] = ("NUL byte: binary or UTF-16 data; expected text" if b"\x00" in line else
                          f"field {which}: got {show(wrong.decode('latin-1'))}; expected a 0-based integer id (line: user item item ...)")
            continue
        k = len(parts) - 1
        users.extend([parts[0]] * k)
        items.extend(parts[1:])
        lines.extend([n] * k)
    bad.found(path, np.array(bad_lines, np.int64), reasons.__getitem__)
    yield LogPart(path, np.array(lines, np.int64), {"user": np.array(users, dtype=bytes) if users else np.zeros(0, "S1"),
                                                    "item": np.array(items, dtype=bytes) if items else np.zeros(0, "S1")},
                  {"user": "user", "item": "item"})


# -- RecBole atomic files -------------------------------------------------------------------------
@dataclass(frozen=True)
class RecboleHeader:
    """The typed header of a RecBole atomic file: field names and their types."""

    names: list[str]
    types: list[str]

    def type_of(self, name: str) -> str:
        return self.types[self.names.index(name)]


def recbole_header(path: Path) -> RecboleHeader:
    """Parse ``user_id:token\\titem_id:token\\trating:float ...``; every problem at once."""
    first = _first_line(path).decode("utf-8", "replace")
    names, types, problems = [], [], []
    for part in first.split("\t"):
        name, colon, kind = part.rpartition(":")
        if not colon or not name:
            problems.append(f"field {part!r} has no ':type'")
        elif kind not in RECBOLE_TYPES:
            problems.append(f"field {part!r}: type {kind!r} is not one of {list(RECBOLE_TYPES)}")
        names.append(name or part)
        types.append(kind)
    if problems:
        raise ValueError(f"{path}, line 1: not a RecBole atomic file header (tab-separated name:type fields, e.g. "
                         f"user_id:token\\titem_id:token\\ttimestamp:float): " + "; ".join(problems))
    return RecboleHeader(names, types)


RECBOLE_SPLIT_SUFFIX = re.compile(r"\.(train|valid|validation|test)$")


def recbole_side_files(inter: Path) -> dict[str, Path]:
    """``NAME.user`` / ``NAME.item`` beside ``NAME.inter`` (or ``NAME.train.inter``), where present."""
    stem = RECBOLE_SPLIT_SUFFIX.sub("", inter.name.removesuffix(".gz").removesuffix(".inter"))
    out = {}
    for entity in ("user", "item"):
        path = inter.parent / f"{stem}.{entity}"
        if path.is_file():
            out[entity] = path
    return out


def recbole_columns(path: Path, columns: Columns) -> Columns:
    """Check the .inter header's fields for user / item / timestamp / rating (names, RecBole types)."""
    head = recbole_header(path)
    problems = []
    for role, allowed in (("user", ("token",)), ("item", ("token",)), ("timestamp", ("float",)), ("rating", ("float",)),
                          ("split", ("token",))):
        ref = getattr(columns, role)
        if ref is None:
            continue
        if isinstance(ref, int) or ref not in head.names:
            problems.append(f"--{role} {ref!r}: not a field of the header {head.names}")
        elif head.type_of(ref) not in allowed:
            problems.append(f"field {ref}: type {head.type_of(ref)!r}; expected {allowed[0]}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return columns
