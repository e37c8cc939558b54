"""Benchmarks that print figures (a table, and JSON with ``--out``).

    recsys bench loader [--data DIR] [--rows 500000] [--batch-size 4096] [--out FILE.json]
    recsys bench lookup [--methods hashed,qr] [--budgets 1,4,16,64] [--scale 0.125] [--out FILE.json]

``loader``: rows/s and batches/s of reading a split (a) with pyarrow only, (b) through
:class:`~recsys.data.loader.ParquetBatchReader` + collate, (c) through Ray Data + collate, in
Ray's threads and in the caller's, with Ray's V2 and V1 parquet readers (each timed over one
epoch after a warm-up epoch); plus collate alone on tables already in memory. Without
``--data`` it first writes a Criteo-schema data set (``features/criteo.yaml``, Zipf ids) to a
temporary folder. Figures depend on the machine and its load: compare rows of one run.

``lookup``: see :mod:`recsys.embeddings.bench`.

Each subcommand is one ``bench_<name>(args) -> int`` function registered in :func:`build_parser`;
all print through :func:`recsys.train.bench.print_table` (the library holds the bench helpers;
``jobs`` only parses and dispatches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import layout
from recsys.data.batch import batch_columns, collate
from recsys.data.loader import ParquetBatchReader, ShardReader, iter_batches, ray_dataset
from recsys.embeddings.bench import add_lookup_arguments, bench_lookup
from recsys.features.spec import DatasetSpec
from recsys.train.bench import print_table, write_criteo_like


def _write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        layout.write_json_atomic(path, payload)
        print(f"wrote {path}")


# -- loader -----------------------------------------------------------------------------------


def _timed(name: str, batches: Iterable[Any], count: Callable[[Any], int]) -> dict[str, Any]:
    start = time.perf_counter()
    num_rows = num_batches = 0
    for item in batches:
        num_rows += count(item)
        num_batches += 1
    seconds = time.perf_counter() - start
    return {
        "path": name,
        "rows": num_rows,
        "batches": num_batches,
        "seconds": round(seconds, 3),
        "rows_per_s": num_rows / seconds if seconds else float("inf"),
        "batches_per_s": num_batches / seconds if seconds else float("inf"),
    }


def _pyarrow_only(files: list[Path], columns: list[str], batch_size: int) -> Iterable[pa.RecordBatch]:
    for path in files:
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)


def bench_loader(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        if args.data:
            root = Path(args.data)
            spec = layout.dataset_spec(root)
        else:
            root = Path(tmp) / "criteo_like"
            print(f"writing {args.rows:,} Criteo-schema rows (13 dense, 26 sparse, Zipf ids) to {root} ...")
            t0 = time.perf_counter()
            spec = write_criteo_like(root, args.rows, seed=args.seed)
            print(f"  written in {time.perf_counter() - t0:.1f} s")
        files = layout.split_files(root, args.split)
        num_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
        bs = args.batch_size
        print(
            f"data {root} split {args.split}: {num_rows:,} rows in {len(files)} files, "
            f"{len(spec.dense)} dense + {len(spec.sparse)} sparse features; batch size {bs:,}; "
            f"{os.cpu_count()} CPUs"
        )
        results = [
            _timed("pyarrow read only", _pyarrow_only(files, batch_columns(spec), bs), lambda rb: rb.num_rows),
            _timed("ParquetBatchReader + collate", ParquetBatchReader(root, args.split, spec, bs), lambda b: b.batch_size),
            # What `recsys train` runs on each worker: seeded row-group order, shuffle window, prefetch thread.
            _timed(
                "ShardReader (training, 1 rank, file order) + collate",
                ShardReader(files, spec, rank=0, world_size=1, batch_size=bs).train_batches(epoch=0),
                lambda b: b.batch_size,
            ),
            _timed(
                "ShardReader (training, shuffle window 4 batches) + collate",
                ShardReader(files, spec, rank=0, world_size=1, batch_size=bs, seed=0, shuffle_files=True,
                            shuffle_buffer_rows=4 * bs).train_batches(epoch=0),
                lambda b: b.batch_size,
            ),
        ]
        tables = []
        for table in ParquetBatchReader(root, args.split, spec, bs).iter_tables():
            tables.append(table)
            if len(tables) == 50:
                break
        results.append(_timed("collate only (tables in memory)", (collate(t, spec) for t in tables), lambda b: b.batch_size))
        del tables
        if not args.no_ray:
            results += _bench_ray_paths(root, args.split, spec, bs, args.prefetch_batches)
    print()
    print_table(results, ["path", "rows", "batches", "seconds", "rows_per_s", "batches_per_s"], title="loader throughput")
    _write_json(
        args.out,
        {
            "bench": "loader",
            "data": str(args.data) if args.data else f"generated criteo schema, {args.rows} rows, seed {args.seed}",
            "split": args.split,
            "batch_size": bs,
            "cpu_count": os.cpu_count(),
            "machine": platform.platform(),
            "results": results,
        },
    )
    return 0


def _bench_ray_paths(root: Path, split: str, spec: DatasetSpec, bs: int, prefetch: int) -> list[dict[str, Any]]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        results = []
        for datasource_v2, collate_in_ray in ((True, True), (True, False), (False, True), (False, False)):
            ds = ray_dataset(root, split, spec, datasource_v2=datasource_v2)
            kwargs = dict(batch_size=bs, prefetch_batches=prefetch, collate_in_ray=collate_in_ray)
            for _ in iter_batches(ds, spec, **kwargs):  # warm-up epoch: worker processes, imports, page cache
                pass
            # The timed pass is a whole epoch, Ray's per-epoch start (listing, read tasks) included.
            name = f"Ray Data {'V2' if datasource_v2 else 'V1'} + collate in {'Ray threads' if collate_in_ray else 'caller'}"
            results.append(_timed(name, iter_batches(ds, spec, **kwargs), lambda b: b.batch_size))
        return results
    finally:
        if started:
            ray.shutdown()


# -- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from jobs.cli import SUBCOMMANDS, with_examples

    parser = argparse.ArgumentParser(prog="recsys bench", description="Benchmarks that print figures.")
    sub = parser.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(SUBCOMMANDS["bench"]) + "}")

    loader = sub.add_parser("loader", help="rows/s of pyarrow, ParquetBatchReader and Ray Data + collate")
    loader.add_argument("--data", help="an ingested data set; default: write a Criteo-schema one to a temp folder")
    loader.add_argument("--split", default="train", choices=layout.SPLITS, help="split to read (default: train)")
    loader.add_argument("--rows", type=_positive, default=500_000, help="rows to generate without --data (default: 500000)")
    loader.add_argument("--batch-size", type=_positive, default=4096, help="rows per batch (default: 4096)")
    loader.add_argument("--prefetch-batches", type=int, default=2, help="Ray Data prefetch (default: 2)")
    loader.add_argument("--seed", type=int, default=0, help="seed of the generated data (default: 0)")
    loader.add_argument("--no-ray", action="store_true", help="skip the Ray Data paths")
    loader.add_argument("--out", help="also write the figures to this JSON file")
    loader.set_defaults(run=bench_loader)

    lookup = sub.add_parser("lookup", help="forward+backward lookups/s of each compression method at 1x..1/64 memory")
    add_lookup_arguments(lookup)
    lookup.set_defaults(run=bench_lookup)

    from recsys.train.bench import add_train_arguments, bench_train

    train = sub.add_parser("train", help="samples/s of the training step loop vs plain TorchRec DLRM")
    add_train_arguments(train)
    train.set_defaults(run=bench_train)

    # Listed here for `recsys bench --help`; main() hands their arguments to their own parsers.
    from jobs import bench_compression, bench_serve

    for name, own in (*bench_compression.build_parsers().items(), ("serve", bench_serve.build_parser())):
        sub.add_parser(name, help=SUBCOMMANDS["bench"][name], description=own.description, add_help=False)
    return with_examples(parser)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] in ("compression", "report"):  # the compression sweep: jobs/bench_compression.py
        from jobs import bench_compression

        return bench_compression.main(argv)
    if argv and argv[0] == "serve":  # the serving load benchmark: jobs/bench_serve.py
        from jobs import bench_serve

        return bench_serve.main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.run(args))
