"""Serve a bundle over HTTP: top-k items for a user's raw features.

    recsys serve bundles/tt
    recsys serve bundles/tt --host 127.0.0.1 --port 8000 --max-batch 32 --max-wait-ms 0 --threads 1
    recsys serve bundles/tt_hnsw --index-setting ef_search=128
    curl -s localhost:8000/v1/retrieve -d '{"user": {"user_id": 110, "user_segment": 3}, "k": 10}'

The API is in :mod:`serving.app`. SIGHUP reloads the bundle from its path (as ``POST /admin/reload``).
Thread counts of torch, faiss and OpenBLAS are set before anything loads (``--threads``, default 1).
uvicorn runs with httptools and uvloop (``--http h11 --loop asyncio`` for the pure-Python ones).
"""

from __future__ import annotations

import argparse
import os


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a bundle folder written by `recsys export`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--threads", type=int, default=1, help="threads of torch / faiss / OpenBLAS each (default 1)")
    parser.add_argument("--max-batch", type=int, default=32, help="queries per micro-batch (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="micro-batch wait after its first query (default 0)")
    parser.add_argument("--batch-thread", action="store_true", help="compute micro-batches on a worker thread, not on the event loop")
    parser.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask (default 1000)")
    parser.add_argument("--max-batch-requests", type=int, default=256, help="requests per /v1/retrieve/batch (default 256)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    parser.add_argument("--admin-anywhere", action="store_true", help="answer /admin/* from non-loopback clients too")
    parser.add_argument("--index-setting", action="append", default=[], metavar="KEY=N",
                        help="serve-time index setting: ivf nprobe, hnsw ef_search, binary rerank")
    parser.add_argument("--http", default="httptools", choices=["httptools", "h11"], help="HTTP parser (default httptools)")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"], help="event loop (default uvloop)")
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy / torch / faiss create their pools
    from serving.retriever import parse_index_settings
    from serving.retriever import set_threads

    set_threads(args.threads)
    import signal

    import uvicorn

    from serving.app import ServeConfig, create_app

    config = ServeConfig(
        max_k=args.max_k, max_batch_requests=args.max_batch_requests, max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, batch_thread=args.batch_thread, admin_anywhere=args.admin_anywhere,
        index_overrides=parse_index_settings(args.index_setting),
    )
    app = create_app(args.bundle, config)
    state = app.state.recsys
    # uvicorn[standard]'s production setup by default, named rather than "auto" so a missing package fails here:
    # httptools parses HTTP in C, uvloop runs the event loop on libuv (both cut per-request CPU).
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                                           http=args.http, loop=args.loop))

    async def serve() -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

        def on_hup() -> None:
            async def reload() -> None:
                result = await state.reload_path(state.bundle_path)
                print(f"SIGHUP reload: {result}", flush=True)

            task = loop.create_task(reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        print(f"serving {state.service.bundle_id} on http://{args.host}:{args.port}", flush=True)
        await server.serve()

    import asyncio

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
