"""The real service under bounded concurrent load: 0 errors, micro-batching, hot swap with no failed request,
a corrupt bundle refused while the old one keeps serving; SIGHUP to a real `recsys serve` process reloads."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import httpx
import pytest
import torch

from serving.app import ServeConfig, create_app
from serving.bundle import load_bundle
from serving.export import export_bundle, load_trained_run
from serving.testing import ServerThread, make_run, user_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving_load")
    data, run_dir = make_run(root)
    return data, run_dir, export_bundle(run_dir, root / "exact"), export_bundle(run_dir, root / "ivf", index="ivf")


@pytest.fixture(scope="module")
def server(run):
    with ServerThread(create_app(run[2], ServeConfig(max_batch=16))) as s:
        yield s


def users_of(run, limit=64):
    trained = load_trained_run(run[1])
    return user_rows(run[0], trained.spec, trained.model.user_tower.feature_names, limit)


async def _load(url, users, seconds=None, requests=None, concurrency=16):
    """Bounded loop: ``concurrency`` workers until ``requests`` are sent; returns (statuses, bundles)."""
    statuses, bundles = [], []
    counter = iter(range(requests))

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(w):
            for i in counter:
                r = await client.post("/v1/retrieve", json={"user": users[i % len(users)], "k": 50})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    bundles.append(r.json()["bundle"])

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return statuses, bundles


def test_concurrent_load_has_no_errors_and_is_micro_batched(run, server):
    users, _ = users_of(run, 64)
    statuses, _ = asyncio.run(_load(server.url, users, requests=200, concurrency=16))
    assert len(statuses) == 200 and set(statuses) == {200}
    text = httpx.get(f"{server.url}/metrics").text
    sizes = [line for line in text.splitlines() if line.startswith("recsys_batch_size_count")]
    count = float(sizes[0].split()[-1])
    assert count < 200  # some queries shared a tower forward and a search


def test_hot_swap_under_load_and_corrupt_bundles_refused(run, tmp_path):
    data, run_dir, exact, hnsw = run  # hnsw: the ivf bundle here
    users, _ = users_of(run, 64)
    bad = tmp_path / "bad"
    shutil.copytree(hnsw, bad)
    (bad / "item_vectors.npy").write_bytes(b"\x93NUMPY garbage")
    with ServerThread(create_app(exact)) as s:
        old = httpx.get(f"{s.url}/readyz").json()["bundle"]
        new = load_bundle(hnsw).bundle_id

        async def scenario():
            load = asyncio.create_task(_load(s.url, users, requests=240, concurrency=8))
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as client:
                refused = await client.post("/admin/reload", json={"path": str(bad)})
                swapped = await client.post("/admin/reload", json={"path": str(hnsw)})
            return await load, refused, swapped

        (statuses, bundles), refused, swapped = asyncio.run(scenario())
        assert set(statuses) == {200} and len(statuses) == 240  # no failed request across the swap
        assert refused.status_code == 409 and "item_vectors.npy" in refused.json()["reason"] and refused.json()["bundle"] == old
        assert swapped.status_code == 200 and swapped.json() == {"ok": True, "bundle": new, "previous": old}
        assert set(bundles) <= {old, new} and bundles[-1] == new
        assert httpx.post(f"{s.url}/v1/retrieve", json={"user": users[0], "k": 5}).json()["bundle"] == new
        assert httpx.get(f"{s.url}/v1/metadata").json()["index"]["kind"] == "ivf"
        text = httpx.get(f"{s.url}/metrics").text
        assert 'recsys_reloads_total{result="refused"} 1.0' in text and 'recsys_reloads_total{result="ok"} 1.0' in text




def _wait_for(predicate, what, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sighup_reloads_a_real_recsys_serve_and_a_corrupt_bundle_leaves_the_old_serving(run, tmp_path):
    """`recsys serve current` where current is a symlink: deploy = repoint it, then SIGHUP (the process reloads its path)."""
    from serving.loadgen import start_service
    from serving.testing import free_port

    data, run_dir, exact, ivf = run
    users, _ = users_of(run, 4)
    bad = tmp_path / "bad"
    shutil.copytree(ivf, bad)
    (bad / "item_vectors.npy").write_bytes(b"\x93NUMPY garbage")

    current = tmp_path / "current"
    current.symlink_to(exact)

    def deploy(target):
        link = tmp_path / "next"
        link.symlink_to(target)
        os.replace(link, current)  # atomic: the path always names a whole bundle

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(current, port)
    try:
        old, new = load_bundle(exact).bundle_id, load_bundle(ivf).bundle_id
        assert httpx.get(f"{url}/readyz").json()["bundle"] == old
        deploy(ivf)
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: httpx.get(f"{url}/readyz").json()["bundle"] == new, "the new bundle after SIGHUP")
        r = httpx.post(f"{url}/v1/retrieve", json={"user": users[0], "k": 5})
        assert r.status_code == 200 and r.json()["bundle"] == new and len(r.json()["items"]) == 5
        assert httpx.get(f"{url}/v1/metadata").json()["index"]["kind"] == "ivf"

        deploy(bad)
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: 'recsys_reloads_total{result="refused"} 1.0' in httpx.get(f"{url}/metrics").text, "the refused reload")
        r = httpx.post(f"{url}/v1/retrieve", json={"user": users[0], "k": 5})
        assert r.status_code == 200 and r.json()["bundle"] == new  # the last good bundle keeps serving
        assert 'recsys_reloads_total{result="ok"} 1.0' in httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "SIGHUP reload: {'ok': True" in out
    assert "SIGHUP reload: {'ok': False" in out and "item_vectors.npy" in out
