"""Serving benchmark: the real HTTP service under loopback load, next to a bare index search.

    recsys bench serve bundles/tt --concurrency 1,8,32 --seconds 10
    recsys bench serve --synthetic-items 1000000 --index ivf --concurrency 1,2,4,8,32,64 --seconds 10
    recsys bench serve --synthetic-items 1000000 --index hnsw --bundle-out /tmp/b1m_hnsw   # keep it for reruns
    recsys bench serve --synthetic-items 100000 --catalogue uniform --precision int8 --serve-arg=--max-wait-ms=0.5

``--synthetic-items N`` builds a bundle of N SYNTHETIC random unit item vectors (dim 32) and a
hashed user table behind a real exported user tower (:func:`serving.testing.synthetic_bundle`),
so the 1M-item case runs without training a 1M-item model. ``--catalogue`` picks the vectors:
``mixture`` (default: 2,048 overlapping clusters with power-law sizes, users between two
clusters, :func:`serving.testing.mixture_vectors`), ``clustered`` (256 tight clusters, users near
items: every ANN index finds all of the top 100) or ``uniform`` (on the sphere: no structure, the
hardest case). The service runs in a subprocess (``recsys serve``, ``--threads`` per library);
the load generator sends bounded keep-alive requests (``--seconds`` and ``--max-requests`` per
level). Prints one row per level: p50 / p95 / p99 latency, QPS, errors and the load average,
then the same queries through the bare index search, the index's recall@k against exact search
over the same vectors, and the service's resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated positive integers, e.g. 1,8,32; got {text!r}") from None
    if not levels or min(levels) < 1 or max(levels) > 256:
        raise argparse.ArgumentTypeError(f"levels must lie in [1, 256]; got {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", help="a bundle folder (or use --synthetic-items)")
    parser.add_argument("--synthetic-items", type=int, default=None, metavar="N", help="build a synthetic bundle of N items instead")
    parser.add_argument("--index", default="ivf", choices=["exact", "ivf", "hnsw", "binary"], help="synthetic bundle's index (default ivf)")
    parser.add_argument("--index-setting", action="append", default=[], metavar="KEY=N", help="synthetic bundle's index settings")
    parser.add_argument("--catalogue", default="mixture", choices=["mixture", "clustered", "uniform"],
                        help="synthetic vectors (default mixture: overlapping power-law clusters)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="synthetic item vectors' precision (default fp32)")
    parser.add_argument("--bundle-out", default=None, metavar="DIR", help="keep the synthetic bundle here (default: a temporary folder)")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 2, 4, 8, 32, 64], help="levels (default 1,2,4,8,32,64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per level (default 10)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="requests per level at most (default 100000)")
    parser.add_argument("--k", type=int, default=100, help="items per request (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="service and bare-search threads per library (default 1)")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1,
                        help="faiss threads while building the synthetic bundle's index (default: every core)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `recsys serve` argument, e.g. --serve-arg=--max-batch=64")
    parser.add_argument("--out", default=None, help="write the result as JSON here: levels, recall, service_rss_mib, bundle")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.bundle is None) == (args.synthetic_items is None):
        raise ValueError("recsys bench serve: give a BUNDLE folder or --synthetic-items N (one of them)")
    if args.synthetic_items is not None and args.synthetic_items < 2:
        raise ValueError(f"--synthetic-items: got {args.synthetic_items}; give at least 2 items")
    from serving.retriever import parse_index_settings
    from serving.retriever import set_threads

    set_threads(args.threads)
    from recsys.train.bench import print_table
    from serving.loadgen import HEADER, results_json, run_benchmark

    with tempfile.TemporaryDirectory(prefix="recsys-bench-serve-") as tmp:
        bundle = Path(args.bundle) if args.bundle else None
        if bundle is None:
            from serving.testing import synthetic_bundle

            import faiss

            faiss.omp_set_num_threads(args.build_threads)  # index build only; searches run at --threads
            start = time.perf_counter()
            bundle = synthetic_bundle(Path(args.bundle_out or Path(tmp) / "bundle"), args.synthetic_items, index=args.index,
                                      index_settings=parse_index_settings(args.index_setting), catalogue=args.catalogue,
                                      precision=args.precision)
            build_s = time.perf_counter() - start
            faiss.omp_set_num_threads(args.threads)
            manifest = json.loads((bundle / "manifest.json").read_text())
            print(f"synthetic bundle: {args.synthetic_items:,} {args.catalogue} random items ({args.precision}), index {args.index} "
                  f"{manifest['index']['settings']}, built in {build_s:.1f} s with {args.build_threads} thread(s)"
                  + (f", kept in {bundle}" if args.bundle_out else ""), flush=True)
        print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        print(" | ".join(HEADER), flush=True)
        result = run_benchmark(bundle, concurrency=args.concurrency, seconds=args.seconds, max_requests=args.max_requests,
                               k=args.k, threads=args.threads, serve_args=args.serve_arg, log=lambda line: print(line, flush=True))
    rows = [dict(zip(HEADER, r.row())) for r in result.levels]
    print()
    print_table(rows, HEADER, title=f"top-{args.k}, {args.seconds:g} s per level, {args.threads} thread(s) per library")
    index = result.bundle["index"]
    print(f"index {index['kind']} {index['settings']} over {result.bundle['items']:,} {result.bundle['precision']} items: "
          f"recall@{args.k} against exact {result.recall:.4f} (200 users); service RSS {result.service_rss_mib:,.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps(results_json(result), indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
