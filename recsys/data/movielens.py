"""MovieLens ratings with user and movie side features (ml-1m, ml-100k, ml-latest) -> the ingest layout.

    recsys ingest movielens data/ml-1m --out data/movielens [--spec features/movielens.yaml]
    recsys ingest movielens data/ml-1m --out data/ml1m_llo --split leave_last_out --min-rating 4
    recsys ingest movielens data/ml-100k/u.data --out data/ml100k --split 0.9,0.05,0.05
    recsys ingest movielens data/ml-25m --out data/ml25m --split leave_last_out

PATH is the unpacked folder in its original layout, or one of its files (its folder is used):

* ml-1m: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip-code``), ``movies.dat`` (``MovieID::Title::Genres``,
  genres pipe-separated), all latin-1.
* ml-100k: ``u.data`` (user, item, rating, timestamp; tab-separated), ``u.user``
  (``id|age|gender|occupation|zip``), ``u.item`` (``id|title|release date|video date|IMDb URL|``
  then 19 genre flags, in :data:`ML100K_GENRES` order), latin-1.
* ml-latest (``ml-latest-small``, ``ml-25m``, ``ml-32m``, ...): ``ratings.csv`` (header
  ``userId,movieId,rating,timestamp``, half-star ratings) and ``movies.csv`` (header
  ``movieId,title,genres``; titles may be quoted and hold commas; genres pipe-separated,
  ``(no genres listed)`` = none), UTF-8. There is no users file: a spec with user side features
  (gender, age, occupation, zip) is refused; ``recsys ingest movielens`` drops them from its
  default spec for this layout.

Every file may be gzip-compressed (recognised by its bytes) and may start with a UTF-8 BOM.

Every rating is joined with its user and movie. Columns: the label (the rating, float; 1.0 with
``min_rating``), user_id and item_id (the original ids), gender, occupation, zip and genres
(strings -> stable raw ids by :func:`string_id`; the vocab files keep the strings as tokens;
ml-1m occupation is its code 0-20, named by :data:`ML1M_OCCUPATIONS`), age (ml-1m: the
age-bucket code 1, 18, 25, ...; ml-100k: the age in years, used as the id as it is), year (from
the title's trailing ``(1995)``; ``-1`` when absent or for an empty zip), genres (a list of genre
ids; an empty list for none), history features (:mod:`recsys.data.interactions`, e.g.
``history_item_id``: the user's earlier movies) and the timestamp.

``min_rating`` R turns explicit ratings into implicit positives: ratings below R are dropped
(counted in the manifest's ``min_rating``) before splitting and before histories are built, and
every kept row gets label 1.0.

Split: by timestamp, global time quantiles (see :mod:`recsys.data.parquet_source`: rows sharing a
boundary timestamp all go to the later split), or ``leave_last_out`` per user (see
:mod:`recsys.data.interactions`: by timestamp, ties by line order of the ratings file; last ->
test, the one before -> validation; users with fewer than 3 ratings train only).

Catalogues: ``items.parquet`` holds every movie of the movies file (one row per item_id index;
movies nobody rated in training get indices after the rated ones) with its ``tower: item``
features taken from the movies file; ``users.parquet`` (ml-1m, ml-100k) one row per user_id
index with its ``tower: user`` side features from the users file.

Bad lines (wrong field count, non-numeric values, NUL bytes from binary / UTF-16 files) and
ratings whose user or movie is missing from the side files raise an error naming file, line and
field, or with ``skip_bad_rows`` are skipped and counted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from recsys.data.criteo import Fields, open_binary, parse_int, read_line_blocks, read_text_bytes, split_fields
from recsys.data.interactions import HISTORY_RULES, ORDER_RULE, UserHistory, history_features, leave_last_out_codes
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
USER_COLUMNS: tuple[str, ...] = ("user_id", "gender", "age", "occupation", "zip")
ITEM_COLUMNS: tuple[str, ...] = ("item_id", "genres", "year")
COLUMNS: tuple[str, ...] = USER_COLUMNS + ITEM_COLUMNS
USER_SIDE: tuple[str, ...] = USER_COLUMNS[1:]  # from the users file (not in ml-latest)
SPLIT_METHODS: tuple[str, ...] = ("time", "leave_last_out")
ML_LATEST_RATINGS_HEADER = "userId,movieId,rating,timestamp"
ML_LATEST_MOVIES_HEADER = ["movieId", "title", "genres"]
ML_LATEST_NO_GENRES = "(no genres listed)"
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def string_id(text: str) -> int:
    """A stable non-negative int64 raw id for a string: blake2b (8 bytes), top bit cleared."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class MovieLensFiles:
    """Where one MovieLens release lies, and how its lines are split."""

    variant: str  # "ml-1m", "ml-100k" or "ml-latest"
    ratings: Path
    users: Path | None  # None: ml-latest has no users file
    movies: Path

    @property
    def side_sep(self) -> str:
        return "::" if self.variant == "ml-1m" else "|"

    @property
    def ratings_format(self) -> tuple[bytes, str]:
        """(field separator, layout for messages) of the ratings file."""
        return {
            "ml-1m": (b"::", "(UserID::MovieID::Rating::Timestamp)"),
            "ml-100k": (b"\t", "(user id, item id, rating, timestamp)"),
            "ml-latest": (b",", f"({ML_LATEST_RATINGS_HEADER})"),
        }[self.variant]


def movielens_files(path: str | Path) -> MovieLensFiles:
    """Find the ml-1m or ml-100k files in PATH (a folder, or one of its files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; give the unpacked ml-1m or ml-100k folder")
    folder = path if path.is_dir() else path.parent
    layouts = (
        ("ml-1m", ("ratings.dat", "users.dat", "movies.dat")),
        ("ml-100k", ("u.data", "u.user", "u.item")),
        ("ml-latest", ("ratings.csv", None, "movies.csv")),
    )
    for variant, names in layouts:
        if (folder / names[0]).exists():
            missing = [n for n in names if n is not None and not (folder / n).is_file()]
            if missing:
                expected = [n for n in names if n is not None]
                raise FileNotFoundError(f"{folder}: {variant} layout but {missing} not found; expected {expected}")
            ratings, users, movies = (folder / n if n is not None else None for n in names)
            return MovieLensFiles(variant, ratings, users, movies)  # type: ignore[arg-type]
    raise ValueError(
        f"{folder}: not a MovieLens folder; expected ratings.dat, users.dat, movies.dat (ml-1m), "
        "u.data, u.user, u.item (ml-100k) or ratings.csv, movies.csv (ml-latest, ml-25m, ml-32m)"
    )


def _text_lines(path: Path, encoding: str = "latin-1") -> list[str]:
    """A side file's lines; NUL bytes (binary or UTF-16 files) or bad UTF-8 are an error."""
    data = read_text_bytes(path)  # gzip by magic bytes, UTF-8 BOM skipped
    if not data.strip():
        raise ValueError(f"{path}: empty file")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path}, line {line}: NUL byte: binary or UTF-16 data; expected {encoding} text (the original MovieLens files)")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}, line {line}: not {encoding} text ({exc.reason}); expected the original MovieLens file") from None
    lines = text.split("\n")
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

    if files.variant == "ml-latest":
        rows = sorted(_parse_movies_csv(files.movies, tokens, bad), key=lambda r: r["id"])
    else:
        if files.variant == "ml-1m":
            num_fields, layout = 3, "MovieID::Title::Genres"
        else:
            num_fields, layout = 24, "movie id|title|release date|video release date|IMDb URL|19 genre flags"
        rows = sorted(_parse_side(files.movies, files.side_sep, num_fields, layout, parse, bad), key=lambda r: r["id"])
    cols = {"year": np.array([r["year"] for r in rows], np.int64), "genres": pa.array([r["genres"] for r in rows], pa.list_(pa.int64()))}
    return _Side(np.array([r["id"] for r in rows], np.int64), cols, tokens)


def _parse_movies_csv(path: Path, tokens: dict[str, dict[int, str]], bad: BadRows) -> list[dict[str, Any]]:
    """ml-latest ``movies.csv``: ``movieId,title,genres`` with a header, CSV quoting, UTF-8."""
    lines = _text_lines(path, "utf-8")
    if next(csv.reader([lines[0]])) != ML_LATEST_MOVIES_HEADER:
        raise ValueError(f"{path}, line 1: got header {show(lines[0])}; expected {','.join(ML_LATEST_MOVIES_HEADER)}")
    rows, seen = [], set()
    # csv.reader over the whole text (quoted titles may not span lines in MovieLens, but the
    # reader's own line count keeps the numbers right if they do)
    reader = csv.reader(io.StringIO("\n".join(lines[1:]) + "\n"))
    for parts in reader:
        n = reader.line_num + 1
        try:
            if len(parts) != 3:
                raise ValueError(f"expected 3 comma-separated fields (movieId,title,genres; quote titles holding commas), got {len(parts)}")
            mid = _int(parts[0], "movieId")
            if mid in seen:
                raise ValueError(f"field movieId: got {mid}, a duplicate id")
        except ValueError as exc:
            bad.found(path, np.array([n]), lambda _, msg=str(exc): msg)
            continue
        seen.add(mid)
        names = [g for g in parts[2].split("|") if g and g != ML_LATEST_NO_GENRES]
        genres = []
        for g in names:
            genres.append(string_id(g))
            tokens["genres"][genres[-1]] = g
        tokens["item_id"][mid] = parts[1]
        m = _YEAR.search(parts[1])
        rows.append({"id": mid, "year": int(m.group(1)) if m else MISSING_ID, "genres": genres})
    return rows


_Check = tuple[int, np.ndarray, str, str]  # (field index, bad mask, field name, what is allowed)


def _parse_ratings(f: Fields, variant: str) -> tuple[dict[str, np.ndarray], list[_Check]]:
    """Rating line fields -> (columns user, item, rating, timestamp; checks)."""
    cols = [0, 1, 2, 3]
    names = {"ml-1m": ["UserID", "MovieID", "Rating", "Timestamp"], "ml-latest": ML_LATEST_RATINGS_HEADER.split(",")}.get(
        variant, ["user id", "item id", "rating", "timestamp"])
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


def _check_header(path: Path, header: str) -> None:
    with open_binary(path) as fh:
        first = fh.readline().rstrip(b"\r\n").decode("latin-1")
    if first != header:
        raise ValueError(f"{path}, line 1: got header {show(first)}; expected {header} (the ml-latest ratings.csv header)")


def _without_lines(f: Fields, lines: np.ndarray) -> Fields:
    keep = ~np.isin(f.lines, lines)
    return Fields(f.data, f.starts[keep], f.ends[keep], f.lines[keep])


@dataclass
class _Ratings:
    """The good ratings, in line order: columns of equal length ``n``."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    user_pos: np.ndarray | None  # row of the user in the users side table (None: no users file)
    movie_pos: np.ndarray

    def take(self, mask: np.ndarray) -> "_Ratings":
        return _Ratings(self.user[mask], self.item[mask], self.rating[mask], self.timestamp[mask],
                        None if self.user_pos is None else self.user_pos[mask], self.movie_pos[mask])


def _read_ratings(files: MovieLensFiles, users: _Side | None, movies: _Side, bad: BadRows, chunk_rows: int) -> _Ratings:
    """Parse the ratings file in blocks (vectorized), join with the side tables, drop bad lines."""
    sep, layout = files.ratings_format
    if files.variant == "ml-latest":
        _check_header(files.ratings, ML_LATEST_RATINGS_HEADER)
    parts: list[tuple[np.ndarray, ...]] = []
    for first_line, block in read_line_blocks(files.ratings, chunk_rows):
        f, struct_bad, struct_reason = split_fields(block, first_line, sep, 4, layout)
        if files.variant == "ml-latest" and first_line == 1:
            f = _without_lines(f, np.array([1]))  # the header, checked above
        cols, checks = _parse_ratings(f, files.variant)
        if users is not None:
            upos, ufound = users.positions(cols["user"])
            checks.append((0, ~ufound, checks[0][2], f"a user id listed in {files.users.name}"))  # type: ignore[union-attr]
        else:
            upos = np.zeros(cols["user"].size, np.int64)
        mpos, mfound = movies.positions(cols["item"])
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

        bad.found(files.ratings, np.union1d(struct_bad, f.lines[row_bad]), reason)
        keep = ~row_bad
        parts.append((cols["user"][keep], cols["item"][keep], cols["rating"][keep], cols["timestamp"][keep],
                      upos[keep], mpos[keep]))
    if not parts or sum(p[0].size for p in parts) == 0:
        raise ValueError(f"{files.ratings}: no valid ratings")
    cat = [np.concatenate([p[k] for p in parts]) for k in range(6)]
    return _Ratings(cat[0], cat[1], cat[2].astype(np.float32), cat[3], cat[4] if users is not None else None, cat[5])


def _spec_problems(spec: DatasetSpec, history: dict[str, str]) -> list[str]:
    names = [f.name for f in spec.features if f.kind != "label"]
    unknown = [n for n in names if n not in COLUMNS and n not in history]
    problems = [f"features {unknown} are not MovieLens columns; allowed: {list(COLUMNS)} and history features "
                "(history_item_id)"] if unknown else []
    if spec.label is None:
        problems.append("no label feature (it receives the rating)")
    if spec.timestamp is None:
        problems.append("no 'timestamp' column (MovieLens is split by time)")
    if "genres" in names and not spec.feature("genres").multi_valued:
        problems.append("feature 'genres' holds lists of genres; give it max_length > 1 (e.g. 6)")
    for h, target in history.items():
        if target != "item_id":
            problems.append(f"history feature {h!r} is a history of {target!r}; MovieLens histories hold item_id")
    if "item_id" in names and spec.feature("item_id").min_count > 1:
        problems.append(f"features[item_id].min_count: got {spec.feature('item_id').min_count}; items.parquet gives every "
                        "item_id its own index (also those never seen in training), so min_count must be 1")
    for f in spec.sparse:
        if f.tower == "item" and f.name not in ITEM_COLUMNS:
            problems.append(f"features[{f.name}].tower: got 'item', but {f.name} is not a movie attribute {list(ITEM_COLUMNS)}")
        if f.tower == "user" and f.name not in USER_COLUMNS and f.name not in history:
            problems.append(f"features[{f.name}].tower: got 'user', but {f.name} is not a user attribute {list(USER_COLUMNS)} or a history")
    return problems


def check_min_rating(min_rating: float | None) -> float | None:
    """Validate ``--min-rating``: None, or a number from 0.5 to 5 (MovieLens star ratings)."""
    if min_rating is None:
        return None
    if isinstance(min_rating, bool) or not isinstance(min_rating, (int, float)) or not 0.5 <= float(min_rating) <= 5:
        raise ValueError(
            f"--min-rating {min_rating!r}: expected a number from 0.5 to 5 (ratings below it are dropped, "
            "the rest become positives with label 1.0), e.g. --min-rating 4"
        )
    return float(min_rating)


def ingest_movielens(
    path: str | Path,
    out_dir: str | Path,
    spec: DatasetSpec,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    split: str = "time",
    min_rating: float | None = None,
    skip_bad_rows: bool = False,
    chunk_rows: int = 500_000,
) -> dict[str, Any]:
    """Ingest a MovieLens folder (ml-1m, ml-100k or ml-latest) into ``out_dir``.

    Args:
        path: the unpacked folder, or one of its files.
        out_dir: output folder (see :class:`~recsys.data.writer.DatasetWriter`).
        spec: feature spec: a label (gets the rating), a timestamp, and features named from
            :data:`COLUMNS` or history features (``features/movielens.yaml`` has them all).
        fractions: (train, validation, test) fractions of the ratings by time (``split="time"``).
        split: ``"time"`` (global time quantiles, default) or ``"leave_last_out"`` (per user).
        min_rating: drop ratings below it, label the rest 1.0 (implicit positives). Default None:
            keep every rating, label = the rating.
        skip_bad_rows: skip and count bad lines and unmatched ratings instead of raising.
        chunk_rows: rating lines parsed per block, and rows per chunk handed to the writer.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: a bad split / min_rating (before anything is read), a bad line (file, line,
            field), a rating of an unknown user / movie, a spec asking for columns the release
            does not have, or a split left empty.
    """
    if split not in SPLIT_METHODS:
        raise ValueError(f"--split {split!r}: expected train,validation,test fractions (split by time) or 'leave_last_out'")
    if split == "time":
        fractions = check_fractions(fractions)
    min_rating = check_min_rating(min_rating)
    history = history_features(spec)
    problems = _spec_problems(spec, history)
    if problems:
        raise ValueError(f"feature spec {spec.name!r} does not fit MovieLens: " + "; ".join(problems))
    names = [f.name for f in spec.features if f.kind != "label"]
    files = movielens_files(path)
    if files.users is None:
        side = [n for n in names if n in USER_SIDE]
        if side:
            raise ValueError(
                f"feature spec {spec.name!r} asks for user side features {side}, but {files.variant} "
                f"({files.ratings.name}, {files.movies.name}) has no users file; remove them from the spec "
                "(`recsys ingest movielens` without --spec drops them from features/movielens.yaml)"
            )

    bad = BadRows(skip_bad_rows)
    users = _users(files, bad) if files.users is not None else None
    movies = _movies(files, bad)
    side_bad = bad.count
    r = _read_ratings(files, users, movies, bad, chunk_rows)
    rated = r.user.size
    rating_filter = None
    if min_rating is not None:
        r = r.take(r.rating >= min_rating)
        rating_filter = {"threshold": min_rating, "dropped": rated - r.user.size, "kept": r.user.size, "label": 1.0,
                         "rule": "ratings below the threshold are dropped before splitting; kept rows are positives"}
        if r.user.size == 0:
            raise ValueError(f"--min-rating {min_rating:g}: drops all {rated} ratings of {files.ratings}; give a lower threshold")

    if split == "leave_last_out":
        codes = leave_last_out_codes(r.user, r.timestamp)
        users_all = np.unique(r.user).size
        users_held = np.unique(r.user[codes == 2]).size
        split_info: dict[str, Any] = {
            "method": "leave_last_out", "order": f"{ORDER_RULE} (line order of {files.ratings.name})",
            "rule": "per user: last interaction -> test, the one before -> validation, the rest -> train",
            "min_interactions": 3, "users": users_all, "users_train_only": users_all - users_held,
        }
        how = "--split leave_last_out (users with fewer than 3 ratings are train only)"
    else:
        boundaries = timestamp_boundaries(r.timestamp, fractions)
        codes = split_codes(r.timestamp, boundaries)
        split_info = {"method": "timestamp", "column": spec.timestamp, "fractions": list(fractions), "boundaries": boundaries,
                      "ties": "rows sharing a boundary timestamp go to the later split"}
        how = f"--split {','.join(f'{x:g}' for x in fractions)} by timestamp quantiles"
    histories = UserHistory.build(r.user, r.item, r.timestamp, codes if split == "leave_last_out" else None) if history else None

    with DatasetWriter(out_dir, spec) as writer:
        for lo in range(0, r.user.size, chunk_rows):
            rows = slice(lo, min(lo + chunk_rows, r.user.size))
            mpos = r.movie_pos[rows]
            full: dict[str, pa.Array] = {
                "user_id": pa.array(r.user[rows]),
                "item_id": pa.array(r.item[rows]),
                "genres": movies.columns["genres"].take(pa.array(mpos)),
                "year": pa.array(movies.columns["year"][mpos]),
            }
            if users is not None:
                upos = r.user_pos[rows]  # type: ignore[index]
                full.update({k: pa.array(users.columns[k][upos]) for k in USER_SIDE})
            for h in history:
                full[h] = histories.lists(rows, spec.feature(h).max_length)  # type: ignore[union-attr]
            label = np.ones(rows.stop - rows.start, np.float32) if min_rating is not None else r.rating[rows]
            table = pa.table({spec.label.name: pa.array(label), **{n: full[n] for n in names},  # type: ignore[union-attr]
                              spec.timestamp: pa.array(r.timestamp[rows])})
            add_by_split(writer, table, codes[rows])
        check_split_rows(writer, how)
        if "item_id" in names:
            item_cols = ["item_id"] + [f.name for f in spec.sparse if f.tower == "item" and f.name in ITEM_COLUMNS[1:]]
            catalogue = {"item_id": pa.array(movies.ids), "genres": movies.columns["genres"], "year": pa.array(movies.columns["year"])}
            writer.add_catalogue("items", "item_id", pa.table({c: catalogue[c] for c in item_cols}), keep_unseen=True)
        if users is not None and "user_id" in names:
            user_cols = ["user_id"] + [f.name for f in spec.sparse if f.tower == "user" and f.name in USER_SIDE]
            catalogue = {"user_id": pa.array(users.ids), **{k: pa.array(users.columns[k]) for k in USER_SIDE}}
            writer.add_catalogue("users", "user_id", pa.table({c: catalogue[c] for c in user_cols}))
        tokens = {**(users.tokens if users is not None else {}), **movies.tokens}
        return writer.finish(
            source={"kind": "movielens", "variant": files.variant,
                    "paths": [str(p) for p in (files.ratings, files.users, files.movies) if p is not None]},
            split=split_info,
            extra={**bad.manifest(), "skipped_side_rows": side_bad, "missing_id": MISSING_ID, "min_rating": rating_filter,
                   **({"history": {h: {"of": t, "max_length": spec.feature(h).max_length,
                                       "rule": HISTORY_RULES[split]} for h, t in history.items()}} if history else {})},
            tokens={k: v for k, v in tokens.items() if k in names and v},
        )

