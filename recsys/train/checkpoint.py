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

Before a checkpoint is loaded it is verified (:func:`verify_checkpoint`: both JSON files parse,
DCP's index loads, and every byte range the index names exists in its shard file), and a damaged
one is passed over for the newest intact one (:func:`newest_intact`), with the reason printed.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

TRAIN_STATE = "train_state.json"
CONFIG = "config.json"


RAY_RUN_NAME = "ray"  # Ray's experiment folder inside the run directory
SNAPSHOT = "checkpoint_manager_snapshot.json"


def _state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


@contextmanager
def saved_checkpoint(
    model: nn.Module,
    optimizer: Any,
    *,
    rank: int,
    train_state: dict[str, Any],
    resolved: dict[str, Any],
    after_write: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Write this rank's part of a checkpoint to a temporary folder, yield it for ``ray.train.report``.

    Collective: every rank must call it at the same step. ``after_write(folder)`` runs once the
    shard is written (the tests' fault hook).
    """
    with tempfile.TemporaryDirectory(prefix="recsys-ckpt-") as tmp:
        dcp.save(_state(model, optimizer), checkpoint_id=tmp)
        if after_write is not None:
            after_write(Path(tmp))
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


# -- finding and verifying checkpoints (driver side, no process group) ------------------------


def verify_checkpoint(path: str | Path) -> str | None:
    """``None`` if the checkpoint folder is complete, else the reason it is not (one line).

    Checks that ``train_state.json`` and ``config.json`` parse, that DCP's ``.metadata`` loads, and
    that every shard file it names exists and holds every byte range the index points into (a
    truncated or missing ``__<rank>_0.distcp`` fails here, not inside ``dcp.load``).
    """
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    for name in (TRAIN_STATE, CONFIG):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError) as exc:
            return f"{name} is unreadable ({type(exc).__name__}: {exc})"
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except FileNotFoundError:
        return ".metadata is missing"
    except Exception as exc:  # a truncated pickle raises EOFError / UnpicklingError / ...
        return f".metadata is unreadable ({type(exc).__name__})"
    need: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        need[info.relative_path] = max(need.get(info.relative_path, 0), end)
    for rel, end in sorted(need.items()):
        shard = path / rel
        if not shard.exists():
            return f"{rel} is missing"
        size = shard.stat().st_size
        if size < end:
            return f"{rel} is truncated ({size:,} of at least {end:,} bytes)"
    return None


def checkpoint_step(path: str | Path) -> int | None:
    """The step a checkpoint folder was written at (``None`` if its train state is unreadable)."""
    try:
        return int(read_train_state(path)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def registered_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the checkpoints Ray registered for a run directory, oldest first."""
    root = Path(run_dir) / RAY_RUN_NAME
    try:
        snapshot = json.loads((root / SNAPSHOT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for item in snapshot.get("checkpoint_results") or []:
        folder = root / item["checkpoint_dir_name"]
        step = item.get("metrics", {}).get("step")
        if step is None:
            step = checkpoint_step(folder)
        if step is not None and folder.exists():
            out.append((int(step), folder))
    return sorted(out)


def checkpoint_folders(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every checkpoint folder under a run directory (registered or not)."""
    root = Path(run_dir) / RAY_RUN_NAME
    out = []
    for folder in sorted(root.glob("checkpoint_*")) if root.is_dir() else []:
        if not folder.is_dir():  # checkpoint_manager_snapshot.json
            continue
        step = checkpoint_step(folder)
        out.append((step if step is not None else -1, folder))
    return sorted(out)


def newest_intact(run_dir: str | Path) -> tuple[tuple[int, Path] | None, list[str]]:
    """The newest intact checkpoint of a run directory and one line per damaged newer one."""
    skipped = []
    for step, folder in reversed(checkpoint_folders(run_dir)):
        reason = verify_checkpoint(folder)
        if reason is None:
            return (step, folder), skipped
        skipped.append(f"checkpoint {folder} is damaged: {reason}")
    return None, skipped
