"""What a user sees: a tiny `recsys train` prints only recsys's own lines, few of them, and writes
TensorBoard curves (issue 17). Each run is the real command in a subprocess, stdout and stderr together."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import synth
from recsys.tensorboard import read_scalars

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 30

# The library lines issue 17 measured (292 lines for a 10-step CTR run, 1,212 for two-tower).
NOISE = [
    r"GreedyPerfPartitioner",
    r"Successfully loaded: 'fbgemm_gpu",
    r"\[TBE=",
    r"SplitTableBatchedEmbeddingBagsCodegen",
    r"Sharding spec not found",
    r"caching params will be ignored",
    r"Total proposals to search",
    r"^#",  # the planner's storage / perf report
    r"FutureWarning",
    r"UserWarning",
    r"may lead to silently incorrect behavior",
    r"Started training worker group",
    r"Attempting to start training worker group",
    r"Requesting resources",
    r"Setting up process group",
    r"world_rank=0, local_rank=0",
    r"core_worker\.cc",
    r"is_fx_tracing",
    r"View detailed results here",
    r"tensorboard --logdir /tmp/ray",
    r"site-packages/",
    r"^\[",  # "[rank0]:W...", "[2026-... E ...]" and other library log prefixes
    r"^\(\w+ pid=",  # Ray's per-process prefix of forwarded worker output
]


def run_train(config: str, *overrides: str) -> list[str]:
    argv = [sys.executable, "-m", "jobs.cli", "train", str(ROOT / "configs" / config), *overrides]
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:]
    return lines


def assert_quiet(lines: list[str], run_dir: Path) -> None:
    noisy = [line for line in lines if any(re.search(p, line) for p in NOISE)]
    assert noisy == [], "\n".join(noisy[:20])
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    assert lines[0].startswith("model ")
    assert lines[-1] == f"run_dir: {run_dir.resolve()}"


@pytest.fixture(scope="module")
def ctr_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("output") / "ctr"
    assert synth.main(["ctr", "--out", str(data), "--rows", "4000", "--seed", "3"]) == 0
    return data


def test_tiny_ctr_run_prints_its_own_lines_only_and_writes_tensorboard_curves(ctr_data, tmp_path):
    data, run_dir = ctr_data, tmp_path / "run"
    lines = run_train(
        "ctr_synthetic_full.yaml", f"data.path={data}", f"run_dir={run_dir}", "data.batch_size=256",
        "data.eval_batch_size=1024", "train.max_steps=10", "train.log_every=5", "train.eval_every=5",
    )
    assert_quiet(lines, run_dir)
    steps = [line for line in lines if line.startswith("step ") and " loss " in line]
    assert len(steps) == 2, lines
    # rate and ETA on every step line; the last validation metric once there is one
    assert re.match(r"step 5/10 epoch 0 loss [\d.]+ samples/s [\d,]+ ETA \d+:\d\d$", steps[0]), steps[0]
    assert re.match(r"step 10/10 epoch 0 loss [\d.]+ samples/s [\d,]+ ETA 0:00; last validation AUC [\d.]+", steps[1]), steps[1]

    scalars = read_scalars(run_dir / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == [5, 10]
    assert all(v > 0 for _, v in scalars["train/samples_per_s"])
    assert [s for s, _ in scalars["validation/auc"]] == [5, 10]
    assert {"validation/logloss", "test/auc", "test/logloss"} <= scalars.keys()
    import json

    results = json.loads((run_dir / "results.json").read_text())
    assert scalars["test/auc"][-1][1] == pytest.approx(results["auc"], abs=1e-6)


# slow: the CTR run above keeps the line count and the noise patterns in the default run (~25 s here).
@pytest.mark.slow
def test_tiny_two_tower_run_prints_its_own_lines_only(tmp_path):
    data, run_dir = tmp_path / "ia", tmp_path / "run"
    argv = ["interactions", "--out", str(data), "--rows", "5000", "--users", "200", "--items", "100", "--seed", "1",
            "--split", "leave_last_out"]
    assert synth.main(argv) == 0
    lines = run_train(
        "two_tower_synthetic_full.yaml", f"data.path={data}", f"run_dir={run_dir}", "data.batch_size=256",
        "data.eval_batch_size=1024", "train.max_steps=10", "train.log_every=5",
        "model.user_layers=[32, 16]", "model.item_layers=[32, 16]",
    )
    assert_quiet(lines, run_dir)
    assert any(line.startswith("test recall@20 ") for line in lines), lines
    scalars = read_scalars(run_dir / "tensorboard")
    # TensorBoard tags allow [A-Za-z0-9_./-]: recall@20 is written as recall_20
    assert "validation/recall_20" in scalars and "test/recall_20" in scalars and "test/mrr" in scalars


def test_python_api_trains_as_the_command_does(ctr_data, tmp_path, shared_ray):
    import dataclasses
    import json

    import recsys
    from recsys.train.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.epochz"):  # before any worker starts
        recsys.train(ROOT / "configs" / "ctr_synthetic_full.yaml", ["train.epochz=1"])
    run_dir = tmp_path / "api_run"
    run = recsys.train(
        ROOT / "configs" / "ctr_synthetic_full.yaml",
        {"data.path": str(ctr_data), "run_dir": str(run_dir), "data.batch_size": 256, "data.eval_batch_size": 1024,
         "train.max_steps": 6, "train.log_every": 3, "model.over_layers": [32, 1]},
    )
    assert isinstance(run, recsys.RunResult)
    assert run.run_dir == run_dir.resolve() and run.results_path == run_dir.resolve() / "results.json"
    on_disk = json.loads(run.results_path.read_text())
    assert run.metrics["auc"] == on_disk["auc"] and run.metrics["steps"] == 6 == on_disk["steps"]
    assert run.config.train.max_steps == 6 and list(run.config.model.over_layers) == [32, 1]
    assert [s for s, _ in read_scalars(run.tensorboard_dir)["train/loss"]] == [3, 6]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.run_dir = tmp_path  # type: ignore[misc]
