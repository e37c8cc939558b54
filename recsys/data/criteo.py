"""Criteo click logs (Kaggle ``train.txt``, Terabyte ``day_0`` .. ``day_23``) -> the ingest layout.

    recsys ingest criteo PATH --out DIR [--spec features/criteo.yaml] [--split 0.8,0.1,0.1]
    recsys ingest criteo data/criteo_tb/ --out data/criteo_tb --skip-bad-rows --chunk-rows 500000

PATH is a file or a folder holding ``day_N`` files (taken in day order) or ``train.txt``;
gzip files are read too, recognised by their bytes (``1f 8b``) whatever their name, and a UTF-8
byte order mark at the start of a file is skipped. Each line: label, I1..I13, C1..C26,
tab-separated, no header.

* label: ``0`` or ``1``.
* I1..I13: integers, may be negative or empty; empty -> null (missing; the writer stores 0 and
  applies ``log1p`` with negatives clamped to 0).
* C1..C26: hex ids (Criteo has 8 digits; 1-15 are accepted) -> int64 raw ids; empty -> raw id
  ``-1`` (MISSING_ID), which the vocabulary counts and indexes like any other id.

Lines are in time order, so the split is by row position over all files (first 80% train,
next 10% validation, last 10% test by default); lines are counted first (a fast binary newline
count) to place the boundaries while streaming.

Parsing is vectorized numpy over byte blocks of whole lines: separators are located with one
scan, fields are gathered into fixed-width byte matrices and decoded by lookup tables. A bad
line (wrong field count, NUL byte, non-hex id, non-integer counter, label not 0/1) is found in
the same vectorized pass; only then does a slow path name its line and field.
"""

from __future__ import annotations

import gzip
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

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

_READ_BYTES = 1 << 24
_MAX_HEX_DIGITS = 15  # keeps raw ids non-negative int64
_MAX_INT_DIGITS = 18

_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


# -- text blocks (also used by the MovieLens source) ----------------------------------------------
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"


def open_binary(path: Path) -> BinaryIO:
    """The file's text bytes, recognised by content, not by name.

    gzip data (magic bytes ``1f 8b``) is decompressed whatever the file is called (``train.txt``
    holding gzip is read as such); a UTF-8 byte order mark (``ef bb bf``) at the start of the
    (decompressed) text is skipped. Anything else is returned as it is, so UTF-16 (its BOM and
    NUL bytes) and binary files still reach the NUL-byte check of :func:`split_fields`.
    """
    with open(path, "rb") as fh:
        magic = fh.read(2)
    stream: BinaryIO = gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")  # type: ignore[assignment]
    try:
        if stream.read(3) != UTF8_BOM:
            stream.seek(0)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        stream.close()
        raise ValueError(f"{path}: starts like gzip data (bytes 1f 8b) but cannot be decompressed ({exc})") from None
    return stream


def read_text_bytes(path: Path) -> bytes:
    """All of a (small) text file's bytes, as :func:`open_binary` gives them."""
    with open_binary(path) as fh:
        try:
            return fh.read()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path}: truncated or corrupt gzip data ({exc})") from None


def count_lines(path: Path) -> int:
    """Number of lines (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with open_binary(path) as fh:
        while block := fh.read(_READ_BYTES):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def read_line_blocks(path: Path, lines_per_block: int) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based number of the first line, bytes of ``lines_per_block`` whole lines)."""
    line, pieces, have = 1, [], 0  # pieces of the block being filled, newlines in them
    with open_binary(path) as fh:
        while data := fh.read(_READ_BYTES):
            count, start = data.count(b"\n"), 0
            while have + count >= lines_per_block:
                nl = np.flatnonzero(np.frombuffer(data, np.uint8, offset=start) == 10)
                cut = start + int(nl[lines_per_block - have - 1]) + 1
                pieces.append(data[start:cut])
                yield line, b"".join(pieces)
                count -= lines_per_block - have
                line, pieces, have, start = line + lines_per_block, [], 0, cut
            if start < len(data):
                pieces.append(data[start:])
                have += count
    if pieces:
        yield line, b"".join(pieces)


@dataclass
class Fields:
    """Field byte ranges of the well-formed lines of one block.

    Attributes:
        data: the block's bytes.
        starts, ends: ``(n, k)`` byte offsets of each line's k fields (ends exclusive).
        lines: ``(n,)`` 1-based line numbers of those lines.
    """

    data: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray
    words: np.ndarray | None = None  # cache for the 8-byte decoders

    def lengths(self, j: int) -> np.ndarray:
        return self.ends[:, j] - self.starts[:, j]

    def text(self, i: int, j: int) -> str:
        raw = self.data[self.starts[i, j]:self.ends[i, j]].tobytes()
        return raw.decode("latin-1")


def split_fields(
    block: bytes, first_line: int, sep: bytes, num_fields: int, layout: str = ""
) -> tuple[Fields, np.ndarray, Callable[[int], str]]:
    """Locate the fields of every line of a block (vectorized).

    Args:
        block: whole lines.
        first_line: 1-based number of the block's first line.
        sep: the field separator (one or more bytes).
        num_fields: fields per line.
        layout: the fields' names for messages, e.g. ``"(label, I1..I13, C1..C26)"``.

    Returns:
        (fields of the good lines, 1-based numbers of malformed lines, line -> reason), where a
        malformed line has a NUL byte (binary or UTF-16 data) or not ``num_fields`` fields.
    """
    a = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(a == 10)
    ends = nl if a.size and a[-1] == 10 else np.append(nl, a.size)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    ends = ends - ((ends > starts) & (a[np.maximum(ends - 1, 0)] == 13))  # CRLF
    hit = a == sep[0]
    for k in range(1, len(sep)):  # multi-byte separators (MovieLens '::')
        hit[:-k] &= a[k:] == sep[k]
        hit[-k:] = False
    seps = np.flatnonzero(hit)
    counts = np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1
    good = counts == num_fields
    nul = np.flatnonzero(a == 0)
    has_nul = np.zeros(starts.size, bool)
    if nul.size:
        has_nul[np.searchsorted(starts, nul, side="right") - 1] = True
        good &= ~has_nul
    if not good.all():
        seps = seps[good[np.searchsorted(starts, seps, side="right") - 1]]
    n = int(good.sum())
    seps = seps.reshape(n, num_fields - 1)
    fields = Fields(
        data=a,
        starts=np.concatenate([starts[good, None], seps + len(sep)], axis=1),
        ends=np.concatenate([seps, ends[good, None]], axis=1),
        lines=first_line + np.flatnonzero(good),
    )
    bad_lines = first_line + np.flatnonzero(~good)

    def reason(line: int) -> str:
        i = line - first_line
        if has_nul[i]:
            return "NUL byte: binary or UTF-16 data; expected plain text (ASCII / latin-1)"
        return f"expected {num_fields} {sep.decode()!r}-separated fields {layout}, got {counts[i]}".replace("  ", " ")

    return fields, bad_lines, reason


def _right_aligned(f: Fields, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """(n, width) matrix of each field's last ``width`` bytes, left-padded with ASCII '0'."""
    idx = ends[:, None] - width + np.arange(width)
    inside = idx >= starts[:, None]
    mat = f.data[np.where(inside, idx, 0)]
    mat[~inside] = ord("0")
    return mat


# Fields of <= 8 bytes are decoded 8 at a time: the 8 bytes ending at each field's end are read
# as one uint64 (two aligned loads and shifts, much faster than numpy's unaligned gather), bytes
# before the field are set to '0', per-byte range checks in SWAR arithmetic ("SIMD within a
# register") validate and turn each byte into its digit, and multiplies fold the 8 digits into
# one number (as simdjson's parse_eight_digits_unrolled). Longer fields (rare) take the
# byte-matrix path above.
def _rep(byte: int) -> np.uint64:
    return np.uint64(byte * 0x0101010101010101)


_LOW7, _HIGH = _rep(0x7F), _rep(0x80)
_KEEP = np.array([0] + [(~((1 << (8 * (8 - n))) - 1)) & (2**64 - 1) for n in range(1, 9)], np.uint64)


def _in_range(w: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """0x80 in each byte of ``w`` (bytes < 0x80) that lies in [lo, hi], else 0."""
    return ((w + _rep(0x80 - lo)) & ~(w + _rep(0x7F - hi))) & _HIGH


def _last8(f: Fields, ends: np.ndarray, lengths: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 of 8 digit values, first digit in the lowest byte; bad mask) of fields of <= 8 bytes."""
    if f.words is None:  # aligned uint64 view of the block, 8 bytes of '0' in front
        padded = np.full((f.data.size // 8 + 3) * 8, ord("0"), np.uint8)
        padded[8:8 + f.data.size] = f.data
        f.words = padded.view("<u8")
    q = ends >> 3  # the field's last 8 bytes are padded[ends : ends + 8]
    shift = ((ends & 7) << 3).astype(np.uint64)
    w = (np.take(f.words, q) >> shift) | ((np.take(f.words, q + 1) << (np.uint64(63) - shift)) << np.uint64(1))
    keep = np.take(_KEEP, lengths)
    w = (w & keep) | (_rep(ord("0")) & ~keep)
    w7 = w & _LOW7
    valid = _in_range(w7, ord("0"), ord("9"))
    digits = w7 & _rep(0x0F)
    if base == 16:
        letter = _in_range(w7 | _rep(0x20), ord("a"), ord("f"))
        valid |= letter
        digits += (letter >> np.uint64(7)) * np.uint64(9)
    return digits, ((valid ^ _HIGH) | (w & _HIGH)) != 0


def _fold(digits: np.ndarray, base: int) -> np.ndarray:
    """8 digit bytes (most significant in the lowest byte) -> their value, vectorized."""
    v = ((digits * np.uint64(base * 256 + 1)) >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)
    v = ((v * np.uint64(base**2 * 65536 + 1)) >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)
    return ((v * np.uint64((base**4 << 32) + 1)) >> np.uint64(32)).astype(np.int64)


def parse_hex(f: Fields, cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Fields ``cols`` as hex ids -> ((n, k) int64 ids, -1 where empty; (n, k) bad mask)."""
    starts, ends = f.starts[:, cols], f.ends[:, cols]
    lengths = ends - starts
    digits, bad = _last8(f, ends, np.minimum(lengths, 8), 16)
    ids = _fold(digits, 16)
    for i, j in zip(*np.nonzero(lengths > 8)):  # rare: the byte-matrix path, one field at a time
        width = min(int(lengths[i, j]), _MAX_HEX_DIGITS)
        d = _HEX[_right_aligned(f, starts[i:i + 1, j], ends[i:i + 1, j], width)][0]
        bad[i, j] = lengths[i, j] > _MAX_HEX_DIGITS or bool((d == 255).any())
        ids[i, j] = int((d.astype(np.int64) << np.arange(4 * (width - 1), -1, -4, dtype=np.int64)).sum())
    return np.where(lengths == 0, MISSING_ID, ids), bad


def parse_int(f: Fields, cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Fields ``cols`` as decimal integers (optional leading '-') -> ((n, k) float64, NaN where
    empty; (n, k) bad mask)."""
    starts, ends = f.starts[:, cols], f.ends[:, cols]
    lengths = ends - starts
    neg = (lengths > 0) & (np.take(f.data, np.minimum(starts, f.data.size - 1)) == ord("-"))
    digits_len = lengths - neg
    # 8 digits at a time from the right end (all vectorized; up to 24 digits, 18 allowed), so
    # 9-10 digit values such as MovieLens' Unix timestamps take no per-field Python path.
    values = np.zeros(lengths.shape, np.int64)
    bad = digits_len > _MAX_INT_DIGITS
    for k in range(3):
        part = np.clip(digits_len - 8 * k, 0, 8)
        if k and not part.any():
            break
        digits, part_bad = _last8(f, np.maximum(ends - 8 * k, 0), part, 10)
        with np.errstate(over="ignore"):  # only fields of > 18 digits (bad anyway) can overflow
            values += _fold(digits, 10) * np.int64(10 ** (8 * k))
        bad |= part_bad
    bad |= neg & (digits_len == 0)
    values = np.where(neg, -values, values).astype(np.float64)
    return np.where(lengths == 0, np.nan, values), bad


# -- Criteo ---------------------------------------------------------------------------------------
def criteo_files(path: str | Path) -> list[Path]:
    """The input files: PATH itself, or a folder's ``day_N[.gz]`` files in day order or ``train.txt``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give a Criteo TSV file or a folder with day_N files")
    if path.is_file():
        return [path]
    days = []
    for p in path.iterdir():
        m = re.fullmatch(r"day_(\d+)(\.gz)?", p.name)
        if m and p.is_file():
            days.append((int(m.group(1)), p))
    if days:
        return [p for _, p in sorted(days)]
    for name in ("train.txt", "train.txt.gz"):
        if (path / name).is_file():
            return [path / name]
    raise ValueError(f"{path}: folder holds neither day_N files (Criteo Terabyte) nor train.txt (Criteo Kaggle)")


@dataclass(frozen=True)
class _Columns:
    label: str
    dense: list[str]
    sparse: list[str]

    @property
    def names(self) -> list[str]:
        return [self.label, *self.dense, *self.sparse]


def _columns(spec: DatasetSpec) -> _Columns:
    problems = []
    if spec.label is None:
        problems.append("no label feature (the first TSV field)")
    if spec.timestamp is not None:
        problems.append(f"timestamp {spec.timestamp!r}: Criteo lines have no timestamp; remove it")
    multi = [f.name for f in spec.sparse if f.multi_valued]
    if multi:
        problems.append(f"multi-valued sparse features {multi}: Criteo fields hold one id; use max_length 1")
    if problems:
        raise ValueError(f"feature spec {spec.name!r} does not fit Criteo TSV: " + "; ".join(problems))
    return _Columns(spec.label.name, [f.name for f in spec.dense], [f.name for f in spec.sparse])


def parse_block(
    block: bytes, first_line: int, cols: _Columns
) -> tuple[pa.Table, np.ndarray, np.ndarray, Callable[[int], str]]:
    """One block of Criteo lines -> (table of good rows, their line numbers, bad line numbers, reason)."""
    names = cols.names
    f, struct_bad, struct_reason = split_fields(
        block, first_line, b"\t", len(names), f"({names[0]}, {names[1]}..{names[-1]})"
    )
    bad = np.zeros(f.lines.size, bool)
    checks: list[tuple[int, np.ndarray, str]] = []
    label_len = f.lengths(0)
    label_byte = np.take(f.data, np.minimum(f.starts[:, 0], f.data.size - 1))
    label_bad = (label_len != 1) | ((label_byte != ord("0")) & (label_byte != ord("1")))
    checks.append((0, label_bad, "0 or 1 (click label)"))
    arrays = {cols.label: pa.array((label_byte == ord("1")).astype(np.float32))}
    dense_cols = list(range(1, 1 + len(cols.dense)))
    sparse_cols = list(range(1 + len(cols.dense), len(names)))
    values, dense_bad = parse_int(f, dense_cols)
    ids, sparse_bad = parse_hex(f, sparse_cols)
    for k, j in enumerate(dense_cols):
        checks.append((j, dense_bad[:, k], "an integer (may be negative) or empty for missing"))
        arrays[names[j]] = pa.array(values[:, k], from_pandas=True)  # empty (NaN) -> null = missing
    for k, j in enumerate(sparse_cols):
        checks.append((j, sparse_bad[:, k], f"1-{_MAX_HEX_DIGITS} hex digits (e.g. 68fd1e64) or empty for missing"))
        arrays[names[j]] = pa.array(ids[:, k])
    for _, mask, _ in checks:
        bad |= mask
    table = pa.table(arrays)
    lines = f.lines
    if bad.any():
        table, lines = table.filter(pa.array(~bad)), f.lines[~bad]
    bad_lines = np.union1d(struct_bad, f.lines[bad]) if bad.any() else struct_bad

    def reason(line: int) -> str:
        if line in set(struct_bad.tolist()):
            return struct_reason(line)
        i = int(np.searchsorted(f.lines, line))
        for j, mask, allowed in checks:
            if mask[i]:
                return f"field {names[j]}: got {show(f.text(i, j))}; expected {allowed}"
        return "bad line"

    return table, lines, bad_lines, reason


def ingest_criteo(
    path: str | Path,
    out_dir: str | Path,
    spec: DatasetSpec,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    skip_bad_rows: bool = False,
    chunk_rows: int = 200_000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest Criteo TSV files into ``out_dir``.

    Args:
        path: a TSV file (optionally ``.gz``) or a folder with ``day_N`` files or ``train.txt``.
        out_dir: output folder (see :class:`~recsys.data.writer.DatasetWriter`).
        spec: feature spec; TSV fields map to its label, dense features, then sparse features,
            each group in spec order (``features/criteo.yaml``: label, I1..I13, C1..C26).
        fractions: (train, validation, test) fractions of the lines, in file order.
        skip_bad_rows: skip and count bad lines instead of raising.
        chunk_rows: lines parsed per block (memory ~ 1 KB per line).
        log: progress printer (one line per file), e.g. ``print``.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: empty file, or a bad line (file, line, field, value and what is allowed).
    """
    fractions = check_fractions(fractions)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows {chunk_rows}: expected a positive number of lines")
    cols = _columns(spec)
    files = criteo_files(path)
    line_counts = []
    for p in files:
        n = count_lines(p)
        if n == 0:
            raise ValueError(f"{p}: empty file; expected tab-separated lines: label, I1..I13, C1..C26")
        line_counts.append(n)
    total = int(sum(line_counts))
    boundaries = row_order_boundaries(total, fractions)
    bad = BadRows(skip_bad_rows)
    with DatasetWriter(out_dir, spec) as writer:
        offset, kept, t0 = 0, 0, time.perf_counter()
        for p, n in zip(files, line_counts):
            for first_line, block in read_line_blocks(p, chunk_rows):
                table, lines, bad_lines, reason = parse_block(block, first_line, cols)
                bad.found(p, bad_lines, reason)
                add_by_split(writer, table, split_codes(offset + lines - 1, boundaries))
                kept += table.num_rows
            offset += n
            if log:
                log(f"  {p}: {n} lines, {kept} rows kept so far, {time.perf_counter() - t0:.1f} s")
        if kept == 0:
            raise ValueError(f"{path}: no valid lines ({bad.count} bad lines skipped)")
        check_split_rows(writer, f"--split {','.join(f'{x:g}' for x in fractions)} by line position")
        return writer.finish(
            source={"kind": "criteo", "format": "tsv", "paths": [str(p) for p in files], "lines": line_counts},
            split={"method": "row_order", "fractions": list(fractions), "boundaries": boundaries,
                   "unit": "line position over all files in order (bad lines included)"},
            extra={**bad.manifest(), "missing_id": MISSING_ID},
        )
