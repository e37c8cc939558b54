"""Anybody's interaction logs -> the interaction data-set layout that ``recsys train`` (two-tower) reads.

    recsys ingest interactions ratings.csv --user userId --item movieId --timestamp timestamp --out data/mine
    recsys ingest interactions log.tsv.gz --user 0 --item 1 --timestamp 3 --split leave_last_out --out data/mine
    recsys ingest interactions --train train.csv --validation valid.csv --test test.csv --user u --item i --out data/mine
    recsys ingest interactions data/ml-100k/ml-100k.inter --format recbole --split random --out data/ml100k_rs
    recsys ingest interactions --format lightgcn --train train.txt --test test.txt --out data/gowalla

Readers: :mod:`recsys.data.interaction_formats`; side features and the inferred spec:
:mod:`recsys.data.interaction_features`; order, duplicate, split and history rules:
:mod:`recsys.data.interaction_splits`; docs/interactions.md has all of them. Here: the flags, the
reading of every file into :class:`Rows`, ``--min-rating``, and the write through
:class:`~recsys.data.writer.DatasetWriter` (atomic; bad rows raise, or are skipped and counted).
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from recsys.data.interaction_features import infer_spec, side_features
from recsys.data.interaction_formats import (
    FORMATS,
    FileBadRows,
    TIME_ALLOWED,
    Columns,
    LogPart,
    TokenTable,
    is_parquet,
    parse_floats,
    parse_times,
    read_delimited,
    read_lightgcn,
    read_parquet_log,
    recbole_columns,
    recbole_header,
    recbole_side_files,
)
from recsys.data.interaction_splits import (
    DUPLICATE_RULES,
    SPLIT_METHODS,
    TIE_RULE,
    computed_split,
    count_repeats,
    duplicate_mask,
    history_windows,
    order_key,
    random_codes,
)
from recsys.data.interactions import SPLIT_CODES, history_features
from recsys.data.layout import SPLITS
from recsys.data.parquet_source import FRACTIONS_ALLOWED, MISSING_ID, add_by_split, check_split_rows, fractions_problem, show
from recsys.data.writer import DatasetWriter
from recsys.features.spec import DatasetSpec

DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_HISTORY = 50
SPLIT_VALUES = {b"train": 0, b"validation": 1, b"test": 2}
RECBOLE_DEFAULTS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"}


@dataclass(frozen=True)
class IngestSettings:
    """Every choice of one ``recsys ingest interactions`` run (checked before any data is read).

    Args:
        format: ``log`` (CSV / TSV / parquet), ``recbole`` or ``lightgcn``.
        log: the single log file (its rows are split by ``split``), or None with given splits.
        train, validation, test: given split files (validation optional).
        columns: where user, item, timestamp, rating and the split column are.
        delimiter: the text delimiter; None: detected from the first line.
        header: the text files have a header (None: unless every column is a 0-based position).
        min_rating: keep rows with rating >= it (needs a rating column); None: keep all.
        split: ``leave_last_out``, ``time``, ``random`` or ``column`` (ignored with given splits).
        ratios: train, validation, test fractions for ``time`` / ``random``; for given splits
            without validation, the validation fraction held out of train per user.
        seed: seed of ``random`` (and of a validation held out of a given train).
        history_length: the ``history_item_id`` feature's length (0: no history feature).
        skip_bad_rows: skip and count bad rows instead of raising on the first.
        chunk_rows: lines per block read, rows per chunk written.
    """

    format: str = "log"
    log: Path | None = None
    train: Path | None = None
    validation: Path | None = None
    test: Path | None = None
    columns: Columns = field(default_factory=lambda: Columns("user_id", "item_id"))
    delimiter: bytes | None = None
    header: bool | None = None
    min_rating: float | None = None
    split: str = "random"
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    seed: int = 0
    history_length: int = DEFAULT_HISTORY
    skip_bad_rows: bool = False
    chunk_rows: int = 200_000

    @property
    def given(self) -> bool:
        return self.log is None

    def files(self) -> list[tuple[Path, int | None]]:
        """(file, split code or None) in input order."""
        if self.log is not None:
            return [(self.log, None)]
        return [(p, SPLIT_CODES[s]) for p, s in ((self.train, "train"), (self.validation, "validation"), (self.test, "test"))
                if p is not None]


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1).

    Raises:
        ValueError: naming ``--ratios``, the value and what is allowed.
    """
    try:
        values = [float(x) for x in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"--ratios {text!r}: not comma-separated numbers; {FRACTIONS_ALLOWED}") from None
    problem = fractions_problem(values)
    if problem:
        raise ValueError(f"--ratios {text if isinstance(text, str) else ','.join(map(str, text))}: {problem}; {FRACTIONS_ALLOWED}")
    return tuple(values)  # type: ignore[return-value]


def check_settings(s: IngestSettings) -> None:
    """Every flag problem before any data is read (one message, all problems).

    Raises:
        ValueError: naming the flags, the values and what is allowed.
        FileNotFoundError: an input file that does not exist.
    """
    problems = []
    if s.format not in FORMATS:
        problems.append(f"--format {s.format!r}: expected one of {list(FORMATS)}")
    if s.split not in SPLIT_METHODS:
        problems.append(f"--split {s.split!r}: expected one of {list(SPLIT_METHODS)}")
    given = [p for p in (s.train, s.validation, s.test) if p is not None]
    if s.log is not None and given:
        problems.append("give either one LOG (split by --split) or --train/--validation/--test files (kept as given), not both")
    if s.log is None and (s.train is None or s.test is None):
        problems.append("no input: give a LOG file, or --train F --test F [--validation F]")
    if s.format == "lightgcn" and s.log is not None:
        problems.append("--format lightgcn reads given splits: --train train.txt [--validation valid.txt] --test test.txt")
    if s.format == "lightgcn" and (s.columns.timestamp is not None or s.columns.rating is not None or s.columns.split is not None):
        problems.append("--format lightgcn lists hold users and items only: drop --timestamp / --rating / --split-column")
    if s.split == "column" and s.columns.split is None and s.log is not None:
        problems.append("--split column needs --split-column COL (values train / validation / test)")
    if s.columns.split is not None and (s.split != "column" or s.log is None):
        problems.append(f"--split-column {s.columns.split!r} is read only with --split column and one LOG")
    if s.min_rating is not None and s.columns.rating is None:
        problems.append(f"--min-rating {s.min_rating:g} needs --rating COL (the column it is compared with)")
    if s.min_rating is not None and not np.isfinite(s.min_rating):
        problems.append(f"--min-rating {s.min_rating}: expected a finite number")
    if s.columns.rating is not None and s.min_rating is None and s.format != "recbole":
        problems.append(f"--rating {s.columns.rating!r} is read for --min-rating only (implicit feedback: every kept row "
                        "is a positive); add --min-rating X or drop --rating")
    if isinstance(s.seed, bool) or not isinstance(s.seed, int) or s.seed < 0:
        problems.append(f"--seed {s.seed!r}: expected a non-negative integer")
    if not isinstance(s.history_length, int) or s.history_length < 0 or s.history_length == 1:
        problems.append(f"--history-length {s.history_length!r}: expected 0 (no history feature) or an integer >= 2")
    if s.chunk_rows < 1:
        problems.append(f"--chunk-rows {s.chunk_rows}: expected a positive number of rows")
    if problems:
        raise ValueError("recsys ingest interactions: " + "; ".join(problems))
    parse_ratios(s.ratios)
    for path, _ in s.files():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")


# -- reading ------------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Every kept interaction, in input order (columns of equal length ``n``).

    Attributes:
        user, item: ``(n,)`` codes into ``users`` / ``items``.
        time: ``(n,)`` time keys (int64 or float64), None without a timestamp column.
        timestamp: ``(n,)`` int64 stored timestamps (floor of the key in seconds), or None.
        rating: ``(n,)`` float64 or None.
        given: ``(n,)`` int8 split codes from the files / the split column, or None.
        file: ``(n,)`` index into ``paths``; position: ``(n,)`` 1-based line / row.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray | None
    timestamp: np.ndarray | None
    rating: np.ndarray | None
    given: np.ndarray | None
    file: np.ndarray
    position: np.ndarray
    paths: list[Path]

    def __len__(self) -> int:
        return int(self.user.size)

    def take(self, mask: np.ndarray) -> "Rows":
        pick = (lambda a: None if a is None else a[mask])
        return Rows(self.user[mask], self.item[mask], pick(self.time), pick(self.timestamp), pick(self.rating),
                    pick(self.given), self.file[mask], self.position[mask], self.paths)


def _parts(s: IngestSettings, path: Path, bad: FileBadRows) -> Iterator[LogPart]:
    if s.format == "lightgcn":
        yield from read_lightgcn(path, bad=bad)
    elif s.format == "recbole":
        head = recbole_header(path)
        yield from read_delimited(path, s.columns, sep=b"\t", header=True, bad=bad, chunk_rows=s.chunk_rows,
                                  header_names=head.names, quoting=False)
    elif is_parquet(path):
        yield from read_parquet_log(path, s.columns, bad=bad, chunk_rows=s.chunk_rows)
    else:
        yield from read_delimited(path, s.columns, sep=s.delimiter, header=s.header, bad=bad, chunk_rows=s.chunk_rows)


def read_rows(s: IngestSettings, users: TokenTable, items: TokenTable, bad: FileBadRows) -> Rows:
    """Read every input file (streamed in blocks); bad values raise or are skipped and counted."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "item", "time", "rating", "given", "file", "position")}
    paths = []
    for file_index, (path, code) in enumerate(s.files()):
        paths.append(path)
        for part in _parts(s, path, bad):
            f, n = part.fields, part.positions.size
            checks: list[tuple[np.ndarray, str, str]] = []
            for role in ("user", "item"):
                checks.append((f[role] == b"", role, f"a {role} id (not empty)"))
            parsed: dict[str, np.ndarray] = {}
            if "timestamp" in f:
                parsed["time"], mask = parse_times(f["timestamp"])
                checks.append((mask, "timestamp", TIME_ALLOWED))
            if "rating" in f:
                parsed["rating"], mask = parse_floats(f["rating"])
                checks.append((mask, "rating", "a number"))
            if "split" in f:
                # One dictionary lookup per distinct value (a handful), not per row.
                distinct, inverse = np.unique(f["split"], return_inverse=True)
                parsed["given"] = np.array([SPLIT_VALUES.get(v, -1) for v in distinct.tolist()], np.int8)[inverse.reshape(-1)]
                checks.append((parsed["given"] < 0, "split", "one of train, validation, test"))
            row_bad = np.logical_or.reduce([m for m, _, _ in checks]) if n else np.zeros(0, bool)
            if row_bad.any():
                def reason(line: int, p=part, c=checks) -> str:
                    i = int(np.flatnonzero(p.positions == line)[0])
                    for mask, role, allowed in c:
                        if mask[i]:
                            value = p.fields[role][i]
                            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                            return f"field {p.names.get(role, role)}: got {show(text)}; expected {allowed}"
                    return "bad row"
                bad.found(path, np.unique(part.positions[row_bad]), reason)
            keep = ~row_bad
            out["user"].append(users.codes(f["user"][keep]))
            out["item"].append(items.codes(f["item"][keep]))
            for k in ("time", "rating", "given"):
                if k in parsed:
                    out[k].append(parsed[k][keep])
            if code is not None:
                out["given"].append(np.full(int(keep.sum()), code, np.int8))
            out["file"].append(np.full(int(keep.sum()), file_index, np.int16))
            out["position"].append(part.positions[keep])
    if not out["user"] or sum(a.size for a in out["user"]) == 0:
        raise ValueError(f"{', '.join(map(str, paths))}: no valid interactions ({bad.count} bad rows skipped)")
    cat = {k: np.concatenate(v) if v else None for k, v in out.items()}
    t = cat["time"]
    if t is not None and len({a.dtype.kind for a in out["time"]}) > 1:
        t = t.astype(np.float64)  # a block of integers and a block of dates / decimals: one key type
    stamps = None if t is None else (t if t.dtype.kind == "i" else np.floor(t).astype(np.int64))
    return Rows(cat["user"], cat["item"], t, stamps, cat["rating"], cat["given"], cat["file"], cat["position"], paths)


def split_rows(s: IngestSettings, rows: Rows, key: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(split codes, the manifest's ``split`` entry)."""
    ratios = list(s.ratios)
    if s.given and s.validation is None:
        codes = rows.given.copy()  # type: ignore[union-attr]
        train = np.flatnonzero(codes == 0)
        held = random_codes(rows.user[train], (1 - ratios[1], ratios[1], 0.0), s.seed)
        codes[train[held == 1]] = 1
        return codes, {"method": "given", "files": {sp: str(p) for sp, p in (("train", s.train), ("test", s.test))},
                       "validation": {"rule": "held out of the given train file per user: rows in a seeded random order "
                                              "(numpy default_rng(seed)), RecBole's count rule with ratios "
                                              f"({1 - ratios[1]:g}, {ratios[1]:g})", "fraction": ratios[1], "seed": s.seed}}
    if s.given:
        return rows.given.copy(), {"method": "given", "kept_as_given": True,  # type: ignore[union-attr]
                                   "files": {sp: str(getattr(s, sp)) for sp in SPLITS}}
    if s.split == "column":
        return rows.given.copy(), {"method": "column", "column": str(s.columns.split),  # type: ignore[union-attr]
                                   "values": {"train": 0, "validation": 1, "test": 2}}
    return computed_split(s.split, rows.user, key, rows.time, s.ratios, s.seed)


def no_training_rows(rows: Rows, codes: np.ndarray, users: TokenTable, items: TokenTable) -> dict[str, Any]:
    """Users and items of validation / test rows that no training row has (cold start), with examples."""
    out = {}
    for name, ids, table in (("users", rows.user, users), ("items", rows.item, items)):
        held = np.unique(ids[codes > 0])
        missing = np.setdiff1d(held, np.unique(ids[codes == 0]))
        out[name] = {"count": int(missing.size), "rows": int(np.isin(ids[codes > 0], missing).sum()),
                     "examples": [table.tokens[i].decode("utf-8", "replace") for i in missing[:10].tolist()]}
    out["rule"] = "ids of validation / test rows that no training row has: they map to the OOV index 0 of user_id / item_id"
    return out


# -- the run ---------------------------------------------------------------------------------------
def ingest_interactions(
    out_dir: str | Path,
    settings: IngestSettings,
    *,
    user_features: Path | None = None,
    user_key: str | int | None = None,
    item_features: Path | None = None,
    item_key: str | int | None = None,
    list_sep: str | None = None,
    spec: DatasetSpec | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest interaction logs into ``out_dir`` (the layout of :mod:`recsys.data.layout`).

    Args:
        out_dir: the output folder (written atomically by :class:`DatasetWriter`).
        settings: what to read and how to split (:class:`IngestSettings`).
        user_features, item_features: side-feature files (CSV / TSV / parquet); RecBole reads
            ``NAME.user`` / ``NAME.item`` beside the ``.inter`` file when present.
        user_key, item_key: their key columns (default: the log's user / item column name).
        list_sep: separator of multi-valued side values (e.g. ``|``); RecBole token_seq: space.
        spec: a feature spec overriding the inferred one (``--spec``).
        name: the data set's name (default: ``interactions``).
        log: progress printer.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: a bad flag (before reading), a bad row (file, line, field, value), a spec that
            does not fit the columns, or an empty split.
    """
    s = settings
    check_settings(s)
    t0 = _time.perf_counter()
    if s.format == "recbole":
        defaults = {r: v for r, v in RECBOLE_DEFAULTS.items() if v in recbole_header(s.files()[0][0]).names}
        cols = s.columns  # RecBole's default field names fill the roles the flags leave open
        columns = Columns(cols.user, cols.item, cols.timestamp if cols.timestamp is not None else defaults.get("timestamp"),
                          cols.rating if cols.rating is not None else defaults.get("rating"), cols.split)
        for path, _ in s.files():
            recbole_columns(path, columns)
        s = IngestSettings(**{**s.__dict__, "columns": columns})
        sides = recbole_side_files(s.files()[0][0])
        if user_features is None and "user" in sides:
            user_features, user_key = sides["user"], user_key or columns.user
        if item_features is None and "item" in sides:
            item_features, item_key = sides["item"], item_key or columns.item
    bad = FileBadRows(s.skip_bad_rows)
    users, items = TokenTable(), TokenTable()
    rows = read_rows(s, users, items, bad)
    read_rows_count = len(rows)
    if log:
        log(f"  read {read_rows_count:,} interactions of {len(users):,} users and {len(items):,} items "
            f"({_time.perf_counter() - t0:.1f} s)")
    sides = side_features(
        rows, users, items, bad, user_features=user_features, user_key=user_key if user_key is not None else s.columns.user,
        item_features=item_features, item_key=item_key if item_key is not None else s.columns.item,
        list_sep=list_sep, delimiter=s.delimiter, header=s.header, recbole=s.format == "recbole",
        field_names={"user": str(s.columns.user), "item": str(s.columns.item)})
    rows = rows.take(sides.row_ok)

    rating_filter = None
    if s.min_rating is not None:
        before = len(rows)
        rows = rows.take(rows.rating >= s.min_rating)  # type: ignore[operator]
        rating_filter = {"threshold": s.min_rating, "column": str(s.columns.rating), "dropped": before - len(rows),
                         "kept": len(rows), "label": 1.0,
                         "rule": "rows with a rating below the threshold are dropped before splitting; kept rows are positives"}
        if len(rows) == 0:
            raise ValueError(f"--min-rating {s.min_rating:g}: drops all {before} interactions; give a lower threshold")

    key = order_key(rows.time, len(rows))
    keep_repeats = s.given or s.split == "column"
    if keep_repeats:
        duplicates: dict[str, Any] = {"rule": DUPLICATE_RULES["keep"]}
    else:
        repeat = duplicate_mask(rows.user, rows.item, key)
        duplicates = {"rule": DUPLICATE_RULES["drop"], "dropped": int(repeat.sum())}
        if repeat.any():
            rows = rows.take(~repeat)
            key = key[~repeat]
    codes, split_info = split_rows(s, rows, key)
    if keep_repeats:
        duplicates.update(count_repeats(rows.user, rows.item, codes))

    spec = infer_spec(sides, name=name or "interactions", history_length=s.history_length,
                      timestamp=rows.timestamp is not None, override=spec)
    sides.prepare(spec)
    user_raw, user_tokens = users.raw_ids()
    item_raw, item_tokens = items.raw_ids()
    history = [spec.feature(name) for name in history_features(spec)]  # checked item_id histories (infer_spec)
    histories, history_rule = None, None
    if history:
        method = "time" if s.split == "time" and not s.given else "training_only"
        histories, history_rule = history_windows(method, rows.user, item_raw[rows.item], key, codes)
    names = [f.name for f in spec.features if f.kind != "label"]
    with DatasetWriter(out_dir, spec) as writer:
        for lo in range(0, len(rows), s.chunk_rows):
            sl = slice(lo, min(lo + s.chunk_rows, len(rows)))
            u, i = rows.user[sl], rows.item[sl]
            cols: dict[str, Any] = {"user_id": pa.array(user_raw[u]), "item_id": pa.array(item_raw[i])}
            cols.update(sides.row_columns(u, i, names))
            for f in history:
                cols[f.name] = histories.lists(sl, f.max_length)  # type: ignore[union-attr]
            table = {spec.label.name: pa.array(np.ones(sl.stop - sl.start, np.float32)),  # type: ignore[union-attr]
                     **{n: cols[n] for n in names}}
            if spec.timestamp is not None:
                table[spec.timestamp] = pa.array(rows.timestamp[sl])  # type: ignore[index]
            add_by_split(writer, pa.table(table), codes[sl])
        check_split_rows(writer, f"--split {split_info['method']}")
        writer.add_catalogue("items", "item_id", sides.catalogue("item", item_raw, rows.item, spec), keep_unseen=True)
        if sides.user is not None:
            writer.add_catalogue("users", "user_id", sides.catalogue("user", user_raw, rows.user, spec))
        return writer.finish(
            source={"kind": "interactions", "format": s.format, "paths": [str(p) for p in rows.paths],
                    "columns": {k: v for k, v in s.columns.roles().items()},
                    "delimiter": None if s.delimiter is None else s.delimiter.decode(),
                    "side_files": sides.files(), "rows_read": read_rows_count,
                    "ids": {"user_id": "integer" if not user_tokens else "hashed text (blake2b, tokens in vocab)",
                            "item_id": "integer" if not item_tokens else "hashed text (blake2b, tokens in vocab)"}},
            split={**split_info, "tie_rule": TIE_RULE},
            extra={**bad.manifest(), "missing_id": MISSING_ID, "min_rating": rating_filter, "duplicates": duplicates,
                   "no_training_rows": no_training_rows(rows, codes, users, items),
                   "side_features": sides.describe(spec),
                   **({"history": {f.name: {"of": "item_id", "max_length": f.max_length, "rule": history_rule} for f in history}}
                      if history else {})},
            tokens={"user_id": user_tokens, "item_id": item_tokens, **sides.tokens},
        )
