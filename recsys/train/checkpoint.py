"""Checkpoints: ``torch.distributed.checkpoint`` (DCP) of the sharded model and optimizers, in Ray.

One checkpoint directory (Ray merges what every worker reports into it)::

    checkpoint_<time>/
      .metadata              DCP's index, written by rank 0
      __<rank>_0.distcp      each rank's shards (its tables, its copy of the dense parameters)
      train_state.json       step, epoch, samples seen, metrics history (rank 0)
      config.json            the resolved training config and feature spec (rank 0)

Atomicity comes from Ray: each worker writes into a fresh local temporary folder and calls
``ray.train.report(checkpoint=...)``; Ray uploads them into the run's storage and registers the
checkpoint (``checkpoint_manager_snapshot.json``) only after every worker's upload finished, so a
crash mid-save leaves the previous checkpoint as the latest one. Restores read it back with
``ray.train.get_checkpoint()`` (worker restarts after a failure, and ``resume=true``).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

TRAIN_STATE = "train_state.json"
CONFIG = "config.json"


def _state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


@contextmanager
def saved_checkpoint(
    model: nn.Module, optimizer: Any, *, rank: int, train_state: dict[str, Any], resolved: dict[str, Any]
) -> Iterator[Path]:
    """Write this rank's part of a checkpoint to a temporary folder, yield it for ``ray.train.report``.

    Collective: every rank must call it at the same step.
    """
    with tempfile.TemporaryDirectory(prefix="recsys-ckpt-") as tmp:
        dcp.save(_state(model, optimizer), checkpoint_id=tmp)
        if rank == 0:
            (Path(tmp) / TRAIN_STATE).write_text(json.dumps(train_state, indent=2), encoding="utf-8")
            (Path(tmp) / CONFIG).write_text(json.dumps(resolved, indent=2), encoding="utf-8")
        yield Path(tmp)


def load_into(path: str | Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Load a checkpoint folder into a sharded model and its optimizer (collective); returns train state.

    The dense optimizer's state (e.g. Adam moments) only exists after a first step, so it is
    created first with ``init_state`` (a zero-gradient step), then overwritten by the saved one.
    """
    optimizer.init_state()
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return json.loads((Path(path) / TRAIN_STATE).read_text(encoding="utf-8"))


def read_train_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / TRAIN_STATE).read_text(encoding="utf-8"))


def read_resolved_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))


def checkpoint_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as plain (unsharded) tensors, without a process group.

    For tests and inspection: ``model.<name>`` and ``optimizer.<...>`` keys.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "state.pt"
        dcp_to_torch_save(str(path), str(out))
        nested = torch.load(out, weights_only=False)

    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, torch.Tensor):
            flat[prefix] = node

    walk("", nested)
    return flat
