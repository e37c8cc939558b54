"""User / item side-feature files of ``recsys ingest interactions``: the inferred spec and the columns.

Every column of a side-feature file other than its key becomes a tower feature of its entity
(``tower: user`` for ``--user-features``, ``tower: item`` for ``--item-features``), by one rule
(RecBole's typed headers say it outright: ``token``, ``token_seq``, ``float``):

* **multi-valued categorical** when ``--list-sep`` is given and some value holds it (``Comedy|Drama``;
  RecBole ``token_seq``, space-separated; a parquet list column): a list of ids, ``max_length`` = the longest list,
  ``pooling: mean``; an empty value is an empty list;
* **numeric** (a dense feature, stored float32 like the dense columns of CTR data sets) when every
  non-empty value is a number, except integer columns with at most :data:`MAX_CODES` distinct
  values, which are codes (occupation 0-20, flags) and stay categorical; empty = missing (the
  writer stores 0 and counts it in ``missing_dense``);
* **categorical** otherwise: one id per value; empty = raw id ``-1``; except text with a
  different value on (nearly) every line (distinct values >= :data:`NEAR_UNIQUE` x lines: names,
  titles, URLs), which identifies the entity no better than its key and is left out
  (``side_features.ignored_columns`` in the manifest; a RecBole ``token`` column is always kept).

Ids follow :class:`~recsys.data.interaction_formats.TokenTable`'s rule per column: integers keep
their value, other text is hashed (blake2b) and kept as the vocabulary token. Feature names are the
column names with characters outside ``[A-Za-z0-9_]`` replaced by ``_``; a name taken by
``user_id``, ``item_id``, ``label``, ``timestamp``, ``history_item_id`` or by the other entity's file
gets the prefix ``user_`` / ``item_``. ``--spec FILE`` replaces the inferred spec: its features must
be ``user_id``, ``item_id``, a label, history features of ``item_id`` and side features by those names.

Dense features have no ``tower`` key in the spec schema yet: the manifest's ``side_features`` entry
names each one's entity. ``items.parquet`` / ``users.parquet`` hold the sparse side features (the
writer's catalogues take sparse columns only); dense ones are in the split rows.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.criteo import read_text_bytes
from recsys.data.interaction_formats import (
    _INT,
    FileBadRows,
    TokenTable,
    as_bytes,
    has_header,
    is_parquet,
    parse_floats,
    recbole_header,
    sniff_delimiter,
)
from recsys.data.interactions import history_target
from recsys.data.parquet_source import MISSING_ID, BadRows, parquet_files, show
from recsys.features.spec import DatasetSpec, DenseFeature, SparseFeature, spec_from_dict

MAX_CODES = 32
PARQUET_LIST_SEP = b"\x1f"  # joins a parquet list column's values (the ASCII unit separator never occurs in ids)
NEAR_UNIQUE = 0.9  # text columns with at least this share of distinct values per line are left out
ID_DIM = 32
SIDE_DIM = 8
RESERVED = ("label", "user_id", "item_id", "timestamp", "history_item_id")
KINDS = ("categorical", "multi_valued", "numeric")


@dataclass
class Column:
    """One side column as a feature: entity, source column, inferred kind, list separator."""

    entity: str  # "user" or "item"
    column: str
    kind: str  # one of KINDS
    sep: bytes | None
    max_length: int
    distinct: int


@dataclass
class SideFeatures:
    """The side tables joined to the interactions: which row of each file an id has, and features.

    Attributes:
        user, item: the side tables (None when not given).
        user_pos, item_pos: ``(codes,)`` side row of each user / item code, -1 when absent.
        row_ok: ``(n,)`` rows whose user and item are listed (all True without side files).
        columns: feature name -> :class:`Column`.
        ignored: columns not used, with the reason.
        num_users, num_items: distinct ids (codes) known.
    """

    user: SideTable | None
    item: SideTable | None
    user_pos: np.ndarray
    item_pos: np.ndarray
    row_ok: np.ndarray
    columns: dict[str, Column]
    ignored: dict[str, str]
    num_users: int
    num_items: int
    values: dict[str, Any] = field(default_factory=dict)  # feature -> per side row: np.ndarray or pa.Array
    tokens: dict[str, dict[int, str]] = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        return {e: str(t.path) for e, t in (("user", self.user), ("item", self.item)) if t is not None}

    def prepare(self, spec: DatasetSpec) -> None:
        """Per side row, the value of every side feature of ``spec`` (in the writer's raw encoding)."""
        for f in spec.features:
            col = self.columns.get(f.name)
            if col is None or f.name in self.values:
                continue
            table = self.user if col.entity == "user" else self.item
            raw = table.columns[col.column]  # type: ignore[union-attr]
            if isinstance(f, DenseFeature):
                x, wrong = parse_floats(raw)
                wrong &= raw != b""
                if wrong.any():  # a column --spec declares dense: one non-number is an error, not a bad row
                    i = int(np.flatnonzero(wrong)[0])
                    raise ValueError(
                        f"{table.path}, line {table.lines[i]}: field {col.column}: got "  # type: ignore[union-attr]
                        f"{show(raw[i].decode('utf-8', 'replace'))}; expected a number (dense feature {f.name} in --spec), "
                        "or empty for missing")
                self.values[f.name] = pa.array(x, from_pandas=True)  # NaN (empty) -> null = missing
            elif isinstance(f, SparseFeature) and f.multi_valued:
                sep = col.sep
                lists = [[p.strip() for p in (v.split(sep) if sep else [v])] for v in raw.tolist()]
                lists = [[p for p in parts if p] for parts in lists]
                flat = np.array([p for parts in lists for p in parts], dtype=bytes) if any(lists) else np.zeros(0, "S1")
                ids = self._ids(f.name, flat)
                offsets = np.zeros(len(lists) + 1, np.int32)
                np.cumsum([len(parts) for parts in lists], out=offsets[1:])
                self.values[f.name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int64()))
            else:
                ids = self._ids(f.name, raw)
                self.values[f.name] = np.where(raw == b"", MISSING_ID, ids).astype(np.int64)

    def _ids(self, name: str, values: np.ndarray) -> np.ndarray:
        table = TokenTable()
        codes = table.codes(values)
        raw, tokens = table.raw_ids()
        if tokens:
            self.tokens[name] = tokens
        return raw[codes] if codes.size else np.zeros(0, np.int64)

    def row_columns(self, user: np.ndarray, item: np.ndarray, names: list[str]) -> dict[str, Any]:
        """The side features of rows with user codes ``user`` and item codes ``item``."""
        out = {}
        for name in names:
            col = self.columns.get(name)
            if col is None:
                continue
            pos = self.user_pos[user] if col.entity == "user" else self.item_pos[item]
            v = self.values[name]
            out[name] = v.take(pa.array(pos)) if isinstance(v, pa.Array) else pa.array(v[pos])
        return out

    def catalogue(self, entity: str, raw: np.ndarray, codes: np.ndarray, spec: DatasetSpec) -> pa.Table:
        """The catalogue table of ``entity``: every key of its side file, else every id of the rows."""
        key = f"{entity}_id"
        table = self.user if entity == "user" else self.item
        if table is None:
            return pa.table({key: pa.array(raw[np.unique(codes)])})
        pos = self.user_pos if entity == "user" else self.item_pos
        listed = np.flatnonzero(pos >= 0)
        rows = pos[listed]
        order = np.argsort(rows)
        cols = {key: pa.array(raw[listed[order]])}
        for f in spec.sparse:
            col = self.columns.get(f.name)
            if col is not None and col.entity == entity:
                v = self.values[f.name]
                cols[f.name] = v if isinstance(v, pa.Array) else pa.array(v)
        return pa.table(cols)

    def describe(self, spec: DatasetSpec) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in spec.features:
            col = self.columns.get(f.name)
            if col is None:
                continue
            table = self.user if col.entity == "user" else self.item
            kind = "numeric" if isinstance(f, DenseFeature) else ("multi_valued" if f.multi_valued else "categorical")
            out[f.name] = {"entity": col.entity, "tower": col.entity, "column": col.column, "file": str(table.path),  # type: ignore[union-attr]
                           "kind": kind, "inferred": col.kind, "distinct": col.distinct,
                           **({"list_sep": col.sep.decode()} if kind == "multi_valued" and col.sep else {})}
        if self.ignored:
            out["ignored_columns"] = self.ignored
        return out


# -- side-feature files ---------------------------------------------------------------------------
@dataclass
class SideTable:
    """A side-feature file read whole: the key column and every other column, as text per row.

    Attributes:
        path: the file.
        key: the key column's name.
        keys: ``(n,)`` key values (bytes), distinct.
        columns: column name -> ``(n,)`` values (bytes; empty = missing).
        types: column name -> RecBole type (``token``, ``token_seq``, ``float``) or None (infer).
        lines: ``(n,)`` 1-based line (row) number of each key.
    """

    path: Path
    key: str
    keys: np.ndarray
    columns: dict[str, np.ndarray]
    types: dict[str, str | None]
    lines: np.ndarray


def read_side_table(path: Path, key: str | int, *, sep: bytes | None, header: bool | None, bad: BadRows | FileBadRows,
                    recbole: bool = False) -> SideTable:
    """Read a user or item feature file (CSV / TSV with quotes, parquet, or a RecBole .user / .item).

    Raises:
        ValueError: the key is not a column, a line has the wrong number of fields, a key is empty
            or listed twice (as bad rows: file, line, field, value).
    """
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"{path}: no such side-feature file")
    if not recbole and is_parquet(path):
        table = pa.concat_tables([pq.read_table(f) for f in parquet_files(path)])
        names = table.column_names
        k = names[key] if isinstance(key, int) and key < len(names) else key
        if k not in names:
            raise ValueError(f"{path}: key {key!r} is not a column of {names}")
        cols, types = {}, {}
        for n in names:
            col = table.column(n)
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):  # a list per key (tags): joined
                text = [PARQUET_LIST_SEP.decode().join(map(str, v)) if v else "" for v in col.to_pylist()]
                cols[n], types[n] = np.array([t.encode("utf-8") for t in text], dtype=bytes), "list"
            else:
                cols[n], types[n] = as_bytes(pc.cast(col, pa.string()).fill_null("")), None
        return _side(path, k, np.arange(1, table.num_rows + 1), cols, types, bad)
    data = read_text_bytes(path)
    if not data.strip():
        raise ValueError(f"{path}: empty file; expected a header line, then one line per key")
    sep = b"\t" if recbole else (sep if sep is not None else sniff_delimiter(path))
    text = data.decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text), delimiter=sep.decode()) if len(sep) == 1 and not recbole else None
    rows_iter = reader if reader is not None else (line.split(sep.decode()) for line in text.splitlines())
    rows, lines, previous = [], [], 0
    for parts in rows_iter:
        line = previous + 1
        previous = reader.line_num if reader is not None else previous + 1
        if parts:
            rows.append(parts)
            lines.append(line)
    if recbole:
        head = recbole_header(path)
        names, types = head.names, dict(zip(head.names, head.types))
        rows, lines = rows[1:], lines[1:]
    elif has_header({"key": key}, header):
        names, types = rows[0], {n: None for n in rows[0]}
        rows, lines = rows[1:], lines[1:]
    else:
        names = [f"column_{j}" for j in range(len(rows[0]))]
        types = {n: None for n in names}
    width = len(names)
    k = names[key] if isinstance(key, int) and key < width else key
    if k not in names:
        raise ValueError(f"{path}: key {key!r} is not a column of {names}" + (" (RecBole: names without :type)" if recbole else ""))
    wrong = {ln: len(p) for ln, p in zip(lines, rows) if len(p) != width or any("\x00" in v for v in p)}
    if wrong:
        bad.found(path, np.array(sorted(wrong)), lambda ln: (
            "NUL byte: binary or UTF-16 data; expected text" if wrong[ln] == width else
            f"expected {width} {sep.decode()!r}-separated fields ({', '.join(names)}; quote values holding the delimiter), got {wrong[ln]}"))
    good = [(ln, p) for ln, p in zip(lines, rows) if ln not in wrong]
    cols = {n: np.array([p[j].encode("utf-8", "surrogateescape") for _, p in good], dtype=bytes) if good else np.zeros(0, "S1")
            for j, n in enumerate(names)}
    return _side(path, k, np.array([ln for ln, _ in good], np.int64), cols, types, bad)


def _side(path: Path, key: str, lines: np.ndarray, cols: dict[str, np.ndarray], types: dict[str, str | None], bad: BadRows | FileBadRows) -> SideTable:
    keys = cols[key]
    empty = keys == b""
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    dup = np.ones(keys.size, bool)
    dup[first] = False
    problem = empty | dup
    if problem.any():
        bad.found(path, lines[problem], lambda ln: (
            f"field {key}: got '';  expected a key (not empty)" if keys[int(np.searchsorted(lines, ln))] == b""
            else f"field {key}: got {show(keys[int(np.searchsorted(lines, ln))].decode('utf-8', 'replace'))}, a duplicate key; one line per key"))
    keep = ~problem
    return SideTable(path, key, keys[keep], {n: v[keep] for n, v in cols.items() if n != key},
                     {n: t for n, t in types.items() if n != key}, lines[keep])


def _kind(values: np.ndarray, rtype: str | None, list_sep: bytes | None) -> tuple[str | None, bytes | None, int, int]:
    """(kind or None to ignore, list separator, max list length, distinct values) of one column."""
    nonempty = values[values != b""]
    if rtype == "float_seq":
        return None, None, 0, 0
    if rtype in ("token_seq", "list"):
        sep = b" " if rtype == "token_seq" else PARQUET_LIST_SEP
        lists = [v.split(sep) for v in nonempty.tolist()]
        return "multi_valued", sep, max((len(p) for p in lists), default=1), len({x for p in lists for x in p})
    if rtype == "float":
        return "numeric", None, 1, int(np.unique(nonempty).size)
    if rtype == "token":
        return "categorical", None, 1, int(np.unique(nonempty).size)
    if nonempty.size == 0:
        return None, None, 0, 0
    if list_sep and any(list_sep in v for v in nonempty.tolist()):
        lists = [[p.strip() for p in v.split(list_sep) if p.strip()] for v in nonempty.tolist()]
        return "multi_valued", list_sep, max(len(p) for p in lists), len({x for p in lists for x in p})
    uniq = np.unique(nonempty)
    _, wrong = parse_floats(uniq)
    if not wrong.any():
        codes = all(_INT.fullmatch(v) for v in uniq.tolist()) and uniq.size <= MAX_CODES
        return ("categorical" if codes else "numeric"), None, 1, int(uniq.size)
    if values.size > 1 and uniq.size >= NEAR_UNIQUE * values.size:
        return None, None, 0, int(uniq.size)  # a name / title / URL per key: it says no more than the key
    return "categorical", None, 1, int(uniq.size)


def _name(column: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", column)
    return name if re.match(r"[A-Za-z_]", name) else f"f_{name}"


def side_features(rows, users: TokenTable, items: TokenTable, bad: FileBadRows, *, user_features: Path | None,
                  user_key: str | int, item_features: Path | None, item_key: str | int, list_sep: str | None,
                  delimiter: bytes | None, header: bool | None, recbole: bool, field_names: dict[str, str]) -> SideFeatures:
    """Read the side files, join them to the rows (unlisted ids are bad rows), infer each column's kind."""
    sep = list_sep.encode("utf-8") if list_sep else None
    tables: dict[str, SideTable | None] = {"user": None, "item": None}
    pos = {"user": np.full(len(users), -1, np.int64), "item": np.full(len(items), -1, np.int64)}
    row_ok = np.ones(len(rows), bool)
    for entity, path, key, ids, codes in (("user", user_features, user_key, users, rows.user),
                                          ("item", item_features, item_key, items, rows.item)):
        if path is None:
            continue
        table = read_side_table(Path(path), key, sep=delimiter, header=header, bad=bad, recbole=recbole)
        tables[entity] = table
        side_codes = ids.codes(table.keys)  # catalogue ids nobody interacted with get codes too
        p = np.full(len(ids), -1, np.int64)
        p[side_codes] = np.arange(side_codes.size)
        pos[entity] = p
        missing = p[codes] < 0
        for file_index, file in enumerate(rows.paths):
            hit = missing & (rows.file == file_index)
            if hit.any():
                lines = np.sort(rows.position[hit])
                bad.found(file, np.unique(lines), lambda line, fi=file_index, e=entity, c=codes, t=ids, m=missing: (
                    f"field {field_names[e]}: got {show(t.tokens[int(c[m & (rows.file == fi) & (rows.position == line)][0])].decode('utf-8', 'replace'))}; "
                    f"expected a{'n' if e == 'item' else ''} {e} listed in {path}"))
        row_ok &= ~missing
    columns, ignored = {}, {}
    taken = set(RESERVED)
    names = {e: {c: _name(c) for c in t.columns} for e, t in tables.items() if t is not None}
    clash = set(names.get("user", {}).values()) & set(names.get("item", {}).values())
    for entity, table in tables.items():
        if table is None:
            continue
        for column, values in table.columns.items():
            name = names[entity][column]
            if name in taken or name in clash:
                name = f"{entity}_{name}"
            kind, list_sep_used, max_length, distinct = _kind(values, table.types.get(column), sep)
            if kind is None:
                ignored[f"{entity}:{column}"] = ("RecBole float_seq (no dense lists)" if table.types.get(column) else
                                                 "text, a different value on (nearly) every line: says no more than the key" if distinct
                                                 else "empty column")
                continue
            taken.add(name)
            columns[name] = Column(entity, column, kind, list_sep_used, max_length, distinct)
    return SideFeatures(tables["user"], tables["item"], pos["user"], pos["item"], row_ok, columns, ignored,
                        len(users), len(items))


def infer_spec(sides: SideFeatures, *, name: str, history_length: int, timestamp: bool,
               override: DatasetSpec | None = None) -> DatasetSpec:
    """The data set's feature spec (see the module docstring), or ``override`` checked against the columns.

    Raises:
        ValueError: an override naming columns that do not exist, without user_id / item_id / a
            label, or with a timestamp the input does not have.
    """
    if override is not None:
        return _check_override(override, sides, timestamp)

    def sparse(fname: str, cardinality: int, tower: str, dim: int, **more: Any) -> dict[str, Any]:
        return {"name": fname, "kind": "sparse", "cardinality": max(int(cardinality) + 1, 2), "tower": tower,
                "embedding_dim": dim, **more}

    def side(entity: str) -> list[dict[str, Any]]:
        out = []
        for fname, c in sides.columns.items():
            if c.entity != entity:
                continue
            if c.kind == "numeric":  # the tower key once the spec schema gives dense features one
                out.append({"name": fname, "kind": "dense", **({"tower": entity} if "tower" in DenseFeature.model_fields else {})})
            elif c.kind == "multi_valued":
                out.append(sparse(fname, c.distinct + 1, entity, SIDE_DIM, max_length=max(c.max_length, 2), pooling="mean"))
            else:
                out.append(sparse(fname, c.distinct + 1, entity, SIDE_DIM))
        return out

    features = [{"name": "label", "kind": "label"}, sparse("user_id", sides.num_users, "user", ID_DIM), *side("user")]
    if history_length:
        features.append(sparse("history_item_id", sides.num_items, "user", ID_DIM, max_length=history_length,
                               pooling="mean", history_of="item_id"))
    features += [sparse("item_id", sides.num_items, "item", ID_DIM), *side("item")]
    raw = {"name": name, "description": "interactions ingested by recsys ingest interactions", "features": features}
    if timestamp:
        raw["timestamp"] = "timestamp"
    return spec_from_dict(raw, "the spec inferred by recsys ingest interactions")


def _check_override(spec: DatasetSpec, sides: SideFeatures, timestamp: bool) -> DatasetSpec:
    problems = []
    names = {f.name: f for f in spec.features}
    for need, tower in (("user_id", "user"), ("item_id", "item")):
        f = names.get(need)
        if not isinstance(f, SparseFeature) or f.multi_valued or f.tower != tower:
            problems.append(f"needs a single-valued sparse feature {need!r} with tower: {tower}")
    if spec.label is None:
        problems.append("needs a label feature (every kept interaction gets label 1.0)")
    if spec.timestamp is not None and (spec.timestamp != "timestamp" or not timestamp):
        problems.append(f"timestamp: got {spec.timestamp!r}; the input has " +
                        ("its time column stored as 'timestamp'" if timestamp else "no --timestamp column: drop the key"))
    for f in spec.features:
        if f.kind == "label" or f.name in ("user_id", "item_id"):
            continue
        target = history_target(spec, f) if isinstance(f, SparseFeature) else None
        if target is not None:
            if target != "item_id":
                problems.append(f"features[{f.name}].history_of: got {target!r}; histories hold item_id")
            continue
        col = sides.columns.get(f.name)
        if col is None:
            problems.append(f"features[{f.name}]: not a side column; side features: {sorted(sides.columns)}")
        elif isinstance(f, SparseFeature) and f.tower != col.entity:
            problems.append(f"features[{f.name}].tower: got {f.tower!r}; it comes from the {col.entity} features file")
        elif isinstance(f, SparseFeature) and f.multi_valued and col.sep is None:
            problems.append(f"features[{f.name}]: multi-valued, but its column has no list separator (give --list-sep)")
    if problems:
        raise ValueError(f"--spec {spec.name!r} does not fit the interactions: " + "; ".join(problems))
    return spec
