"""MovieLens ratings with user and movie side features (ml-1m, ml-100k) -> the ingest layout.

    recsys ingest movielens data/ml-1m --out data/movielens [--spec features/movielens.yaml]
    recsys ingest movielens data/ml-100k/u.data --out data/ml100k --split 0.9,0.05,0.05

PATH is the unpacked folder in its original layout, or one of its files (its folder is used):

* ml-1m: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip-code``), ``movies.dat`` (``MovieID::Title::Genres``,
  genres pipe-separated), all latin-1.
* ml-100k: ``u.data`` (user, item, rating, timestamp; tab-separated), ``u.user``
  (``id|age|gender|occupation|zip``), ``u.item`` (``id|title|release date|video date|IMDb URL|``
  then 19 genre flags, in :data:`ML100K_GENRES` order), latin-1.

Every rating is joined with its user and movie. Columns: the label (the rating, float), user_id
and item_id (the original ids), gender, occupation, zip and genres (strings -> stable raw ids by
:func:`string_id`; the vocab files keep the strings as tokens; ml-1m occupation is its code 0-20,
named by :data:`ML1M_OCCUPATIONS`), age (ml-1m: the age-bucket code 1, 18, 25, ...; ml-100k:
the age in years, used as the id as it is), year (from the title's trailing ``(1995)``; ``-1``
when absent or for an empty zip), genres (a list of genre ids; an empty list for none) and
the timestamp.

Split: by timestamp, global time quantiles (see :mod:`recsys.data.parquet_source`: rows sharing
a boundary timestamp all go to the later split). Bad lines (wrong field count, non-numeric
values, NUL bytes from binary / UTF-16 files) and ratings whose user or movie is missing from
the side files raise an error naming file, line and field, or with ``skip_bad_rows`` are
skipped and counted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from recsys.data.criteo import Fields, parse_int, read_line_blocks, read_text_bytes, split_fields
from recsys.data.parquet_source import (
    DEFAULT_FRACTIONS,
    MISSING_ID,
    BadRows,
    add_by_split,
    check_fractions,
    check_split_rows,
    show,
    split_codes,
    timestamp_boundaries,
)
from recsys.data.writer import DatasetWriter
from recsys.features.spec import DatasetSpec

ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
ML1M_AGES: dict[int, str] = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
COLUMNS: tuple[str, ...] = ("user_id", "gender", "age", "occupation", "zip", "item_id", "genres", "year")
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def string_id(text: str) -> int:
    """A stable non-negative int64 raw id for a string: blake2b (8 bytes), top bit cleared."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class MovieLensFiles:
    """Where one MovieLens release lies, and how its lines are split."""

    variant: str  # "ml-1m" or "ml-100k"
    ratings: Path
    users: Path
    movies: Path

    @property
    def side_sep(self) -> str:
        return "::" if self.variant == "ml-1m" else "|"


def movielens_files(path: str | Path) -> MovieLensFiles:
    """Find the ml-1m or ml-100k files in PATH (a folder, or one of its files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give the unpacked ml-1m or ml-100k folder")
    folder = path if path.is_dir() else path.parent
    for variant, names in (("ml-1m", ("ratings.dat", "users.dat", "movies.dat")), ("ml-100k", ("u.data", "u.user", "u.item"))):
        if (folder / names[0]).exists():
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{folder}: {variant} layout but {missing} not found; expected {list(names)}")
            return MovieLensFiles(variant, *(folder / n for n in names))
    raise ValueError(
        f"{folder}: not a MovieLens folder; expected ratings.dat, users.dat, movies.dat (ml-1m) "
        "or u.data, u.user, u.item (ml-100k)"
    )


def _text_lines(path: Path) -> list[str]:
    """A latin-1 side file's lines; NUL bytes (binary or UTF-16 files) are an error."""
    data = read_text_bytes(path)  # gzip by magic bytes, UTF-8 BOM skipped
    if not data.strip():
        raise ValueError(f"{path}: empty file")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path}, line {line}: NUL byte: binary or UTF-16 data; expected latin-1 text (the original MovieLens files)")
    lines = data.decode("latin-1").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [s.removesuffix("\r") for s in lines]


def _int(text: str, name: str) -> int:
    if not re.fullmatch(r"-?\d{1,18}", text):
        raise ValueError(f"field {name}: got {show(text)}; expected an integer")
    return int(text)


@dataclass
class _Side:
    """One side file, parsed: sorted ids, per-column values aligned with them, vocab tokens."""

    ids: np.ndarray
    columns: dict[str, Any]
    tokens: dict[str, dict[int, str]] = field(default_factory=dict)

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(self.ids, ids), max(self.ids.size - 1, 0))
        return pos, self.ids[pos] == ids


def _parse_side(path: Path, sep: str, num_fields: int, layout: str, parse: Callable[[list[str]], dict[str, Any]], bad: BadRows) -> list[dict[str, Any]]:
    rows, seen = [], set()
    for n, line in enumerate(_text_lines(path), start=1):
        parts = line.split(sep)
        try:
            if len(parts) != num_fields:
                raise ValueError(f"expected {num_fields} {sep!r}-separated fields ({layout}), got {len(parts)}")
            row = parse(parts)
            if row["id"] in seen:
                raise ValueError(f"field {layout.split(sep)[0]}: got {row['id']}, a duplicate id")
        except ValueError as exc:
            bad.found(path, np.array([n]), lambda _, msg=str(exc): msg)
            continue
        seen.add(row["id"])
        rows.append(row)
    return rows


def _users(files: MovieLensFiles, bad: BadRows) -> _Side:
    tokens: dict[str, dict[int, str]] = {"gender": {}, "occupation": {}, "zip": {}, "age": {}}

    def token(name: str, text: str) -> int:
        if not text:
            return MISSING_ID
        raw = string_id(text)
        tokens[name][raw] = text
        return raw

    def parse(p: list[str]) -> dict[str, Any]:
        if files.variant == "ml-1m":  # UserID::Gender::Age::Occupation::Zip-code
            uid, age, occupation = _int(p[0], "UserID"), _int(p[2], "Age"), _int(p[3], "Occupation")
            if 0 <= occupation < len(ML1M_OCCUPATIONS):
                tokens["occupation"][occupation] = ML1M_OCCUPATIONS[occupation]
            if age in ML1M_AGES:
                tokens["age"][age] = ML1M_AGES[age]
            return {"id": uid, "gender": token("gender", p[1]), "age": age, "occupation": occupation, "zip": token("zip", p[4])}
        # user id|age|gender|occupation|zip code
        return {"id": _int(p[0], "user id"), "age": _int(p[1], "age"), "gender": token("gender", p[2]),
                "occupation": token("occupation", p[3]), "zip": token("zip", p[4])}

    layout = "UserID::Gender::Age::Occupation::Zip-code" if files.variant == "ml-1m" else "user id|age|gender|occupation|zip code"
    rows = sorted(_parse_side(files.users, files.side_sep, 5, layout, parse, bad), key=lambda r: r["id"])
    cols = {k: np.array([r[k] for r in rows], np.int64) for k in ("gender", "age", "occupation", "zip")}
    return _Side(np.array([r["id"] for r in rows], np.int64), cols, tokens)


def _movies(files: MovieLensFiles, bad: BadRows) -> _Side:
    tokens: dict[str, dict[int, str]] = {"item_id": {}, "genres": {}}

    def parse(p: list[str]) -> dict[str, Any]:
        if files.variant == "ml-1m":  # MovieID::Title::Genres
            mid, names = _int(p[0], "MovieID"), [g for g in p[2].split("|") if g]
        else:  # movie id|title|release date|video release date|IMDb URL|19 genre flags
            mid, flags = _int(p[0], "movie id"), p[5:]
            wrong = [f for f in flags if f not in ("0", "1")]
            if wrong:
                raise ValueError(f"field genre flag: got {show(wrong[0])}; expected 0 or 1")
            names = [g for g, f in zip(ML100K_GENRES, flags) if f == "1"]
        genres = []
        for g in names:
            genres.append(string_id(g))
            tokens["genres"][genres[-1]] = g
        tokens["item_id"][mid] = p[1]
        m = _YEAR.search(p[1])
        return {"id": mid, "year": int(m.group(1)) if m else MISSING_ID, "genres": genres}

    if files.variant == "ml-1m":
        num_fields, layout = 3, "MovieID::Title::Genres"
    else:
        num_fields, layout = 24, "movie id|title|release date|video release date|IMDb URL|19 genre flags"
    rows = sorted(_parse_side(files.movies, files.side_sep, num_fields, layout, parse, bad), key=lambda r: r["id"])
    cols = {"year": np.array([r["year"] for r in rows], np.int64), "genres": pa.array([r["genres"] for r in rows], pa.list_(pa.int64()))}
    return _Side(np.array([r["id"] for r in rows], np.int64), cols, tokens)


_Check = tuple[int, np.ndarray, str, str]  # (field index, bad mask, field name, what is allowed)


def _parse_ratings(f: Fields, variant: str) -> tuple[dict[str, np.ndarray], list[_Check]]:
    """Rating line fields -> (columns user, item, rating, timestamp; checks)."""
    cols = [0, 1, 2, 3]
    names = ["UserID", "MovieID", "Rating", "Timestamp"] if variant == "ml-1m" else ["user id", "item id", "rating", "timestamp"]
    ints, bad = parse_int(f, [cols[0], cols[1], cols[3]])
    bad |= f.ends[:, [0, 1, 3]] == f.starts[:, [0, 1, 3]]  # empty is missing for parse_int; here bad
    checks: list[_Check] = [(cols[k], bad[:, i], names[k], "an integer") for i, k in enumerate((0, 1, 3))]
    rating, rating_bad = _parse_float(f, cols[2])
    checks.append((cols[2], rating_bad | ~((rating >= 0.5) & (rating <= 5)), names[2], "a number from 0.5 to 5"))
    out = {"user": np.nan_to_num(ints[:, 0], nan=-1).astype(np.int64), "item": np.nan_to_num(ints[:, 1], nan=-1).astype(np.int64),
           "rating": rating, "timestamp": np.nan_to_num(ints[:, 2], nan=0).astype(np.int64)}
    return out, checks


def _parse_float(f: Fields, j: int, width: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Field j as float: left-aligned, NUL-padded byte matrix viewed as numpy bytes strings."""
    starts, ends = f.starts[:, j], f.ends[:, j]
    bad = (ends - starts > width) | (ends == starts)
    idx = starts[:, None] + np.arange(width)
    inside = idx < ends[:, None]
    mat = np.take(f.data, np.minimum(idx, f.data.size - 1))
    mat[~inside] = 0
    strings = mat.view(f"S{width}").ravel()
    try:
        values = strings.astype(np.float64)
    except ValueError:  # slow path: find the unparsable ones
        values = np.empty(strings.size)
        for i, s in enumerate(strings):
            try:
                values[i] = float(s)
            except ValueError:
                values[i], bad[i] = np.nan, True
    return np.where(bad, np.nan, values), bad | ~np.isfinite(values)


def ingest_movielens(
    path: str | Path,
    out_dir: str | Path,
    spec: DatasetSpec,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    skip_bad_rows: bool = False,
    chunk_rows: int = 500_000,
) -> dict[str, Any]:
    """Ingest a MovieLens folder (ml-1m or ml-100k) into ``out_dir``, split by timestamp.

    Args:
        path: the unpacked folder, or one of its files.
        out_dir: output folder (see :class:`~recsys.data.writer.DatasetWriter`).
        spec: feature spec: a label (gets the rating), a timestamp, and features named from
            :data:`COLUMNS` (``features/movielens.yaml`` has them all).
        fractions: (train, validation, test) fractions of the ratings, by time.
        skip_bad_rows: skip and count bad lines and unmatched ratings instead of raising.
        chunk_rows: rating lines parsed per block.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: a bad line (file, line, field), a rating of an unknown user / movie, or a
            spec asking for columns MovieLens does not have.
    """
    fractions = check_fractions(fractions)
    names = [f.name for f in spec.features if f.kind != "label"]
    unknown = [n for n in names if n not in COLUMNS]
    problems = [f"features {unknown} are not MovieLens columns; allowed: {list(COLUMNS)}"] if unknown else []
    if spec.label is None:
        problems.append("no label feature (it receives the rating)")
    if spec.timestamp is None:
        problems.append("no 'timestamp' column (MovieLens is split by time)")
    if "genres" in names and not spec.feature("genres").multi_valued:
        problems.append("feature 'genres' holds lists of genres; give it max_length > 1 (e.g. 6)")
    if problems:
        raise ValueError(f"feature spec {spec.name!r} does not fit MovieLens: " + "; ".join(problems))

    files = movielens_files(path)
    bad = BadRows(skip_bad_rows)
    users, movies = _users(files, bad), _movies(files, bad)
    ratings_bad = bad.count

    def blocks(bad_rows: BadRows):
        sep, num_fields, layout = (b"::", 4, "(UserID::MovieID::Rating::Timestamp)") if files.variant == "ml-1m" else (b"\t", 4, "(user id, item id, rating, timestamp)")
        for first_line, block in read_line_blocks(files.ratings, chunk_rows):
            f, struct_bad, struct_reason = split_fields(block, first_line, sep, num_fields, layout)
            cols, checks = _parse_ratings(f, files.variant)
            upos, ufound = users.positions(cols["user"])
            mpos, mfound = movies.positions(cols["item"])
            checks.append((0, ~ufound, checks[0][2], f"a user id listed in {files.users.name}"))
            checks.append((1, ~mfound, checks[1][2], f"a movie id listed in {files.movies.name}"))
            row_bad = np.logical_or.reduce([m for _, m, _, _ in checks])

            def reason(line: int, f=f, checks=checks, struct_bad=struct_bad, struct_reason=struct_reason) -> str:
                if line in struct_bad:
                    return struct_reason(line)
                i = int(np.searchsorted(f.lines, line))
                for j, mask, name, allowed in checks:
                    if mask[i]:
                        return f"field {name}: got {show(f.text(i, j))}; expected {allowed}"
                return "bad line"

            bad_rows.found(files.ratings, np.union1d(struct_bad, f.lines[row_bad]), reason)
            keep = ~row_bad
            yield cols, upos, mpos, keep

    timestamps = [c["timestamp"][k] for c, _, _, k in blocks(BadRows(True) if skip_bad_rows else bad)]
    ts = np.concatenate(timestamps) if timestamps else np.empty(0, np.int64)
    if ts.size == 0:
        raise ValueError(f"{files.ratings}: no valid ratings")
    boundaries = timestamp_boundaries(ts, fractions)
    with DatasetWriter(out_dir, spec) as writer:
        for cols, upos, mpos, keep in blocks(bad):
            upos, mpos = upos[keep], mpos[keep]
            full = {
                "user_id": pa.array(cols["user"][keep]),
                **{k: pa.array(users.columns[k][upos]) for k in ("gender", "age", "occupation", "zip")},
                "item_id": pa.array(cols["item"][keep]),
                "genres": movies.columns["genres"].take(pa.array(mpos)),
                "year": pa.array(movies.columns["year"][mpos]),
            }
            table = pa.table({spec.label.name: pa.array(cols["rating"][keep]), **{n: full[n] for n in names},
                              spec.timestamp: pa.array(cols["timestamp"][keep])})
            add_by_split(writer, table, split_codes(cols["timestamp"][keep], boundaries))
        check_split_rows(writer, f"--split {','.join(f'{x:g}' for x in fractions)} by timestamp quantiles")
        tokens = {**users.tokens, **movies.tokens}
        return writer.finish(
            source={"kind": "movielens", "variant": files.variant, "paths": [str(files.ratings), str(files.users), str(files.movies)]},
            split={"method": "timestamp", "column": spec.timestamp, "fractions": list(fractions), "boundaries": boundaries,
                   "ties": "rows sharing a boundary timestamp go to the later split"},
            extra={**bad.manifest(), "skipped_side_rows": ratings_bad, "missing_id": MISSING_ID},
            tokens={k: v for k, v in tokens.items() if k in names and v},
        )
