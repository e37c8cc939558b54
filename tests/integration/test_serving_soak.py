"""Soak: a real `recsys serve` process for about a minute of mixed valid / invalid / batch requests at
several concurrencies, with a reload every few seconds (a corrupt bundle among them).

    .venv/bin/python -m pytest tests/integration/test_serving_soak.py -q -m slow -s

Asserted: 0 failed valid requests (each 200 with k items), every invalid one a 4xx naming a field
(never a 5xx), each good reload swapped and each corrupt one refused (409, the old bundle serving),
the service's RSS at the end within SOAK_RSS_BOUND_MIB of its RSS after warm-up, and the answers
before and after the soak equal those of a fresh service of the same bundle. Loopback only; every
loop is bounded by time and count.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import torch

from serving.export import export_bundle, load_trained_run
from serving.loadgen import rss_mib, start_service
from serving.service import LoadedService, Query
from serving.testing import free_port, make_run, user_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("RECSYS_SOAK_SECONDS", 60))  # shorter for a quick local check
LEVELS = (1, 8, 32)  # concurrencies, SOAK_SECONDS / len(LEVELS) each
RELOAD_EVERY_S = 3.0
SOAK_RSS_BOUND_MIB = 64.0  # growth allowed over the soak after warm-up (two bundles of 301 items are ~1 MiB)
MAX_REQUESTS = 200_000  # per level, a bound that the time limit reaches first


def invalid_bodies(user):
    """(body bytes, field the 4xx must name) pairs: types, unknown keys, limits, nesting, not JSON."""
    import json

    def enc(obj):
        return json.dumps(obj).encode()

    return [
        (enc({"user": {**user, "user_id": "u-not-an-int"}, "k": 5}), "user.user_id"),
        (enc({"user": {**user, "nope": 1}, "k": 5}), "user.nope"),
        (enc({"user": user, "k": 0}), "k"),
        (enc({"user": user, "k": 5, "exclude": [1.5]}), "exclude[0]"),
        (enc({"user": user, "k": 5, "extra": True}), "extra"),
        (b"[" * 5000 + b"]" * 5000, "body"),
        (b"{not json", "body"),
        (enc([1, 2, 3]), "body"),
    ]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving_soak")
    data, run_dir = make_run(root)
    exact = export_bundle(run_dir, root / "exact")
    ivf = export_bundle(run_dir, root / "ivf", index="ivf", index_settings={"nlist": 16, "nprobe": 2})
    corrupt = root / "corrupt"
    shutil.copytree(ivf, corrupt)
    (corrupt / "item_vectors.npy").write_bytes(b"\x93NUMPY garbage")
    trained = load_trained_run(run_dir)
    users, _ = user_rows(data, trained.spec, trained.model.user_tower.feature_names, 64)
    return exact, ivf, corrupt, users


def fresh_answers(bundle, users, k=20):
    service = LoadedService.from_path(bundle)
    out = []
    for user in users:  # one query at a time, as the sequential HTTP queries are batched
        answer = service.run([Query(service.encoder.parse(user), k, np.empty(0, np.int64))])[0]
        out.append((answer.items, answer.scores))
    return out


def http_answers(client, users, k=20):
    out = []
    for user in users:
        r = client.post("/v1/retrieve", json={"user": user, "k": k})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        out.append(([x["item_id"] for x in items], [x["score"] for x in items]))
    return out


def assert_same_answers(got, want):
    for (items, scores), (ref_items, ref_scores) in zip(got, want):
        assert items == ref_items
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6)


async def soak_level(url, users, concurrency, seconds, tally, rng_seed):
    """Mixed traffic for ``seconds`` at ``concurrency`` (bounded by MAX_REQUESTS too)."""
    deadline = time.monotonic() + seconds
    sent = iter(range(MAX_REQUESTS))
    rng = random.Random(rng_seed)
    bad = invalid_bodies(users[0])

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            for _ in sent:
                if time.monotonic() > deadline:
                    return
                roll = rng.random()
                if roll < 0.6:
                    r = await client.post("/v1/retrieve", json={"user": rng.choice(users), "k": 10})
                    ok = r.status_code == 200 and len(r.json()["items"]) == 10
                    tally["valid" if ok else "valid_failed"] += 1
                elif roll < 0.8:
                    batch = [{"user": rng.choice(users), "k": 7} for _ in range(4)]
                    r = await client.post("/v1/retrieve/batch", json={"requests": batch})
                    ok = r.status_code == 200 and [len(x["items"]) for x in r.json()["results"]] == [7] * 4
                    tally["batch" if ok else "batch_failed"] += 1
                else:
                    body, field = rng.choice(bad)
                    r = await client.post("/v1/retrieve", content=body)
                    named = 400 <= r.status_code < 500 and any(e["field"] == field for e in r.json()["errors"])
                    tally["invalid_4xx" if named else f"invalid_wrong_{r.status_code}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def reloader(url, paths, stop, results):
    """POST /admin/reload every RELOAD_EVERY_S, cycling through ``paths``, until ``stop`` is set.

    A new connection per reload: an idle keep-alive connection reused just as the server's keep-alive
    timeout closes it is a client-side race (a ReadError), not a failure of the service."""
    i = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), RELOAD_EVERY_S)
            return
        except asyncio.TimeoutError:
            pass
        path = paths[i % len(paths)]
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            r = await client.post("/admin/reload", json={"path": str(path)})
        results.append((path, r.status_code))
        i += 1


def test_soak_mixed_traffic_with_hot_reloads(bundles):
    exact, ivf, corrupt, users = bundles
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    reference = fresh_answers(exact, users[:16])
    proc = start_service(exact, port, extra=["--max-batch", "16"])
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert_same_answers(http_answers(client, users[:16]), reference)  # before
        asyncio.run(soak_level(url, users, 4, 3.0, Counter(), 0))  # warm-up: allocator pools, connections
        rss_start = rss_mib(proc.pid)
        tally: Counter = Counter()
        reloads: list = []

        async def soak():
            stop = asyncio.Event()
            task = asyncio.create_task(reloader(url, [ivf, corrupt, exact], stop, reloads))
            for level, concurrency in enumerate(LEVELS):
                await soak_level(url, users, concurrency, SOAK_SECONDS / len(LEVELS), tally, level + 1)
            stop.set()
            await task

        start = time.monotonic()
        asyncio.run(soak())
        elapsed = time.monotonic() - start
        rss_end = rss_mib(proc.pid)
        print(f"soak {elapsed:.0f} s: {dict(tally)}; {len(reloads)} reloads "
              f"{dict(Counter((p.name, s) for p, s in reloads))}; RSS {rss_start:.0f} -> {rss_end:.0f} MiB")
        failed = {key: n for key, n in tally.items() if "failed" in key or "wrong" in key}
        assert failed == {}, tally
        assert tally["valid"] > 100 and tally["batch"] > 20 and tally["invalid_4xx"] > 20, tally
        # a reload (verify + load + warm-up) takes seconds under this load: the reloader falls behind RELOAD_EVERY_S
        assert len(reloads) >= max(3, int(SOAK_SECONDS / (2 * RELOAD_EVERY_S))) and {s for p, s in reloads if p == corrupt} == {409}
        assert {s for p, s in reloads if p != corrupt} == {200}
        assert rss_end - rss_start <= SOAK_RSS_BOUND_MIB, (rss_start, rss_end)
        with httpx.Client(base_url=url, timeout=120) as client:
            assert client.post("/admin/reload", json={"path": str(exact)}).status_code == 200
            assert_same_answers(http_answers(client, users[:16]), reference)  # after: as a fresh service
            ivf_reference = fresh_answers(ivf, users[:16])
            assert client.post("/admin/reload", json={"path": str(ivf)}).status_code == 200
            assert_same_answers(http_answers(client, users[:16]), ivf_reference)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
