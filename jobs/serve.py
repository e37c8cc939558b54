"""Serve a bundle over HTTP: top-k items for a user's raw features.

    recsys serve bundles/tt
    recsys serve bundles/tt --host 127.0.0.1 --port 8000 --max-batch 32 --max-wait-ms 0 --threads 1
    recsys serve bundles/tt_hnsw --index-setting ef_search=128
    curl -s localhost:8000/v1/retrieve -d '{"user": {"user_id": 110, "user_segment": 3}, "k": 10}'

The API is in :mod:`serving.app` (its OpenAPI schema at ``GET /openapi.json``). SIGHUP reloads the
bundle from its path (as ``POST /admin/reload``). Thread counts of torch, faiss and OpenBLAS are set
before anything loads (``--threads``, default 1). uvicorn runs with httptools and uvloop (``--http h11
--loop asyncio`` for the pure-Python ones).

Every flag is checked before any work (its range in ``--help``); the address is bound before the
bundle loads, and ``serving BUNDLE on http://HOST:PORT`` is printed once the service answers, with the
port really bound (``--port 0`` picks a free one). Exit codes: 1 the bundle cannot be served or the
address cannot be bound (one line), 2 a usage error (one line naming the flag); SIGTERM / SIGINT stop
it after the requests in flight (uvicorn re-raises the signal: 143 / 130 in a shell).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any, Callable, NoReturn

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
SERVE_TIME_SETTINGS = ("nprobe", "ef_search", "rerank")  # of any kind; the bundle's kind is checked once its manifest is read


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on ONE line (``recsys serve: error: argument --port: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]``, the message naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; give an integer in [{low:,}, {high:,}]") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"got {value}; give an integer in [{low:,}, {high:,}]")
        return value

    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    shown = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; give a number in {shown}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"got {text}; give a number in {shown}")
        return value

    return parse


def index_setting(keys: tuple[str, ...]) -> Callable[[str], tuple[str, int]]:
    """An argparse type: ``KEY=N`` with KEY one of ``keys`` and N a positive integer."""

    def parse(text: str) -> tuple[str, int]:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            raise argparse.ArgumentTypeError(f"got {text!r}; give KEY=N with KEY one of {list(keys)}")
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not 1 <= number <= 1 << 31:
            raise argparse.ArgumentTypeError(f"got {text!r}; {key} takes an integer in [1, {1 << 31:,}]")
        return key, number

    return parse


def check_build_settings(parser: argparse.ArgumentParser, index: str, settings: list[tuple[str, int]]) -> None:
    """``--index-setting`` of a bundle to build (export, bench serve): every KEY one the ``index`` kind takes,
    every N in its registry range; one line and exit 2 before any work."""
    from serving.retriever import BUILD_SETTINGS, check_settings

    allowed = BUILD_SETTINGS[index]
    for key, value in settings:
        if key not in allowed:
            parser.error(f"argument --index-setting: got {key}={value}; the {index} index takes "
                         + (f"{list(allowed)}" if allowed else "no settings"))
    try:
        check_settings(index, dict(settings))
    except ValueError as exc:
        parser.error(f"argument --index-setting: {exc}")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="recsys serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a bundle folder written by `recsys export`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind, a name or IP that resolves here (default 127.0.0.1)")
    parser.add_argument("--port", type=int_in(0, 65535), default=8000, help="port in [0, 65535]; 0 picks a free one, printed (default 8000)")
    parser.add_argument("--threads", type=int_in(1, 256), default=1, help="threads of torch / faiss / OpenBLAS each, in [1, 256] (default 1)")
    parser.add_argument("--max-batch", type=int_in(1, 4096), default=32, help="queries per micro-batch, in [1, 4096] (default 32)")
    parser.add_argument("--max-wait-ms", type=float_in(0, 1000), default=0.0,
                        help="micro-batch wait after its first query, ms in [0, 1000] (default 0)")
    parser.add_argument("--batch-thread", action="store_true", help="compute micro-batches on a worker thread, not on the event loop")
    parser.add_argument("--max-k", type=int_in(1, 100_000), default=1000, help="largest k a request may ask, in [1, 100000] (default 1000)")
    parser.add_argument("--max-batch-requests", type=int_in(1, 10_000), default=256,
                        help="requests per /v1/retrieve/batch, in [1, 10000] (default 256)")
    parser.add_argument("--max-body-bytes", type=int_in(1024, 1 << 30), default=1 << 20,
                        help="largest request body in bytes, in [1024, 2^30] (default 1 MiB)")
    parser.add_argument("--admin-anywhere", action="store_true", help="answer /admin/* from non-loopback clients too")
    parser.add_argument("--require-all-features", action="store_true",
                        help="422 when a request leaves out a single-valued user feature, whatever the bundle's missing-feature policy")
    parser.add_argument("--index-setting", type=index_setting(SERVE_TIME_SETTINGS), action="append", default=[], metavar="KEY=N",
                        help="serve-time index setting of the bundle's index: ivf nprobe, hnsw ef_search, binary rerank (N >= 1)")
    parser.add_argument("--http", default="httptools", choices=["httptools", "h11"], help="HTTP parser (default httptools)")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"], help="event loop (default uvloop)")
    parser.add_argument("--log-level", default="warning", choices=LOG_LEVELS, help="uvicorn's log level (default warning)")
    parser.add_argument("--access-log", action="store_true", help="one line per request (uvicorn's access log; default off)")
    from jobs.cli import with_examples  # its example at the end of --help

    return with_examples(parser)


def check_bundle_flags(parser: OneLineParser, args: argparse.Namespace) -> None:
    """What needs the bundle's manifest (read, not loaded): BUNDLE is a bundle, its index takes the --index-setting keys."""
    from pathlib import Path

    from serving.bundle import BundleError, read_manifest
    from serving.retriever import SERVE_TIME_SETTINGS as BY_KIND

    if not Path(args.bundle).is_dir():
        parser.error(f"argument BUNDLE: {args.bundle}: no such folder; give the folder `recsys export --out` wrote")
    try:
        kind = read_manifest(args.bundle)["index"]["kind"]
    except (BundleError, KeyError, TypeError):
        return  # a damaged bundle is refused by the load, naming the file (exit 1)
    allowed = BY_KIND.get(kind, ())
    for key, value in args.index_setting:
        if key not in allowed:
            parser.error(f"argument --index-setting: got {key}={value}; the bundle's {kind} index takes "
                         + (f"{list(allowed)} at serve time" if allowed else "no serve-time settings"))


def bind_socket(host: str, port: int):
    """A listening TCP socket on ``(host, port)``; raises ``OSError`` (in use, not an address of this host)."""
    import socket

    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses a port in TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy / torch / faiss create their pools
    check_bundle_flags(parser, args)
    import socket

    try:
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        parser.error(f"argument --host: got {args.host!r}, which does not resolve here ({exc}); give an address or name of this machine")
    try:
        sock = bind_socket(args.host, args.port)  # before the bundle loads: a taken port fails in a second
    except OSError as exc:
        print(f"recsys serve: error: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
              "choose another --port (0 picks a free one) or --host", file=sys.stderr)
        return 1
    with sock:
        return _serve(args, sock)


def _serve(args: argparse.Namespace, sock: Any) -> int:
    from serving.retriever import set_threads

    set_threads(args.threads)
    import asyncio
    import signal

    import uvicorn

    from serving.app import ServeConfig, create_app

    config = ServeConfig(
        max_k=args.max_k, max_batch_requests=args.max_batch_requests, max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, batch_thread=args.batch_thread, admin_anywhere=args.admin_anywhere,
        index_overrides=dict(args.index_setting), require_all_features=args.require_all_features,
    )
    app = create_app(args.bundle, config)  # a bundle that cannot be served raises BundleError: one line, exit 1
    state = app.state.recsys
    for line in state.service.notes:
        print(f"recsys serve: {line}", flush=True)
    # uvicorn[standard]'s production setup by default, named rather than "auto" so a missing package fails here:
    # httptools parses HTTP in C, uvloop runs the event loop on libuv (both cut per-request CPU).
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, http=args.http, loop=args.loop))
    if args.access_log:  # uvicorn holds its access logger at --log-level (warning); its lines are INFO
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)

    async def serve() -> bool:
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
        serving = loop.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:  # the success line only once the service answers, with the address really bound
            print(f"serving {state.service.bundle_id} on {url_of(sock)}", flush=True)
        await serving
        return server.started

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        started = runner.run(serve())
    if not started:
        print("recsys serve: error: the server did not start (uvicorn's log above says why)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from jobs.cli import main as recsys_main

    raise SystemExit(recsys_main(["serve", *sys.argv[1:]]))
