"""Convert raw logs into the recsys data layout (:mod:`recsys.data.layout`).

    recsys ingest criteo PATH --out DIR [--spec features/criteo.yaml] [--split 0.8,0.1,0.1] [--skip-bad-rows] [--chunk-rows N]
    recsys ingest movielens PATH --out DIR [--spec features/movielens.yaml] [--split 0.8,0.1,0.1 | leave_last_out] [--min-rating R] [--skip-bad-rows]
    recsys ingest parquet PATH --spec features/X.yaml --out DIR [--split 0.8,0.1,0.1] [--timestamp-split] [--skip-bad-rows]
    recsys ingest avazu PATH --out DIR [--spec features/avazu.yaml] [--split 0.8,0.1,0.1] [--skip-bad-rows]
    recsys ingest csv PATH --spec features/X.yaml --out DIR [--delimiter ,] [--label COL] [--split 0.8,0.1,0.1] [--skip-bad-rows]
    recsys ingest interactions LOG --user COL --item COL [--timestamp COL] [--split leave_last_out|time|random|column] --out DIR

``movielens`` takes ml-1m, ml-100k and the CSV releases (ml-latest, ml-25m, ml-32m), and writes
``items.parquet`` / ``users.parquet``; ``--split leave_last_out`` splits per user (last rating ->
test, the one before -> validation). Fractions must each be > 0; a bad ``--split`` or
``--min-rating`` fails before any data is read.

``--out`` is a new or empty folder; a data set there is replaced only when it is of the same kind and
``--overwrite`` is given (:mod:`recsys.folders`: never another kind of data set, a run, a sweep).
Each writes ``DIR/manifest.json`` (plus splits and vocabularies) and prints a short summary;
bad input raises ``ValueError`` naming file, line and field, which the ``recsys`` command turns
into a one-line reason and exit code 1. The sources are :mod:`recsys.data.criteo`,
:mod:`recsys.data.movielens`, :mod:`recsys.data.parquet_source`, :mod:`recsys.data.avazu` (the
Kaggle CSV; ``hour`` -> day-of-week and hour-of-day; split by row = time order) and
:mod:`recsys.data.csv_source` (any delimited file with a header whose columns the spec names).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from recsys.data.avazu import ingest_avazu
from recsys.data.criteo import ingest_criteo
from recsys.data.csv_source import ingest_csv, parse_delimiter
from recsys.data.layout import MANIFEST, SPLITS
from recsys.data.movielens import USER_SIDE, check_min_rating, ingest_movielens, movielens_files
from recsys.data.parquet_source import (
    DEFAULT_FRACTIONS,
    FRACTIONS_ALLOWED,
    check_fractions,
    fractions_problem,
    ingest_parquet,
)
from recsys.features.spec import DatasetSpec, builtin_spec, builtin_spec_path, load_spec, spec_from_dict
from recsys.folders import OVERWRITE_HELP, check_dataset_out


LEAVE_LAST_OUT = "leave_last_out"


def parse_split(text: str, source: str = "movielens") -> tuple[float, float, float] | str:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1); ``"leave_last_out"`` (movielens only) -> itself.

    Raises:
        ValueError: naming ``--split``, the value and what is allowed.
    """
    if text.strip() == LEAVE_LAST_OUT:
        if source != "movielens":
            raise ValueError(
                f"--split {text!r}: the per-user split needs users and items; it is for `recsys ingest movielens`. "
                f"For {source}, give fractions, e.g. 0.8,0.1,0.1"
            )
        return LEAVE_LAST_OUT
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        also = " (or leave_last_out, per user)" if source == "movielens" else ""
        raise ValueError(f"--split {text!r}: not comma-separated numbers; {FRACTIONS_ALLOWED}{also}") from None
    problem = fractions_problem(values)
    if problem:
        raise ValueError(f"--split {text!r}: {problem}; {FRACTIONS_ALLOWED}")
    return check_fractions(values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys ingest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True, metavar="{criteo,movielens,parquet,avazu,csv,interactions}")
    default_split = ",".join(str(f) for f in DEFAULT_FRACTIONS)
    helps = {
        "criteo": "Criteo TSV: a file (train.txt, day_N, .gz) or a folder of day_N files",
        "movielens": "MovieLens ml-1m / ml-100k / ml-latest (ml-25m, ml-32m) folder (or one of its files)",
        "parquet": "parquet file or folder whose columns match --spec (raw ids)",
        "avazu": "Avazu Kaggle CSV (train.csv / train.gz) with its header",
        "csv": "delimited text with a header whose columns --spec names (strings -> stable ids)",
    }
    for name, help_ in helps.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("path", metavar="PATH", help="input file or folder")
        p.add_argument("--out", required=True, metavar="DIR", help="output folder (empty, new, or an earlier data set)")
        if name == "csv":
            p.add_argument("--spec", required=True, metavar="YAML", help="feature spec naming the header's columns")
            p.add_argument("--delimiter", default=",", help="field separator: ',' (default), '\\t' or tab, ';', '|'")
            p.add_argument("--label", default=None, metavar="COL", help="the column holding the spec's label (default: the label's name)")
            p.add_argument("--rating-label", action="store_true",
                           help="the label is a rating or other number (default: 0 or 1, a click; other values are bad lines)")
        elif name == "parquet":
            p.add_argument("--spec", required=True, metavar="YAML", help="feature spec of the columns")
            p.add_argument("--timestamp-split", action="store_true",
                           help="split by time quantiles of the spec's timestamp column (default: row order)")
        elif name == "movielens":
            p.add_argument("--spec", default=None, metavar="YAML",
                           help="feature spec (default features/movielens.yaml; for ml-latest without its user side "
                                "features, which that release does not have)")
            p.add_argument("--min-rating", type=float, default=None, metavar="R",
                           help="implicit feedback: drop ratings below R (counted in the manifest), label the rest 1.0")
        else:
            p.add_argument("--spec", default=str(builtin_spec_path(name)), metavar="YAML",
                           help=f"feature spec (default features/{name}.yaml)")
        if name == "movielens":
            p.add_argument("--split", default=default_split, metavar="F,F,F|leave_last_out",
                           help=f"train,validation,test fractions by time, each > 0, summing to 1 (default {default_split}), "
                                "or leave_last_out: per user, last rating -> test, the one before -> validation")
        else:
            p.add_argument("--split", default=default_split, metavar="F,F,F",
                           help=f"train,validation,test fractions, each > 0, summing to 1 (default {default_split})")
        p.add_argument("--skip-bad-rows", action="store_true",
                       help="skip bad rows and count them in the manifest instead of stopping at the first")
        p.add_argument("--chunk-rows", type=int, default=200_000, metavar="N", help="rows parsed per chunk (default 200000)")
    add_interactions_parser(sub)
    for p in sub.choices.values():  # every sub-command writes --out: one rule (recsys.folders)
        p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    from jobs.cli import with_examples  # its example at the end of --help

    return with_examples(parser)


def add_interactions_parser(sub: Any) -> None:
    """``recsys ingest interactions``: any interaction log -> the two-tower layout (docs/interactions.md)."""
    help_ = ("interaction logs (CSV / TSV / parquet, given splits, RecBole atomic files, LightGCN lists) -> "
             "the two-tower data-set layout (docs/interactions.md)")
    p = sub.add_parser("interactions", help=help_, description=help_)
    p.add_argument("path", metavar="LOG", nargs="?", default=None, help="one log to split (or give --train/--test)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (empty, new, or an earlier data set)")
    p.add_argument("--format", default="log", choices=["log", "recbole", "lightgcn"],
                   help="log: delimited text (gzip by its bytes) or parquet; recbole: NAME.inter (+ NAME.user / NAME.item); "
                        "lightgcn: 'user item item ...' lists")
    for role, default in (("user", "user_id"), ("item", "item_id")):
        p.add_argument(f"--{role}", default=default, metavar="COL", help=f"{role} id column: a header name or a 0-based position (default {default})")
    p.add_argument("--timestamp", default=None, metavar="COL", help="time column (integers, numbers or ISO 8601); without it, input order is time order")
    p.add_argument("--rating", default=None, metavar="COL", help="rating column, read for --min-rating")
    p.add_argument("--min-rating", type=float, default=None, metavar="X", help="keep rows with rating >= X (implicit positives)")
    p.add_argument("--split", default=None, choices=["leave_last_out", "time", "random", "column"],
                   help="how one LOG is split (default random: per user, --ratios, --seed); not with given splits")
    p.add_argument("--split-column", default=None, metavar="COL", help="with --split column: the column holding train / validation / test")
    p.add_argument("--ratios", default="0.8,0.1,0.1", metavar="F,F,F", help="train,validation,test fractions for time / random (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random split (default 0)")
    for split in ("train", "validation", "test"):
        p.add_argument(f"--{split}", default=None, metavar="F", help=f"given {split} file, kept as given")
    for entity in ("user", "item"):
        p.add_argument(f"--{entity}-features", default=None, metavar="FILE", help=f"{entity} side features: CSV / TSV / parquet")
        p.add_argument(f"--{entity}-key", default=None, metavar="COL", help=f"key column of --{entity}-features (default: --{entity})")
    p.add_argument("--list-sep", default=None, metavar="SEP", help="separator of multi-valued side values, e.g. '|'")
    p.add_argument("--spec", default=None, metavar="YAML", help="feature spec overriding the inferred one")
    p.add_argument("--delimiter", default=None, help="text delimiter (default: detected from the first line)")
    p.add_argument("--header", default=None, action=argparse.BooleanOptionalAction,
                   help="text files have a header line (default: yes, unless every column is a 0-based position)")
    p.add_argument("--history-length", type=int, default=50, metavar="N", help="history_item_id length (0: no history feature)")
    p.add_argument("--name", default=None, help="data set name (default: interactions)")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip bad rows and count them in the manifest")
    p.add_argument("--chunk-rows", type=int, default=200_000, metavar="N", help="rows parsed per chunk (default 200000)")


def run_interactions(args: argparse.Namespace) -> int:
    """``recsys ingest interactions``: every flag checked before any data is read."""
    from pathlib import Path

    from recsys.data.interaction_formats import Columns, column_ref
    from recsys.data.interactions_ingest import IngestSettings, check_settings, ingest_interactions, parse_ratios

    path = lambda text: Path(text) if text is not None else None  # noqa: E731
    if args.split is not None and args.path is None:
        raise ValueError(f"--split {args.split}: given --train/--validation/--test files are kept as given; drop --split")
    settings = IngestSettings(
        format=args.format, log=path(args.path), train=path(args.train), validation=path(args.validation), test=path(args.test),
        columns=Columns(column_ref(args.user), column_ref(args.item), column_ref(args.timestamp), column_ref(args.rating),
                        column_ref(args.split_column)),
        delimiter=parse_delimiter(args.delimiter) if args.delimiter is not None else None, header=args.header,
        min_rating=args.min_rating, split=args.split or "random", ratios=parse_ratios(args.ratios), seed=args.seed,
        history_length=args.history_length, skip_bad_rows=args.skip_bad_rows, chunk_rows=args.chunk_rows,
    )
    check_settings(settings)
    spec = load_spec(args.spec) if args.spec else None
    start = time.perf_counter()
    manifest = ingest_interactions(
        args.out, settings, user_features=path(args.user_features), user_key=column_ref(args.user_key),
        item_features=path(args.item_features), item_key=column_ref(args.item_key), list_sep=args.list_sep,
        spec=spec, name=args.name, log=print,
    )
    print(summary(manifest, args.out, time.perf_counter() - start))
    dup, cold = manifest["duplicates"], manifest["no_training_rows"]
    print(f"  duplicates: {dup.get('dropped', 0)} dropped ({'kept as given' if 'dropped' not in dup else 'first kept'}); "
          f"no training row: {cold['users']['count']} users, {cold['items']['count']} items")
    return 0


def catalogue_line(name: str, info: dict[str, Any]) -> str:
    """``items: items.parquet, 3901 rows (item_id index 0..3900; 17 never in train)``."""
    note = (f"{info['not_in_train']:,} never in train" if info["not_in_train"] or not info["folded_into_oov"]
            else f"{info['folded_into_oov']:,} listed but not in train: OOV")
    return f"  {name}: {info['path']}, {info['rows']:,} rows ({info['key']} index 0..{info['rows'] - 1}; {note})"


def summary(manifest: dict[str, Any], out: str, seconds: float) -> str:
    """A few lines: rows per split, skipped rows, vocab sizes, time."""
    rows = manifest["rows"]
    vocab = ", ".join(f"{name} {info['size']}" for name, info in manifest["vocab"].items())
    return "\n".join([
        f"ingested {manifest['dataset']} -> {out}/{MANIFEST} in {seconds:.1f} s "
        f"({rows['total'] / max(seconds, 1e-9):,.0f} rows/s)",
        "  rows: " + ", ".join(f"{s} {rows[s]}" for s in SPLITS) + f" (split by {manifest['split']['method']})",
        f"  skipped bad rows: {manifest.get('skipped_rows', 0)}",
        f"  vocab sizes (OOV included): {vocab}",
        *[catalogue_line(name, info) for name, info in manifest.get("catalogue", {}).items()],
        *([f"  --min-rating {manifest['min_rating']['threshold']:g}: dropped {manifest['min_rating']['dropped']} ratings, "
           f"kept {manifest['min_rating']['kept']} as positives"] if manifest.get("min_rating") else []),
    ])


def movielens_default_spec(path: str) -> DatasetSpec:
    """features/movielens.yaml; for ml-latest (no users file) without the user side features."""
    spec = builtin_spec("movielens")
    if movielens_files(path).users is not None:
        return spec
    raw = spec.to_dict()
    raw["features"] = [f for f in raw["features"] if f["name"] not in USER_SIDE]
    return spec_from_dict(raw, "features/movielens.yaml without user side features (ml-latest)")


def main(argv: list[str] | None = None) -> int:
    """Run ``recsys ingest``; returns 0, or raises ValueError / FileNotFoundError on bad input."""
    args = build_parser().parse_args(argv)
    check_dataset_out(args.out, writes=args.source, overwrite=args.overwrite)  # before any data is read
    if args.source == "interactions":
        return run_interactions(args)
    split = parse_split(args.split, args.source)
    if args.chunk_rows < 1:
        raise ValueError(f"--chunk-rows {args.chunk_rows}: expected a positive number of rows")
    if args.source == "movielens":
        check_min_rating(args.min_rating)
    start = time.perf_counter()
    if args.source == "movielens":
        spec = load_spec(args.spec) if args.spec else movielens_default_spec(args.path)
        by = dict(split=LEAVE_LAST_OUT) if split == LEAVE_LAST_OUT else dict(fractions=split)
        manifest = ingest_movielens(args.path, args.out, spec, **by, min_rating=args.min_rating,
                                    skip_bad_rows=args.skip_bad_rows, chunk_rows=args.chunk_rows)
        print(summary(manifest, args.out, time.perf_counter() - start))
        return 0
    if args.source == "csv":
        parse_delimiter(args.delimiter)  # before any data is read
    spec = load_spec(args.spec)
    common = dict(fractions=split, skip_bad_rows=args.skip_bad_rows, chunk_rows=args.chunk_rows)
    if args.source == "criteo":
        manifest = ingest_criteo(args.path, args.out, spec, **common)
    elif args.source == "avazu":
        manifest = ingest_avazu(args.path, args.out, spec, **common)
    elif args.source == "csv":
        manifest = ingest_csv(args.path, args.out, spec, delimiter=args.delimiter, label=args.label,
                              label_is_rating=args.rating_label, **common)
    else:
        manifest = ingest_parquet(args.path, args.out, spec, timestamp_split=args.timestamp_split, **common)
    print(summary(manifest, args.out, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
