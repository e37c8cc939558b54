"""`recsys train` on a real two-node Ray cluster (``ray.cluster_utils.Cluster``, one machine).

    .venv/bin/python -m pytest tests/integration/test_multinode.py -q

Each node has ONE logical CPU and the run asks one CPU per worker, so two workers cannot share a
node: the test fails if they do (their node ids come from Ray's actor table). The driver is a
``recsys train`` process pointed at the cluster with ``RAY_ADDRESS``, as a user would run it. The
cluster keeps its address file in a private ``RAY_TMPDIR``, so other Ray sessions on this machine
(``ray.init()`` looks for a running cluster there) never connect to it.

One run on two nodes loses its worker node mid-run (``ray.max_failures=1``; a replacement node
joins, as an autoscaler would add one): it restarts from the last checkpoint, finishes, and its
metrics equal those of the same run on ONE node (two workers of half a CPU, packed). Resuming that
run (``resume=true``) spreads the workers over both nodes again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jobs import synth
from recsys.train.checkpoint import SNAPSHOT
from recsys.train.config import RayConfig

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "ctr_synthetic_full.yaml"
# 4,000 rows -> 3,200 training rows: 12 steps per epoch at batch 256; 16 epochs leave the test time
# to see a checkpoint registered and kill the worker node before the run ends.
STEPS = 192
RUN = ["data.batch_size=256", "data.eval_batch_size=1024", "model.over_layers=[32, 1]", "ray.num_workers=2",
       "train.epochs=16", "train.log_every=48", "train.eval_every=96", "train.checkpoint_every=12",
       "train.num_checkpoints=3", "sharding.sharding_types=[table_wise]", "ray.max_failures=1"]
HAS_STORAGE_PATH = "storage_path" in RayConfig.model_fields  # ray.storage_path: shared checkpoint storage


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each; custom resources name them in the actor table's node ids."""
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS")}
    # Short: Ray's socket paths live under it (108-byte limit).
    ray_tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_tmp
    os.environ.pop("RAY_ADDRESS", None)
    # GCS declares a silent node dead after health_check_failure_threshold missed checks of
    # health_check_period_ms (3 s x 5 by default): checked faster, the killed node's workers are
    # seen gone in ~1.5 s instead of ~15 s; nothing else about the run changes.
    fast_health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"recsys_head": 1}, "_system_config": fast_health})
    c.add_node(num_cpus=1, resources={"recsys_worker": 1})
    c.wait_for_nodes()
    yield c
    c.shutdown()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multinode") / "ctr"
    assert synth.main(["ctr", "--out", str(out), "--rows", "4000", "--seed", "3"]) == 0
    return out


def train(cluster, data: Path, run_dir: Path, *overrides: str, during=None) -> dict:
    """``recsys train`` as a separate driver process on the cluster; returns results.json.

    ``during(proc)`` runs in this (main) thread while the driver runs: Ray's node handling needs
    the main thread (signals). The driver's output goes to a file, so it never blocks on a pipe.
    """
    argv = [sys.executable, "-m", "jobs.cli", "train", str(CONFIG), f"data.path={data}", f"run_dir={run_dir}", *RUN, *overrides]
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    log = run_dir.parent / f"{run_dir.name}.driver.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            if during:
                during(proc)
            proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log.read_text()[-4000:]
    return json.loads((run_dir / "results.json").read_text()) | {"_driver_pid": proc.pid}


def worker_nodes(cluster, driver_pid: int) -> list[list[str]]:
    """Node ids of the Ray Train workers of one driver's job, per worker-group attempt (by start)."""
    state = cluster.global_state
    jobs = [j for j in state.job_table() if j["DriverPid"] == driver_pid]
    assert len(jobs) == 1, jobs
    job_id = jobs[0]["JobID"]
    actors = [a for a in state.actor_table(None).values() if a["ActorClassName"] == "RayTrainWorker" and a["JobID"] == job_id]
    actors.sort(key=lambda a: a["StartTime"])
    return [[a["Address"]["NodeID"] for a in actors[i : i + 2]] for i in range(0, len(actors), 2)]


@pytest.fixture(scope="module")
def one_node(cluster, data, tmp_path_factory) -> dict:
    """The same run with two half-CPU workers, which Ray packs onto ONE node."""
    run_dir = tmp_path_factory.mktemp("one_node") / "run"
    results = train(cluster, data, run_dir, "ray.cpus_per_worker=0.5")
    (nodes,) = worker_nodes(cluster, results["_driver_pid"])
    assert len(set(nodes)) == 1, nodes
    return results


def storage(tmp_path: Path) -> tuple[list[str], Path | None]:
    """``ray.storage_path`` (checkpoints on storage every node reaches) once the config has it."""
    if not HAS_STORAGE_PATH:
        return [], None
    shared = tmp_path / "shared"
    return [f"ray.storage_path={shared}"], shared


@pytest.fixture(scope="module")
def two_nodes(cluster, data, one_node, tmp_path_factory) -> tuple[Path, dict, list[int]]:
    """The run on two nodes; once Ray has registered a checkpoint, its worker node is killed and a
    replacement node joins."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    run_dir = tmp / "run"
    overrides, shared = storage(tmp)
    killed_after: list[int] = []

    def kill_worker_node(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            steps = registered_steps([run_dir] + ([shared] if shared else []))
            if steps:
                victim = next(iter(cluster.worker_nodes))
                cluster.remove_node(victim, allow_graceful=False)
                killed_after.extend(steps)
                cluster.add_node(num_cpus=1, resources={"recsys_worker": 1})
                return
            time.sleep(0.1)

    results = train(cluster, data, run_dir, *overrides, during=kill_worker_node)
    return run_dir, results, killed_after


def registered_steps(roots: list[Path]) -> list[int]:
    """Steps of the checkpoints Ray has registered (its checkpoint manager's snapshot) under roots."""
    steps = []
    for root in roots:
        for snapshot in root.rglob(SNAPSHOT) if root.exists() else []:
            try:
                items = json.loads(snapshot.read_text(encoding="utf-8")).get("checkpoint_results") or []
            except (OSError, ValueError):
                continue  # being written
            steps += [int(i["metrics"]["step"]) for i in items if "step" in i.get("metrics", {})]
    return sorted(steps)


def test_two_nodes_survive_a_killed_node_and_match_one_node(cluster, two_nodes, one_node):
    run_dir, results, killed_after = two_nodes
    assert killed_after, "the run ended before a checkpoint was registered: no node was killed"
    attempts = worker_nodes(cluster, results["_driver_pid"])
    assert len(attempts) == 2, attempts  # the first worker group and the one restarted after the kill
    for nodes in attempts:
        assert len(set(nodes)) == 2, f"both workers of an attempt on one node: {nodes}"
    assert set(attempts[0]) != set(attempts[1])  # the killed node's id is gone, its replacement's came
    # Restarted from a checkpoint registered before the kill, not from scratch, and finished.
    assert results["resumed_from_step"] in set(range(12, STEPS, 12)) and results["resumed_from_step"] >= min(killed_after)
    assert results["steps"] == STEPS and results["world_size"] == 2
    curve = [loss for _, loss in results["loss_curve"]]
    assert curve[-1] < curve[0]
    # Same data, seed and steps on one node: the same model, within float tolerance.
    for key in ("auc", "logloss", "val_auc", "val_logloss"):
        assert results[key] == pytest.approx(one_node[key], abs=1e-6), key
    ckpt = Path(results["checkpoint"])
    if HAS_STORAGE_PATH:
        assert str(ckpt).startswith(str(run_dir.parent / "shared")), ckpt
    assert {p.name for p in ckpt.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp", "config.json", "train_state.json"}


@pytest.mark.slow  # a third worker-group start (~80 s here); the default run keeps the placement + killed-node test
def test_resume_on_two_nodes(cluster, data, two_nodes):
    run_dir, first, _ = two_nodes
    overrides, _ = storage(run_dir.parent)
    again = train(cluster, data, run_dir, *overrides, "train.epochs=17", "resume=true", "resume_allow_changes=[train.epochs]")
    assert again["resumed_from_step"] == STEPS and again["steps"] == STEPS + 12
    (nodes,) = worker_nodes(cluster, again["_driver_pid"])
    assert len(set(nodes)) == 2, nodes
