"""The training loop that runs on every Ray Train worker (:func:`train_worker`).

Per worker: build the CTR model with its tables on ``meta`` -> fused table optimizer in
backward -> TorchRec's planner -> ``DistributedModelParallel`` -> restore the latest Ray
checkpoint if any -> steps over this worker's Ray Data shard of the training split, with
validation AUC / logloss every ``eval_every`` steps, checkpoints every ``checkpoint_every``
steps, and at the end the test split's metrics and a final checkpoint.

Every rank runs the same number of forward passes (sharded lookups are collectives): before each
batch the ranks agree with one ``all_reduce`` that all of them still have one. Metrics are
exact: predictions of all ranks are gathered and scored with :mod:`recsys.metrics`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed.planner.types import ParameterConstraints

from recsys import metrics
from recsys.data.batch import Batch
from recsys.data.loader import iter_batches
from recsys.embeddings import build_embedding_collection
from recsys.features.spec import DatasetSpec, spec_from_dict
from recsys.models.ctr import CTRTask, build_ctr_model
from recsys.train import checkpoint, sharding
from recsys.train.config import TrainConfig

FAULT_MARKER = ".fault_injected"


def build_task(config: TrainConfig, spec: DatasetSpec, counts: dict[str, np.ndarray] | None, device: torch.device) -> CTRTask:
    """The unsharded model: tables on ``meta`` (DMP materialises shards), dense layers on ``device``."""
    torch.manual_seed(config.train.seed)  # same dense init on every rank (DDP also broadcasts)
    collection = build_embedding_collection(spec, device="meta", counts=counts)
    sharding.materialize_dense(collection, device)
    model = build_ctr_model(config.model, spec, collection, device=device)
    return CTRTask(model)


def constraints_for(config: TrainConfig, tables: list[str], per_value: set[str] = frozenset()) -> dict[str, ParameterConstraints]:
    """Planner constraints: the global sharding types for every table, per-table overrides on top.

    Tables of an ``EmbeddingCollection`` (``per_value``) never get ``data_parallel``: TorchRec's
    data-parallel EC fails on CPU to split its per-value output (torchrec 1.8).
    """
    out = {}
    for name in tables:
        table = config.sharding.tables.get(name)
        types = (table.sharding_types if table and table.sharding_types else None) or config.sharding.sharding_types
        if name in per_value and len(types) > 1:
            types = [t for t in types if t != "data_parallel"]
        kernels = table.compute_kernels if table and table.compute_kernels else None
        out[name] = ParameterConstraints(sharding_types=list(types), compute_kernels=kernels)
    return out


def _all_have(has: bool, device: torch.device) -> bool:
    """True when every rank has a batch (one tiny all_reduce)."""
    flag = torch.tensor([1 if has else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _synced_batches(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """Yield batches while every rank still has one (equal shards make this all of them)."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        if not _all_have(batch is not None, device):
            return
        yield batch.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, spec: DatasetSpec, batch_size: int, device: torch.device) -> dict[str, float]:
    """Exact AUC and logloss over all ranks' shards of a split (predictions are gathered)."""
    model.eval()
    probs, labels = [], []
    for batch in _synced_batches(iter_batches(data, spec, batch_size), device):
        _, logits = model(batch)
        probs.append(torch.sigmoid(logits).float().cpu())  # (B,)
        labels.append(batch.labels.cpu())
    model.train()
    local = (torch.cat(probs).numpy() if probs else np.empty(0, np.float32), torch.cat(labels).numpy() if labels else np.empty(0, np.float32))
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    p = np.concatenate([g[0] for g in gathered])
    y = np.concatenate([g[1] for g in gathered])
    return {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p), "rows": int(y.size)}


def train_worker(payload: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``payload`` from :func:`recsys.train.run.launch`.

    Keys: ``config`` (resolved TrainConfig as JSON), ``spec`` (the resolved feature spec),
    ``counts`` (vocab counts for mixed_dim), ``train_rows``, ``run_dir`` (absolute).
    """
    import ray.train

    config = TrainConfig.model_validate(payload["config"])
    spec = spec_from_dict(payload["spec"], "resolved spec")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.ray.use_gpu:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(config.ray.cpus_per_worker)))
    log = _log if rank == 0 else (lambda *a, **k: None)

    per_rank_batch = max(1, config.data.batch_size // world)
    per_rank_eval = max(1, config.data.eval_batch_size // world)
    steps_per_epoch = payload["train_rows"] // world // per_rank_batch  # equal shards, full batches only
    if steps_per_epoch < 1:
        raise ValueError(
            f"data.batch_size {config.data.batch_size} is larger than the training split "
            f"({payload['train_rows']} rows over {world} workers); use a smaller batch"
        )
    total_steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total_steps = min(total_steps, config.train.max_steps)

    # -- model, optimizers, plan --------------------------------------------------------------
    task = build_task(config, spec, payload.get("counts"), device)
    emb = config.optimizer.embedding
    sharding.apply_fused_optimizer(task, emb.kind, emb.lr, emb.eps, emb.weight_decay)
    table_specs = task.model.sparse.plan().tables
    tables = [t.name for t in table_specs]
    per_value = {t.name for t in table_specs if t.per_value}
    plan = sharding.plan_sharding(
        task,
        world_size=world,
        local_world_size=ctx.get_local_world_size(),
        compute_device=device.type,
        batch_size=per_rank_batch,
        constraints=constraints_for(config, tables, per_value),
    )
    model = sharding.shard_model(task, plan, device)
    dense = config.optimizer.dense
    optimizer = sharding.build_optimizer(model, dense.kind, dense.lr, dense.eps, dense.weight_decay)
    plan_rows = sharding.describe_plan(plan)

    state: dict[str, Any] = {"step": 0, "samples": 0, "train_seconds": 0.0, "history": [], "loss_curve": [], "resumed_from_step": None}
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as path:
            saved = checkpoint.load_into(path, model, optimizer)
        state.update(saved)
        state["resumed_from_step"] = saved["step"]
        log(f"resumed from checkpoint at step {saved['step']} ({restored.path})")
    log(
        f"world size {world}; batch {config.data.batch_size} ({per_rank_batch} per worker); "
        f"{steps_per_epoch} steps per epoch; training to step {total_steps}"
    )
    resolved = {"config": payload["config"], "spec": payload["spec"]}

    def report(metrics_: dict[str, Any], with_checkpoint: bool) -> None:
        if not with_checkpoint:
            ray.train.report(metrics_)
            return
        with checkpoint.saved_checkpoint(model, optimizer, rank=rank, train_state=state, resolved=resolved) as path:
            ray.train.report(metrics_, checkpoint=ray.train.Checkpoint.from_directory(str(path)))

    # -- steps --------------------------------------------------------------------------------
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")
    step = state["step"]
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        batches = iter_batches(
            train_shard,
            spec,
            per_rank_batch,
            drop_last=True,
            local_shuffle_buffer_size=config.data.shuffle_buffer_rows or None,
            local_shuffle_seed=config.train.seed + epoch if config.data.shuffle_buffer_rows else None,
        )
        it = iter(batches)
        for _ in range(skip):  # resuming mid-epoch: continue at the saved step's position
            next(it, None)
        step_start = time.perf_counter()
        for batch in _synced_batches(it, device):
            _maybe_inject_fault(config, payload["run_dir"], step + 1, rank, world)
            loss, _ = model(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            now = time.perf_counter()
            state["train_seconds"] += now - step_start
            state["samples"] += per_rank_batch * world
            state["step"] = step
            window_loss += loss.item()
            window_steps += 1

            if step % config.train.log_every == 0 or step == total_steps:
                mean_loss = torch.tensor([window_loss / window_steps], device=device)
                dist.all_reduce(mean_loss)
                rate = window_steps * per_rank_batch * world / max(now - window_start, 1e-9)
                state["loss_curve"].append([step, mean_loss.item() / world])
                log(f"step {step}/{total_steps} epoch {epoch} loss {mean_loss.item() / world:.4f} samples/s {rate:,.0f}")
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()

            end_of_epoch = step % steps_per_epoch == 0
            do_eval = (config.train.eval_every and step % config.train.eval_every == 0) or (
                not config.train.eval_every and end_of_epoch
            )
            do_ckpt = bool(config.train.checkpoint_every and step % config.train.checkpoint_every == 0)
            if step == total_steps:
                do_eval = do_ckpt = False  # the final report below does both
            if do_eval or do_ckpt:
                row: dict[str, Any] = {"step": step, "epoch": epoch}
                if do_eval:
                    val = evaluate(model, val_shard, spec, per_rank_eval, device)
                    row.update({"val_auc": val["auc"], "val_logloss": val["logloss"]})
                    log(f"step {step} validation AUC {val['auc']:.4f} logloss {val['logloss']:.4f} ({val['rows']:,} rows)")
                    state["history"].append(row)
                report(dict(row), with_checkpoint=do_ckpt)
                window_start = time.perf_counter()
            if step >= total_steps:
                break
            step_start = time.perf_counter()
        else:
            if step % steps_per_epoch:  # a shard ran dry early (should not happen with equal splits)
                log(f"epoch {epoch} ended at step {step}, before its {steps_per_epoch} steps")
                step = (epoch + 1) * steps_per_epoch
                state["step"] = step

    # -- final evaluation and checkpoint ------------------------------------------------------
    val = evaluate(model, val_shard, spec, per_rank_eval, device)
    test = evaluate(model, ray.train.get_dataset_shard("test"), spec, per_rank_eval, device)
    log(f"validation AUC {val['auc']:.4f} logloss {val['logloss']:.4f}; test AUC {test['auc']:.4f} logloss {test['logloss']:.4f}")
    state["history"].append({"step": step, "val_auc": val["auc"], "val_logloss": val["logloss"]})
    final = {
        "final": True,
        "step": step,
        "steps": step,
        "auc": test["auc"],
        "logloss": test["logloss"],
        "test_rows": test["rows"],
        "val_auc": val["auc"],
        "val_logloss": val["logloss"],
        "samples": state["samples"],
        "train_seconds": state["train_seconds"],
        "samples_per_s": state["samples"] / state["train_seconds"] if state["train_seconds"] else float("nan"),
        "world_size": world,
        "resumed_from_step": state["resumed_from_step"],
    }
    state["sharding_plan"] = plan_rows  # travels in the checkpoint's train_state.json, not in the logs
    report(final, with_checkpoint=True)


def _log(message: str) -> None:
    """One line on the driver's console (Ray Train's patched ``print`` would tee it twice)."""
    print(message, file=sys.__stdout__, flush=True)


def _maybe_inject_fault(config: TrainConfig, run_dir: str, step: int, rank: int, world: int) -> None:
    """TESTS ONLY (``train.fail_at_step``): one worker process dies once, at the given step."""
    if config.train.fail_at_step != step or rank != (1 if world > 1 else 0):
        return
    marker = Path(run_dir) / FAULT_MARKER
    if marker.exists():
        return
    marker.write_text(f"worker rank {rank} killed at step {step}\n", encoding="utf-8")
    # Ray registers a reported checkpoint at its next poll of the workers (every 2 s): wait for it,
    # so the restart demonstrably resumes from the last checkpoint rather than from scratch.
    time.sleep(5)
    print(f"fault injection: rank {rank} exits at step {step}", flush=True)
    os._exit(1)
