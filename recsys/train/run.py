"""Driver side of a training run: checks before training, the Ray ``TorchTrainer``, ``results.json``.

:func:`prepare` does every check that can fail before a worker starts (config, features named by
the config, columns of every split file against the spec, id ranges, the run directory) and
returns the resolved spec; :func:`launch` runs the workers and writes the results.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys.data import layout
from recsys.data.batch import check_ranges
from recsys.data.loader import validated_files
from recsys.embeddings import EmbeddingPlan, compile_plan
from recsys.features.spec import DatasetSpec, load_spec
from recsys.train.checkpoint import read_train_state
from recsys.train.config import ConfigError, TrainConfig, resolve_spec
from recsys.train.sharding import CPU_SHARDING_TYPES

RESULTS = "results.json"
RAY_RUN_NAME = "ray"  # Ray's experiment folder inside the run directory


@dataclass
class Prepared:
    """Everything a run needs, checked."""

    config: TrainConfig
    spec: DatasetSpec  # resolved: the model is built from it
    counts: dict[str, np.ndarray]
    run_dir: Path
    train_rows: int
    manifest: dict[str, Any]
    notes: list[str]
    plan: EmbeddingPlan  # the embedding plan of ``spec``: physical tables, bytes, ratio


def default_run_dir(config_name: str) -> Path:
    return Path("runs") / f"train-{config_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare(config: TrainConfig, *, config_name: str = "run") -> Prepared:
    """All checks before training, in order of cost; raises ``ValueError`` / ``FileNotFoundError``.

    Raises:
        ConfigError: a feature named by the config is not in the data set; a spec override is
            invalid; a sharding constraint names an unknown table or needs CUDA on CPU.
        ValueError: a split file's columns do not match the spec; an id is out of range; the
            run directory already holds a run (without ``resume=true``) or none (with it).
        FileNotFoundError: no data set / split files at ``data.path``.
    """
    root = Path(config.data.path)
    manifest = layout.read_manifest(root)
    data_spec = load_spec(config.data.spec) if config.data.spec else layout.dataset_spec(root)
    # mixed_dim sizes blocks by id popularity: read the vocab counts only when it is used.
    kinds = {f.compression.kind for f in data_spec.sparse} | {c.kind for c in config.embeddings.compression.values()}
    budget = config.embeddings.budget
    wants_counts = "mixed_dim" in kinds or (budget is not None and budget.method == "mixed_dim")
    counts = layout.vocab_counts(root, data_spec.sparse) if wants_counts else {}
    spec, notes = resolve_spec(config, data_spec, counts)

    errors = []
    plan = compile_plan(spec, counts)
    tables = {t.name for t in plan.tables}
    for name in config.sharding.tables:
        if name not in tables:
            errors.append(f"sharding.tables.{name}: no such table; tables of this plan: {sorted(tables)}")
    if not config.ray.use_gpu:
        types = set(config.sharding.sharding_types) | {t for c in config.sharding.tables.values() for t in (c.sharding_types or [])}
        cuda_only = sorted(types - set(CPU_SHARDING_TYPES))
        if cuda_only:
            errors.append(f"sharding: {cuda_only} need CUDA (ray.use_gpu=true); on CPU use {list(CPU_SHARDING_TYPES)}")
    if errors:
        raise ConfigError("sharding", errors)
    _check_model(config, spec, counts)

    files = {split: validated_files(root, split, spec) for split in layout.SPLITS}
    if config.data.check_ranges:
        for split in layout.SPLITS:
            check_ranges(files[split], spec)
    train_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in files["train"])

    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config_name)
    has_run = (run_dir / RAY_RUN_NAME).exists()
    if config.resume and not has_run:
        raise ValueError(f"resume=true but {run_dir} holds no run to resume; give the run_dir of an earlier run")
    if not config.resume and has_run:
        raise ValueError(f"run_dir {run_dir} already holds a run; pass resume=true to continue it, or a new run_dir")
    return Prepared(config, spec, counts, run_dir.resolve(), train_rows, manifest, notes, plan)


def _check_model(config: TrainConfig, spec: DatasetSpec, counts: dict[str, np.ndarray]) -> None:
    """Build the model on the meta device (no memory), so its errors come before any worker starts."""
    from recsys.embeddings import build_embedding_collection
    from recsys.models.ctr import build_ctr_model

    try:
        collection = build_embedding_collection(spec, device="meta", counts=counts)
        build_ctr_model(config.model, spec, collection, device="meta")
    except ValueError as exc:
        raise ConfigError("model", [f"model: {exc}"]) from None


def _ray_init(config: TrainConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # Local: leave logical CPUs for Ray Data's read tasks next to the training workers.
    need = math.ceil(config.ray.num_workers * config.ray.cpus_per_worker) + 2
    # Ray's Python loggers at RECSYS_RAY_LOG_LEVEL (default ERROR): without the dashboard the
    # Train placement-group cleaner warns every few seconds that the state API is unavailable,
    # and FBGEMM logs every table's full argument list; the step lines are printed, not logged.
    level = os.environ.get("RECSYS_RAY_LOG_LEVEL", "ERROR")
    ray.init(
        num_cpus=max(os.cpu_count() or 1, need),
        include_dashboard=False,
        logging_config=ray.LoggingConfig(log_level=level),
    )


def launch(prepared: Prepared) -> dict[str, Any]:
    """Run the Ray Train job and write ``results.json``; returns the results."""
    import ray
    import ray.data
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recsys.data.loader import ray_dataset
    from recsys.train.loop import train_worker

    config = prepared.config
    root = config.data.path
    _ray_init(config)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the step log line is the progress report
    prepared.run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": config.model_dump(mode="json"),
        "spec": prepared.spec.to_dict(),
        "counts": prepared.counts,
        "train_rows": prepared.train_rows,
        "run_dir": str(prepared.run_dir),
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(
            num_workers=config.ray.num_workers,
            use_gpu=config.ray.use_gpu,
            resources_per_worker={"CPU": config.ray.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if config.ray.use_gpu else "gloo"),
        run_config=RunConfig(
            name=RAY_RUN_NAME,
            storage_path=str(prepared.run_dir),
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.num_checkpoints),
        ),
        datasets={
            "train": ray_dataset(root, "train", prepared.spec, shuffle_files=config.data.shuffle_files),
            "validation": ray_dataset(root, "validation", prepared.spec),
            "test": ray_dataset(root, "test", prepared.spec),
        },
    )
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start
    if result.error is not None:
        raise result.error
    metrics = dict(result.metrics or {})
    final_state = read_train_state(result.checkpoint.path) if result.checkpoint else {}
    plan = prepared.plan
    oracle = prepared.manifest.get("oracle") or {}
    results = {
        "auc": metrics.get("auc"),
        "logloss": metrics.get("logloss"),
        "oracle_auc": oracle.get("auc"),
        "oracle_logloss": oracle.get("logloss"),
        "val_auc": metrics.get("val_auc"),
        "val_logloss": metrics.get("val_logloss"),
        "embedding_bytes": plan.total_bytes,
        "full_table_bytes": plan.full_bytes,
        "compression_ratio": plan.ratio,
        "samples_per_s": metrics.get("samples_per_s"),
        "train_seconds": metrics.get("train_seconds"),
        "wall_seconds": wall,
        "steps": metrics.get("steps"),
        "world_size": metrics.get("world_size"),
        "resumed_from_step": metrics.get("resumed_from_step"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "history": final_state.get("history"),
        "loss_curve": final_state.get("loss_curve"),
        "config": config.model_dump(mode="json"),
        "plan": {
            "tables": [
                {"name": t.name, "rows": t.num_embeddings, "dim": t.embedding_dim, "bytes": t.num_bytes,
                 "features": list(t.feature_names), "per_value": t.per_value}
                for t in plan.tables
            ],
            "features": [
                {"feature": f.feature, "kind": f.kind, "dim": f.output_dim, "transform": f.transform,
                 "combiner": f.combiner, "tables": list(f.tables), "full_bytes": f.full_bytes}
                for f in plan.features
            ],
            "projections": [{"name": p.name, "in_dim": p.in_dim, "out_dim": p.out_dim, "bytes": p.num_bytes} for p in plan.projections],
            "notes": list(plan.notes) + prepared.notes,
        },
        "sharding_plan": final_state.get("sharding_plan"),
        "feature_spec": prepared.spec.to_dict(),
    }
    layout.write_json_atomic(prepared.run_dir / RESULTS, results)
    return results
