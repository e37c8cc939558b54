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

Every flag is checked before any work, the ``--serve-arg`` values with ``recsys serve``'s own
checks. Exit codes: 0 done, 1 a failure (one line), 2 a usage error (one line naming the flag).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from jobs.serve import OneLineParser, check_build_settings, float_in, index_setting, int_in

# recsys bench serve sets these of the service itself (loopback, a free port, --threads)
_OWN_SERVE_FLAGS = ("--host", "--port", "--threads")


def concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated positive integers, e.g. 1,8,32; got {text!r}") from None
    if not levels or min(levels) < 1 or max(levels) > 256:
        raise argparse.ArgumentTypeError(f"levels must lie in [1, 256]; got {text!r}")
    return levels


def build_parser() -> OneLineParser:
    from serving.retriever import BUILD_SETTINGS, INDEX_KINDS

    parser = OneLineParser(prog="recsys bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", help="a bundle folder (or use --synthetic-items)")
    parser.add_argument("--synthetic-items", type=int_in(2, 100_000_000), default=None, metavar="N",
                        help="build a synthetic bundle of N items instead, N in [2, 10^8]")
    parser.add_argument("--index", default="ivf", choices=INDEX_KINDS, help="synthetic bundle's index (default ivf)")
    parser.add_argument("--index-setting", type=index_setting(tuple(sorted({k for v in BUILD_SETTINGS.values() for k in v}))),
                        action="append", default=[], metavar="KEY=N", help="synthetic bundle's index settings (N >= 1)")
    parser.add_argument("--catalogue", default="mixture", choices=["mixture", "clustered", "uniform"],
                        help="synthetic vectors (default mixture: overlapping power-law clusters)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="synthetic item vectors' precision (default fp32)")
    parser.add_argument("--bundle-out", default=None, metavar="DIR",
                        help="keep the synthetic bundle here, a new folder (default: a temporary folder)")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 2, 4, 8, 32, 64], help="levels in [1, 256] (default 1,2,4,8,32,64)")
    parser.add_argument("--seconds", type=float_in(0, 3600, low_open=True), default=10.0, help="seconds per level, in (0, 3600] (default 10)")
    parser.add_argument("--max-requests", type=int_in(1, 10**9), default=100_000, help="requests per level at most, in [1, 10^9] (default 100000)")
    parser.add_argument("--k", type=int_in(1, 100_000), default=100, help="items per request, in [1, the service's --max-k] (default 100)")
    parser.add_argument("--threads", type=int_in(1, 256), default=1, help="service and bare-search threads per library, in [1, 256] (default 1)")
    parser.add_argument("--build-threads", type=int_in(1, 1024), default=os.cpu_count() or 1,
                        help="faiss threads while building the synthetic bundle's index, in [1, 1024] (default: every core)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `recsys serve` argument, e.g. --serve-arg=--max-batch=64 (not --host, --port, --threads)")
    parser.add_argument("--out", default=None, help="write the result as JSON here: levels, recall, service_rss_mib, bundle")
    from jobs.cli import with_examples  # its example at the end of --help

    return with_examples(parser)


def check_flags(parser: OneLineParser, args: argparse.Namespace) -> None:
    """Everything that needs no work: one source of items, folders, the settings, the serve args."""
    from jobs.serve import build_parser as serve_parser
    from serving.retriever import SERVE_TIME_SETTINGS

    if (args.bundle is None) == (args.synthetic_items is None):
        parser.error("give a BUNDLE folder or --synthetic-items N (one of them)")
    if args.bundle is not None:
        if not Path(args.bundle).is_dir():
            parser.error(f"argument BUNDLE: {args.bundle}: no such folder; give the folder `recsys export --out` wrote")
        for flag, value in (("--bundle-out", args.bundle_out), ("--index-setting", args.index_setting)):
            if value:
                parser.error(f"argument {flag}: applies to --synthetic-items bundles only (serve-time settings: "
                             "--serve-arg=--index-setting=KEY=N)")
    if args.bundle_out is not None and Path(args.bundle_out).exists():
        parser.error(f"argument --bundle-out: {args.bundle_out} exists; give a new folder (a bundle is never overwritten in place)")
    check_build_settings(parser, args.index, args.index_setting)  # before the catalogue is built
    if args.out is not None:
        out = Path(args.out)
        if out.is_dir() or not (out.parent if str(out.parent) else Path(".")).is_dir():
            parser.error(f"argument --out: {out}: give a file path in an existing folder")
    for arg in args.serve_arg:
        if arg.split("=", 1)[0] in _OWN_SERVE_FLAGS:
            parser.error(f"argument --serve-arg: got {arg!r}; recsys bench serve sets {list(_OWN_SERVE_FLAGS)} itself")

    class ServeArgParser(OneLineParser):
        def error(self, message: str):
            parser.error(f"argument --serve-arg: {message.replace('argument ', '', 1)}")

    serve = serve_parser()
    serve.__class__ = ServeArgParser
    serve_args = serve.parse_args(["BUNDLE", *args.serve_arg])
    kind = args.index
    if args.bundle is not None:
        from serving.bundle import BundleError, read_manifest

        try:
            kind = read_manifest(args.bundle)["index"]["kind"]
        except (BundleError, KeyError, TypeError):
            kind = None  # a damaged bundle is refused when it loads, naming the file
    serve_time = SERVE_TIME_SETTINGS.get(kind, ())
    for key, value in serve_args.index_setting if kind is not None else ():
        if key not in serve_time:
            parser.error(f"argument --serve-arg: --index-setting {key}={value}; the bundle's {kind} index takes "
                         + (f"{list(serve_time)} at serve time" if serve_time else "no serve-time settings"))
    if args.k > serve_args.max_k:
        parser.error(f"argument --k: got {args.k}; the service answers k up to its --max-k {serve_args.max_k} "
                     f"(raise it with --serve-arg=--max-k={args.k})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(parser, args)
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
                                      index_settings=dict(args.index_setting), catalogue=args.catalogue,
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
    rows = [dict(zip(HEADER, r.row())) for r in [*result.levels, *result.tower]]
    print()
    print_table(rows, HEADER, title=f"top-{args.k}, {args.seconds:g} s per level, {args.threads} thread(s) per library")
    index = result.bundle["index"]
    print(f"index {index['kind']} {index['settings']} over {result.bundle['items']:,} {result.bundle['precision']} items: "
          f"recall@{args.k} against exact {result.recall:.4f} (200 users); service RSS {result.service_rss_mib:,.0f} MiB")
    by_name = {r.name: r for r in [*result.levels, *result.tower]}
    search, tower, checked = (by_name.get(n) for n in ("bare index search", "user tower alone", "user tower, export's input checks"))
    if search and tower and checked and search.p50_ms > 0:
        print(f"user tower / bare index search, p50: {tower.p50_ms / search.p50_ms:.2f} "
              f"(with torch.export's per-call input checks, as before: {checked.p50_ms / search.p50_ms:.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps(results_json(result), indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
