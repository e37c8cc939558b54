"""Driver side of a training run: checks before training, the Ray ``TorchTrainer``, ``results.json``.

:func:`prepare` does every check that can fail before a worker starts (config, features named by
the config, columns of every split file against the spec, id ranges, the run directory) and
returns the resolved spec; :func:`launch` runs the workers and writes the results.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys.data import layout
from recsys.data.batch import check_ranges
from recsys.data.loader import validated_files
from recsys.embeddings import EmbeddingPlan
from recsys.embeddings.methods.registry import needs_counts
from recsys.features.spec import DatasetSpec, load_spec
from recsys.train import checkpoint, checks
from recsys.train.checkpoint import RAY_RUN_NAME, read_train_state
from recsys.train.config import ConfigError, TrainConfig, resolve_spec
from recsys.train.sharding import CPU_SHARDING_TYPES
from recsys.train.tasks import task_for

RESULTS = "results.json"


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
    files: dict[str, list[Path]] = field(default_factory=dict)  # per split, its parquet files
    rows: dict[str, int] = field(default_factory=dict)  # per split, its rows
    resume_from: Path | None = None  # the newest intact checkpoint (resume=true)
    warnings: list[str] = field(default_factory=list)  # printed once, loudly, before training


def storage_root(config: TrainConfig, run_dir: Path) -> Path:
    """The folder Ray's experiment ``ray/`` (checkpoints) lives in: ``ray.storage_path / <run_dir
    name>`` on shared storage for multi-node runs, else the run directory itself."""
    if config.ray.storage_path:
        return (Path(config.ray.storage_path) / Path(run_dir).resolve().name).resolve()
    return Path(run_dir).resolve()


def default_run_dir(config_name: str) -> Path:
    return Path("runs") / f"train-{config_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare(config: TrainConfig, *, config_name: str = "run") -> Prepared:
    """All checks before training, in order of cost; raises ``ValueError`` / ``FileNotFoundError``.

    Raises:
        ConfigError: a feature named by the config is not in the data set; a spec override is
            invalid; a sharding constraint names an unknown table or needs CUDA on CPU.
        ValueError: ``run_dir`` is a file; a split is empty (or has fewer rows than workers); the
            batch does not divide by the workers or exceeds the data; a split file's columns do not
            match the spec; a label is not 0/1; an id is out of range or a dense value not finite;
            the run directory already holds a run (without ``resume=true``) or no checkpoint (with
            it); a resumed config differs from its checkpoint's.
        FileNotFoundError: no data set / split files at ``data.path``.
    """
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config_name)
    checks.check_run_dir(run_dir)
    root = Path(config.data.path)
    manifest = layout.read_manifest(root)
    data_spec = load_spec(config.data.spec) if config.data.spec else layout.dataset_spec(root)
    # Methods that size by id popularity (the registry says which) read the vocab counts; others do not.
    kinds = {f.compression.kind for f in data_spec.sparse} | {c.kind for c in config.embeddings.compression.values()}
    budget = config.embeddings.budget
    wants_counts = needs_counts(kinds, budget.method if budget is not None else None)
    counts = layout.vocab_counts(root, data_spec.sparse) if wants_counts else {}
    spec, notes = resolve_spec(config, data_spec, counts)
    spec, counts = _pin_mixed_dim(spec, counts, notes)

    errors = []
    try:
        plan = task_for(config.model.arch, root).plan(spec, counts, config.model)
    except ValueError as exc:  # e.g. a two-tower spec with a tower without features
        raise ConfigError("model", [f"model: {exc}"]) from None
    tables = {t.name for t in plan.tables}
    for name in config.sharding.tables:
        if name not in tables:
            errors.append(f"sharding.tables.{name}: no such table; tables of this plan: {sorted(tables)}")
    if not config.ray.use_gpu:
        types = set(config.sharding.sharding_types) | {t for c in config.sharding.tables.values() for t in (c.sharding_types or [])}
        cuda_only = sorted(types - set(CPU_SHARDING_TYPES))
        if cuda_only:
            errors.append(f"sharding: {cuda_only} need CUDA (ray.use_gpu=true); on CPU use {list(CPU_SHARDING_TYPES)}")
    for t in plan.tables:
        if not t.per_value:
            continue
        table = config.sharding.tables.get(t.name)
        types = (table.sharding_types if table and table.sharding_types else None) or config.sharding.sharding_types
        if list(types) == ["data_parallel"]:
            where = f"sharding.tables.{t.name}.sharding_types" if table and table.sharding_types else "sharding.sharding_types"
            errors.append(
                f"{where}: got ['data_parallel'] for per-value table {t.name} (an EmbeddingCollection: qr mult or weighted "
                "multi_hash on a multi-valued feature); TorchRec's data-parallel EmbeddingCollection fails on CPU "
                "(pytorch/torchrec#1255): allow table_wise or column_wise for it"
            )
    if errors:
        raise ConfigError("sharding", errors)
    _check_model(config, spec, counts)

    files = {split: validated_files(root, split, spec) for split in layout.SPLITS}
    rows = checks.split_rows(files)
    checks.check_splits(rows, batch_size=config.data.batch_size, num_workers=config.ray.num_workers, root=root)
    task_for(config.model.arch, root).check_data(files, spec, root)
    warnings = []
    if config.data.check_ranges:
        for split in layout.SPLITS:
            check_ranges(files[split], spec)
        checks.check_dense_finite(files, spec)
    else:
        warnings.append(
            "WARNING: data.check_ranges=false: ids are NOT checked against [0, cardinality) and dense values "
            "not for NaN / inf. FBGEMM reads an out-of-range id as row 0 without any error, silently training "
            "the wrong rows; leave data.check_ranges on unless this data set was checked before."
        )

    resume_from = None
    root_of_checkpoints = storage_root(config, run_dir)
    registered = checkpoint.checkpoint_folders(root_of_checkpoints)
    if config.resume:
        if not registered:
            raise ValueError(
                f"resume=true but {root_of_checkpoints / RAY_RUN_NAME} holds no checkpoint to resume; give the run_dir "
                "(and ray.storage_path) of an earlier run"
            )
        chosen, damaged = checkpoint.newest_intact(root_of_checkpoints)
        notes.extend(damaged)
        if chosen is None:
            raise ValueError(f"resume=true but no checkpoint under {root_of_checkpoints / RAY_RUN_NAME} is intact: {'; '.join(damaged)}")
        step, resume_from = chosen
        if damaged:
            notes.append(f"resuming from the newest intact checkpoint instead: {resume_from} (step {step})")
        saved = checkpoint.read_resolved_config(resume_from)
        notes.extend(
            checks.check_resume(resume_from, saved, config.model_dump(mode="json"), spec.to_dict(), config.resume_allow_changes)
        )
    elif registered:
        raise ValueError(f"run_dir {run_dir} already holds a run; pass resume=true to continue it, or a new run_dir")
    return Prepared(
        config, spec, counts, run_dir.resolve(), rows["train"], manifest, notes, plan,
        files=files, rows=rows, resume_from=resume_from.resolve() if resume_from else None, warnings=warnings,
    )


def _pin_mixed_dim(spec: DatasetSpec, counts: dict[str, np.ndarray], notes: list[str]) -> tuple[DatasetSpec, dict[str, np.ndarray]]:
    """Write every mixed_dim feature's block boundaries and dims into the spec.

    They are derived from the data set's vocabulary counts; once in the resolved spec (which
    travels into the workers and every checkpoint's ``config.json``), the model is rebuilt without
    the counts (for Criteo ~270 MB that no longer travel in the Ray payload).
    """
    from recsys.embeddings.builder import mixed_dim_layout

    if not counts:
        return spec, counts
    raw = spec.to_dict()
    pinned = []
    for f, item in zip(spec.features, raw["features"]):
        c = getattr(f, "compression", None)
        if c is None or c.kind != "mixed_dim" or c.block_dims is not None:
            continue
        starts, dims, source = mixed_dim_layout(f, c, counts.get(f.name))
        item["compression"] = {**item["compression"], "block_boundaries": list(starts[1:]), "block_dims": list(dims)}
        pinned.append(f"{f.name} {dims} (from {source})")
    if not pinned:
        return spec, counts
    notes.append("mixed_dim block dims written into the resolved spec: " + "; ".join(pinned))
    return DatasetSpec.model_validate(raw), {}


def _check_model(config: TrainConfig, spec: DatasetSpec, counts: dict[str, np.ndarray]) -> None:
    """Build the task's model on the meta device (no memory), so its errors come before any worker starts."""
    import torch

    try:
        task_for(config.model.arch, config.data.path).build(config, spec, counts, torch.device("meta"))
    except ValueError as exc:
        text = str(exc)
        field, sep, _ = text.partition(":")
        # "dense_layers: the last size ..." -> "model.dense_layers: ..." (the config's dotted path)
        if text.startswith("model."):
            line = text
        elif sep and field.isidentifier():
            line = f"model.{text}"
        else:
            line = f"model: {text}"
        raise ConfigError("model", [line]) from None


def _ray_init(config: TrainConfig) -> bool:
    """Connect to a cluster or start a local Ray; True if this call did either."""
    import ray

    if ray.is_initialized():
        return False
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    from recsys.console import ray_log_level, ray_runtime_env

    if address:
        ray.init(address=address, runtime_env=ray_runtime_env())
        return True
    # Local: a Ray instance of this run's own (address="local"), even when other Ray instances run
    # on the machine (without it ray.init() refuses: "Found multiple active Ray instances"); a
    # couple of logical CPUs spare next to the training workers.
    need = math.ceil(config.ray.num_workers * config.ray.cpus_per_worker) + 2
    # Ray's Python loggers at RECSYS_RAY_LOG_LEVEL (default ERROR): without the dashboard the
    # Train placement-group cleaner warns every few seconds that the state API is unavailable,
    # and FBGEMM logs every table's full argument list; the step lines are printed, not logged.
    level = ray_log_level()
    # Ray Train's preemption watcher is for cloud nodes that get drained; a local instance has
    # none, and its actor's start logs a C++ ERROR line ("has constructor arguments in the object
    # store and max_restarts > 0") on every run.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, need),
        include_dashboard=False,
        logging_config=ray.LoggingConfig(log_level=level),
        runtime_env=ray_runtime_env(),  # recsys.console.setup in every worker before its imports
    )
    return True


def _bytes_by_tower(plan: EmbeddingPlan, spec: DatasetSpec) -> dict[str, dict[str, Any]]:
    """Embedding bytes, full-table bytes and ratio per tower (``context`` for CTR features): a
    table counts for the tower of the features that read it."""
    tower_of = {f.name: f.tower for f in spec.sparse}
    table_tower = {t: tower_of.get(f.feature, "context") for f in plan.features for t in f.tables}
    out: dict[str, dict[str, Any]] = {}

    def entry(tower: str) -> dict[str, Any]:
        return out.setdefault(tower, {"embedding_bytes": 0, "full_table_bytes": 0})

    for f in plan.features:
        entry(tower_of.get(f.feature, "context"))["full_table_bytes"] += f.full_bytes or 0
    for t in plan.tables:
        entry(table_tower.get(t.name, "context"))["embedding_bytes"] += t.num_bytes
    for p in plan.projections:
        owner = next((tower_of[f.feature] for f in plan.features if p.name.startswith(f.feature)), "context")
        entry(owner)["embedding_bytes"] += p.num_bytes
    for e in out.values():
        e["compression_ratio"] = e["embedding_bytes"] / e["full_table_bytes"] if e["full_table_bytes"] else None
    return out


def _stopped_reason(error: BaseException) -> str | None:
    """The message of a worker's :class:`~recsys.train.loop.TrainingStopped`, if that is what failed."""
    from recsys.train.loop import TrainingStopped

    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, TrainingStopped):
            return str(exc)
        todo.extend(getattr(exc, "worker_failures", {}).values())
        todo.extend([getattr(exc, "cause", None), exc.__cause__, exc.__context__])
        if "TrainingStopped" in type(exc).__name__ or "TrainingStopped:" in str(exc):
            text = str(exc)
            tail = text[text.rfind("TrainingStopped:") + len("TrainingStopped:"):] if "TrainingStopped:" in text else text
            return tail.strip().splitlines()[0]
    return None


def launch(prepared: Prepared, *, shutdown: bool = True) -> dict[str, Any]:
    """Run the Ray Train job and write ``results.json``; returns the results.

    Args:
        prepared: from :func:`prepare`.
        shutdown: shut Ray down afterwards if this call started it (so nothing Ray prints comes
            after the caller's summary).

    Raises:
        ValueError: the run stopped for a reason the workers named (e.g. a non-finite loss).
    """
    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from recsys import console
    from recsys.train.loop import PROGRESS_FILE, train_worker

    config = prepared.config
    # A bar on the driver's terminal, fed by rank 0's progress.json (on this machine's disk only)
    use_bar = console.use_bar() and not (config.ray.address or os.environ.get("RAY_ADDRESS"))
    started = _ray_init(config)
    prepared.run_dir.mkdir(parents=True, exist_ok=True)
    ray_root = storage_root(config, prepared.run_dir)
    ray_root.mkdir(parents=True, exist_ok=True)
    stale = ray_root / RAY_RUN_NAME
    if not config.resume and stale.exists():  # a run that failed before its first checkpoint
        stale.rename(ray_root / f"{RAY_RUN_NAME}.failed-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    payload = {
        "config": config.model_dump(mode="json"),
        "spec": prepared.spec.to_dict(),
        "counts": prepared.counts,
        "files": {split: [str(p.resolve()) for p in paths] for split, paths in prepared.files.items()},
        "run_dir": str(prepared.run_dir),
        "data_root": str(Path(config.data.path).resolve()),  # workers run in Ray's own working directory
        "ray_root": str(ray_root),
        "resume_from": str(prepared.resume_from) if prepared.resume_from else None,
        # rank 0 prints step lines, or feeds the driver's bar through progress.json on a terminal
        "progress": "bar" if use_bar else "lines",
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
            storage_path=str(ray_root),
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=checkpoint_config(config),
            # recsys.console: Ray Train's own lines at ERROR, the workers' library noise silenced
            # before they import TorchRec (RECSYS_LOG=debug shows everything).
            logging_config=ray.train.LoggingConfig(log_level=console.ray_log_level()),
            worker_runtime_env=console.worker_runtime_env(),
        ),
    )
    start = time.perf_counter()
    try:
        with console.FileProgress(prepared.run_dir / PROGRESS_FILE, "training") if use_bar else nullcontext():
            result = trainer.fit()
        error = result.error
    except Exception as exc:  # Ray V2 raises TrainingFailedError from fit()
        result, error = None, exc
    finally:
        if shutdown and started:
            ray.shutdown()
    wall = time.perf_counter() - start
    if error is not None:
        stopped = _stopped_reason(error)
        if stopped is not None:
            raise ValueError(stopped) from None
        raise error
    metrics = dict(result.metrics or {})
    final_state = read_train_state(result.checkpoint.path) if result.checkpoint else {}
    results = results_of(prepared, metrics, final_state, wall, result.checkpoint.path if result.checkpoint else None)
    layout.write_json_atomic(prepared.run_dir / RESULTS, results)
    return results


def checkpoint_config(config: TrainConfig) -> Any:
    """Ray's checkpoint retention: the newest ``train.num_checkpoints``; with early stopping, the
    checkpoints holding the best parameters first (their score, :func:`recsys.train.loop.checkpoint_score`,
    outranks every other), and Ray always keeps the latest, which resume reads."""
    from ray.train import CheckpointConfig

    if config.train.early_stopping is None:
        return CheckpointConfig(num_to_keep=config.train.num_checkpoints)
    return CheckpointConfig(
        num_to_keep=config.train.num_checkpoints, checkpoint_score_attribute="early_stopping_score", checkpoint_score_order="max",
    )


def results_of(prepared: Prepared, metrics: dict[str, Any], final_state: dict[str, Any], wall: float, checkpoint_path: str | None) -> dict[str, Any]:
    """``results.json``: the task's own keys (:meth:`~recsys.train.tasks.Task.results`; a retrieval run
    has no CTR keys), then the run's bytes, speed, history, config and plan; early stopping's
    ``best_step``, ``stopped_early`` and curve where it is on."""
    config = prepared.config
    plan = prepared.plan
    oracle = prepared.manifest.get("oracle") or {}
    task = task_for(config.model.arch, config.data.path)
    results = {
        **task.results(metrics, oracle),
        "embedding_bytes": plan.total_bytes,
        "full_table_bytes": plan.full_bytes,
        "compression_ratio": plan.ratio,
        "samples_per_s": metrics.get("samples_per_s"),
        "train_seconds": metrics.get("train_seconds"),
        "wall_seconds": wall,
        "steps": metrics.get("steps"),
        "world_size": metrics.get("world_size"),
        "resumed_from_step": metrics.get("resumed_from_step"),
        "test_rows": metrics.get("test_rows"),
        "val_rows": metrics.get("val_rows"),
        "split_rows": prepared.rows,
        "checkpoint": checkpoint_path,
        "history": final_state.get("history"),
        "loss_curve": final_state.get("loss_curve"),
        "config": config.model_dump(mode="json"),
        "configs": final_state.get("configs"),  # every config the run used, with the step it took over
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
    results["towers"] = _bytes_by_tower(plan, prepared.spec)
    results["oracle"] = oracle or None
    es = final_state.get("early_stopping")
    if config.train.early_stopping is not None and es is not None:
        results["best_step"] = es["best_step"]
        results["stopped_early"] = es["stopped_at"] is not None
        results["early_stopping"] = {k: v for k, v in es.items() if k != "best_checkpoint"}
    return results
