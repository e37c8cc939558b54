"""Loopback load generator for ``recsys bench serve``: the real service in a subprocess, keep-alive HTTP.

    recsys bench serve --synthetic-items 1000000 --concurrency 1,8,32,64 --seconds 10
    .venv/bin/python -m pytest tests/unit/serving/test_loadgen.py -q

Per concurrency level C: C keep-alive connections, each sending ``POST /v1/retrieve`` back to back
until ``seconds`` pass or ``max_requests`` are sent (bounded in both), each request's latency
taken from the first byte written to the last byte read. The client is a few lines of asyncio
streams (no HTTP library), so on a 2-core machine the generator takes little of the CPU the
service needs. Next to the HTTP figures, the same queries go through a bare index search in this
process (one query at a time: what HTTP, validation, batching and the user tower add), and the
index's recall@k against exact search over the same vectors. Each row carries the machine's
load average (the machine is shared: a busy one slows every row), and the run reports the
service process's resident memory (RSS) after the levels.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level (or the bare search): latency percentiles in ms, throughput, errors."""

    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    qps: float
    load_avg: float = float("nan")  # the machine's 1-minute load average right after the level

    def row(self) -> list[str]:
        return [self.name, str(self.concurrency), f"{self.requests:,}", str(self.errors), f"{self.p50_ms:.2f}",
                f"{self.p95_ms:.2f}", f"{self.p99_ms:.2f}", f"{self.qps:,.0f}", f"{self.load_avg:.1f}"]


HEADER = ["path", "concurrency", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "QPS", "load 1m"]


def summarise(name: str, concurrency: int, latencies: Sequence[float], errors: int, seconds: float) -> LevelResult:
    lat = np.asarray(latencies, dtype=np.float64) * 1000.0
    pct = np.percentile(lat, [50, 95, 99]) if lat.size else np.full(3, np.nan)
    return LevelResult(name, concurrency, int(lat.size), errors, seconds, *map(float, pct), lat.size / seconds if seconds else 0.0,
                       os.getloadavg()[0])


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (``VmRSS`` of ``/proc/PID/status``; NaN where there is none)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # the process is gone, or no /proc
        return float("nan")
    return next((int(line.split()[1]) / 1024.0 for line in lines if line.startswith("VmRSS:")), float("nan"))


def request_bytes(host: str, port: int, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    return head + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def run_level(host: str, port: int, requests: Sequence[bytes], concurrency: int, seconds: float,
                    max_requests: int) -> tuple[list[float], int, float, list[bytes]]:
    """``(latencies s, errors, elapsed s, a few response bodies)`` of one level."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    samples: list[bytes] = []
    deadline = time.perf_counter() + seconds

    async def connection(offset: int) -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(host, port)
        i = offset
        try:
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                data = requests[i % len(requests)]
                i += concurrency
                start = time.perf_counter()
                writer.write(data)
                try:
                    status, body = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors += 1
                elif len(samples) < 3:
                    samples.append(body)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(c) for c in range(concurrency)))
    return latencies, errors, time.perf_counter() - start, samples


def start_service(bundle: Path, port: int, *, threads: int = 1, extra: Sequence[str] = (), timeout_s: float = 120.0) -> subprocess.Popen:
    """``python -m jobs.serve BUNDLE`` on the loopback address; returns once /readyz answers 200."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "jobs.serve", str(bundle), "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    import urllib.request

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"recsys serve exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"recsys serve did not get ready on port {port} within {timeout_s:.0f} s")


def random_users(bundle, num: int, seed: int = 0) -> list[dict[str, Any]]:
    """Request users with known raw ids of every user-tower feature (multi-valued: 1 to max_length ids)."""
    rng = random.Random(seed)
    features = bundle.manifest["user_tower"]["features"]
    users = []
    for _ in range(num):
        user = {}
        for f in features:
            vocab = bundle.vocabs.get(f["name"]) if f["vocab"] else None
            pool = vocab.sorted_raw if vocab is not None and vocab.sorted_raw.size else None

            def draw() -> int:
                return int(pool[rng.randrange(pool.size)]) if pool is not None else rng.randrange(1 << 40)

            user[f["name"]] = [draw() for _ in range(rng.randint(1, f["max_length"]))] if f["multi_valued"] else draw()
        users.append(user)
    return users


def index_recall(service, users: list[dict[str, Any]], k: int, num: int = 200) -> float:
    """Recall@k of the service's index against exact search over the same stored vectors, ``num`` users."""
    from serving.retriever import Retriever
    from serving.testing import recall_at_k

    r = service.retriever
    vectors = service.user_vectors([service.encoder.parse(u) for u in users[:num]]).numpy()
    exact = Retriever(r.vectors, "exact", scales=r.scales, first_item=r.first_item)
    return recall_at_k(r.search(vectors, k)[1], exact.search(vectors, k)[1])


def bare_search(service, users: list[dict[str, Any]], k: int, seconds: float, max_requests: int) -> dict[str, LevelResult]:
    """The same queries without HTTP, one query at a time: the index search alone, the user tower alone (as
    served: no per-call input checks), the tower WITH torch.export's per-call input checks (the baseline the
    checks were dropped from), and tower + search (:meth:`LoadedService.run`)."""
    import torch

    from serving.bundle import USER_TOWER
    from serving.service import Query

    parsed = [service.encoder.parse(u) for u in users]
    vectors = service.user_vectors(parsed).numpy()
    inputs = [service.encoder.encode([p]) for p in parsed]
    checked = torch.export.load(str(service.bundle.path / USER_TOWER)).module()  # the program's default module
    service.retriever.search(vectors[:1], k)  # warm
    steps = {
        "bare index search": lambda i: service.retriever.search(vectors[i : i + 1], k),
        "user tower alone": lambda i: service.user_vectors([parsed[i]]),
        "user tower, export's input checks": lambda i: checked(*inputs[i]),
        "tower + search, no HTTP": lambda i: service.run([Query(parsed[i], k, np.empty(0, np.int64))]),
    }
    out = {}
    with torch.inference_mode():
        for name, step in steps.items():
            lat = []
            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            i = 0
            while i < max_requests and time.perf_counter() < deadline:
                t = time.perf_counter()
                step(i % len(parsed))
                lat.append(time.perf_counter() - t)
                i += 1
            out[name] = summarise(name, 1, lat, 0, time.perf_counter() - start)
    return out


def serve_time_settings(serve_args: Sequence[str]) -> dict[str, int]:
    """The ``--index-setting KEY=N`` overrides among ``recsys serve`` arguments (both spellings)."""
    pairs, args = [], list(serve_args)
    for i, arg in enumerate(args):
        if arg.startswith("--index-setting="):
            pairs.append(arg.split("=", 1)[1])
        elif arg == "--index-setting" and i + 1 < len(args):
            pairs.append(args[i + 1])
    from serving.retriever import parse_index_settings

    return parse_index_settings(pairs)


@dataclass(frozen=True)
class BenchResult:
    """A whole ``recsys bench serve`` run: the rows, the index's recall, the service's memory."""

    levels: list[LevelResult]
    recall: float  # recall@k of the index against exact search over the same vectors (200 users)
    service_rss_mib: float  # the service process's resident memory after the levels
    tower: list[LevelResult]  # the user tower alone, as served and with torch.export's per-call input checks
    bundle: dict[str, Any]  # index kind + settings, item count, precision


def run_benchmark(bundle_path: Path, *, concurrency: Sequence[int], seconds: float, max_requests: int, k: int = 100,
                  threads: int = 1, port: int | None = None, serve_args: Sequence[str] = (), log=print) -> BenchResult:
    """Start the service on ``bundle_path``, load it at each concurrency, then the bare search; stop the service."""
    from serving.bundle import load_bundle
    from serving.service import LoadedService
    from serving.testing import free_port

    bundle = load_bundle(bundle_path)
    users = random_users(bundle, 2000)
    port = port or free_port()
    payloads = [request_bytes("127.0.0.1", port, "/v1/retrieve", {"user": u, "k": k}) for u in users]
    proc = start_service(bundle_path, port, threads=threads, extra=serve_args)
    results = []
    try:
        asyncio.run(run_level("127.0.0.1", port, payloads, 4, 1.0, 200))  # warm the connections and the service
        for c in concurrency:
            lat, errors, elapsed, samples = asyncio.run(run_level("127.0.0.1", port, payloads, c, seconds, max_requests))
            if samples:
                got = len(json.loads(samples[0])["items"])
                if got != min(k, bundle.num_items - 1):
                    log(f"warning: a response held {got} items, expected {k}")
            results.append(summarise("HTTP /v1/retrieve", c, lat, errors, elapsed))
            log(" | ".join(results[-1].row()))
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    service = LoadedService(bundle, serve_time_settings(serve_args) or None)  # as the service searched
    bare = bare_search(service, users, k, seconds, max_requests)
    tower = [bare.pop("user tower alone"), bare.pop("user tower, export's input checks")]
    for r in [*bare.values(), *tower]:
        log(" | ".join(r.row()))
    results.extend(bare.values())
    m = bundle.manifest
    return BenchResult(results, index_recall(service, users, k), rss, tower,
                       {"index": {"kind": m["index"]["kind"], "settings": service.retriever.settings}, "items": bundle.num_items, "precision": m["precision"]["item_vectors"],
                        "source": m.get("source")})


def results_json(result: BenchResult) -> dict[str, Any]:
    return {"levels": [asdict(r) for r in result.levels], "tower": [asdict(r) for r in result.tower], "recall": result.recall, "service_rss_mib": result.service_rss_mib,
            "bundle": result.bundle}
