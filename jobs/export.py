"""Export a trained two-tower run as a self-contained serving bundle.

    recsys export runs/two_tower_synthetic_full --out bundles/tt
    recsys export runs/two_tower_synthetic_full --out bundles/tt_int8_hnsw --precision int8 --index hnsw
    recsys export RUN_DIR --out BUNDLE --index ivf --index-setting nlist=1024 --index-setting nprobe=64

The bundle (layout in :mod:`serving.bundle`) holds the user tower as a ``torch.export`` program,
item vectors of every catalogue item at the chosen precision, the index, the vocabularies and a
manifest with checksums of every file; it is written to a temporary sibling folder and renamed
at the end. Its path is the last line printed. Index settings that cannot be built as asked
(``nlist`` above the item count, ``nprobe`` above ``nlist``) are clamped, each with a line, and the
manifest records what was built.

Every flag is checked before the run is loaded. Exit codes: 0 written, 1 the run cannot be
exported (one line: no intact checkpoint, a CTR run, its data set gone), 2 a usage error (one line
naming the flag: RUN_DIR or --checkpoint missing, --out exists, a setting the index does not take).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs.serve import OneLineParser, check_build_settings, index_setting
from serving.bundle import INDEX_KINDS, PRECISIONS
from serving.retriever import BUILD_SETTINGS


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="recsys export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the run directory `recsys train` printed (run_dir: ...)")
    parser.add_argument("--out", required=True, help="the bundle folder to create (must not exist)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="tables and item vectors (default fp32)")
    parser.add_argument("--index", choices=INDEX_KINDS, default="exact", help="retrieval index (default exact)")
    parser.add_argument("--index-setting", type=index_setting(tuple(sorted({k for v in BUILD_SETTINGS.values() for k in v}))),
                        action="append", default=[], metavar="KEY=N",
                        help="index setting, N >= 1: ivf nlist / nprobe / train_size, hnsw m / ef_construction / ef_search, binary rerank")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the run's newest intact one)")
    parser.add_argument("--require-all-features", action="store_true",
                        help="requests must give every single-valued user feature (default: a missing one gets its OOV row, "
                             "reported in the answer's missing_features)")
    from jobs.cli import with_examples  # its example at the end of --help

    return with_examples(parser)


def check_flags(parser: OneLineParser, args: argparse.Namespace) -> None:
    """Every check that needs no loading: folders, the output path, the settings the index takes."""
    if not Path(args.run_dir).is_dir():
        parser.error(f"argument RUN_DIR: {args.run_dir}: no such folder; give the run_dir `recsys train` printed")
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        parser.error(f"argument --checkpoint: {args.checkpoint}: no such folder; give a checkpoint_* folder of the run")
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        what = "a folder" if out.is_dir() else "a file"
        parser.error(f"argument --out: {out} exists ({what}); give a new folder (bundles are never overwritten in place)")
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        parser.error(f"argument --out: {parent} is a file; the bundle folder cannot be created under it")
    check_build_settings(parser, args.index, args.index_setting)  # ranges too, before RUN_DIR is read


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
    from serving.bundle import load_bundle
    from serving.export import export_bundle

    start = time.perf_counter()
    out = export_bundle(args.run_dir, args.out, precision=args.precision, index=args.index, index_settings=dict(args.index_setting),
                        checkpoint=args.checkpoint, require_all_features=args.require_all_features,
                        log=lambda line: print(f"recsys export: {line}", flush=True))
    bundle = load_bundle(out)
    m = bundle.manifest
    total = sum(f["bytes"] for f in m["files"].values())
    print(
        f"bundle {m['bundle_id']}: {m['items']['count']:,} items x {m['items']['dim']} ({m['items']['dtype']}), "
        f"index {m['index']['kind']} {m['index']['settings']}, tables {m['precision']['tables']}; "
        f"{len(m['files'])} files, {total:,} B; step {m['source']['step']} of {m['source']['run_dir']}; "
        f"{time.perf_counter() - start:.1f} s"
    )
    print(f"bundle: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
