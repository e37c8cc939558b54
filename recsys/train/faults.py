"""Fault injection for tests: a worker dies at a chosen step, or while it writes a checkpoint.

Tests write ``RUN_DIR/.recsys_faults.json`` before starting a run::

    {"kind": "exit_at_step", "step": 6, "rank": 1}        # die before training step 6
    {"kind": "exit_during_save", "step": 8, "rank": 1}    # die after writing half of step 8's shard

Each fault fires once per run directory (a marker file records it), so a run restarted by
``ray.max_failures`` or ``resume=true`` goes on. Nothing of this is in the user-facing config:
the worker reads the file once at start-up and, without it, the training loop pays one ``None``
check per step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FAULTS_FILE = ".recsys_faults.json"
FIRED_MARKER = ".fault_injected"


@dataclass(frozen=True)
class Fault:
    kind: Literal["exit_at_step", "exit_during_save"]
    step: int
    rank: int
    run_dir: Path
    ray_root: Path  # where Ray registers the run's checkpoints (the run dir, or ray.storage_path/<name>)

    def _fire(self, what: str) -> None:
        marker = self.run_dir / FIRED_MARKER
        marker.write_text(f"rank {self.rank}: {what}\n", encoding="utf-8")
        print(f"fault injection: rank {self.rank} {what}", flush=True)
        os._exit(1)

    def _armed(self, step: int, rank: int, kind: str) -> bool:
        return self.kind == kind and step == self.step and rank == self.rank and not (self.run_dir / FIRED_MARKER).exists()

    def before_step(self, step: int, rank: int, last_saved: int | None) -> None:
        """Die before training step ``step`` (1-based), once Ray has registered the checkpoint of
        step ``last_saved`` (so the restart demonstrably resumes from it, not from an older one)."""
        if self._armed(step, rank, "exit_at_step"):
            if last_saved is not None:
                _wait_for_registration(self.ray_root, last_saved)
            self._fire(f"exits before step {step}")

    def during_save(self, step: int, rank: int, shard_dir: Path, last_saved: int | None) -> None:
        """Die with this rank's shard of step ``step``'s checkpoint half written (once the
        checkpoint of step ``last_saved`` is registered: it is the one the restart must use)."""
        if self._armed(step, rank, "exit_during_save"):
            if last_saved is not None:
                _wait_for_registration(self.ray_root, last_saved)
            for shard in sorted(shard_dir.glob("*.distcp")):
                size = shard.stat().st_size
                with open(shard, "r+b") as fh:
                    fh.truncate(size // 2)
            self._fire(f"killed while writing the checkpoint of step {step}")


def load_fault(run_dir: str | Path, ray_root: str | Path | None = None) -> Fault | None:
    path = Path(run_dir) / FAULTS_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Fault(kind=raw["kind"], step=int(raw["step"]), rank=int(raw["rank"]), run_dir=Path(run_dir),
                 ray_root=Path(ray_root) if ray_root else Path(run_dir))


def _wait_for_registration(run_dir: Path, step: int, timeout: float = 30.0) -> None:
    """Ray registers a reported checkpoint at its next poll of the workers (every few seconds)."""
    from recsys.train.checkpoint import registered_checkpoints

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s == step for s, _ in registered_checkpoints(run_dir)):
            return
        time.sleep(0.2)
