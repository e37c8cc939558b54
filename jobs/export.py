"""Export a trained two-tower run as a self-contained serving bundle.

    recsys export runs/two_tower_synthetic_full --out bundles/tt
    recsys export runs/two_tower_synthetic_full --out bundles/tt_int8_hnsw --precision int8 --index hnsw
    recsys export RUN_DIR --out BUNDLE --index ivf --index-setting nlist=1024 --index-setting nprobe=64

The bundle (layout in :mod:`serving.bundle`) holds the user tower as a ``torch.export`` program,
item vectors of every catalogue item at the chosen precision, the index, the vocabularies and a
manifest with checksums of every file; it is written to a temporary sibling folder and renamed
at the end. Its path is the last line printed.
"""

from __future__ import annotations

import argparse
import time

from serving.bundle import INDEX_KINDS, PRECISIONS
from serving.retriever import parse_index_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the run directory `recsys train` printed (run_dir: ...)")
    parser.add_argument("--out", required=True, help="the bundle folder to create (must not exist)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="tables and item vectors (default fp32)")
    parser.add_argument("--index", choices=INDEX_KINDS, default="exact", help="retrieval index (default exact)")
    parser.add_argument("--index-setting", action="append", default=[], metavar="KEY=N",
                        help="index setting: ivf nlist / nprobe / train_size, hnsw m / ef_construction / ef_search, binary rerank")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the run's newest intact one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = parse_index_settings(args.index_setting)
    from serving.bundle import load_bundle
    from serving.export import export_bundle

    start = time.perf_counter()
    out = export_bundle(args.run_dir, args.out, precision=args.precision, index=args.index, index_settings=settings,
                        checkpoint=args.checkpoint)
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
