"""The training loop that runs on every Ray Train worker (:func:`train_worker`).

Per worker, in order (each a small function below):

1. :func:`setup` — the resolved config and spec from the driver's payload, rank, device, the
   task (:mod:`recsys.train.tasks`: model, loss, metrics), and this rank's
   :class:`~recsys.data.loader.ShardReader` of each split;
2. :func:`build_sharded` — the task's model with its tables on ``meta`` -> fused table optimizer in
   backward -> TorchRec's planner -> ``DistributedModelParallel`` -> one ``CombinedOptimizer``;
3. :func:`restore` — the newest intact checkpoint (Ray's latest, or the one the driver chose),
   into the model, optimizers and a typed :class:`TrainState`;
4. the steps: :class:`Schedule` (a pure function of the step) says when to log, evaluate and
   checkpoint; a non-finite loss stops the run at once, naming the step;
5. the final validation / test metrics and the final checkpoint.

Every rank reads exactly ``steps_per_epoch`` full batches per epoch and, in evaluation, the same
number of (padded) batches of the same sizes, so all ranks run the same collectives without a
per-batch handshake. Metrics are exact: every row of a split is scored once, the predictions of
all ranks are gathered and scored with :mod:`recsys.metrics`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed.planner.types import ParameterConstraints

from recsys.data.loader import ShardReader
from recsys.features.spec import DatasetSpec, spec_from_dict
from recsys.train import checkpoint, faults, sharding
from recsys.train.config import TrainConfig
from recsys.train.early_stopping import EarlyStopping
from recsys.train.tasks import EvalContext, Task, tables_of, task_for


class TrainingStopped(ValueError):
    """The run cannot go on (e.g. a non-finite loss); the message says why and at which step."""


def build_task(config: TrainConfig, spec: DatasetSpec, counts: dict[str, np.ndarray] | None, device: torch.device) -> torch.nn.Module:
    """The unsharded module of the config's task: tables on ``meta`` (DMP materialises shards)."""
    return task_for(config.model.arch, config.data.path).build(config, spec, counts, device)


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


# -- the typed pieces -------------------------------------------------------------------------


@dataclass
class TrainState:
    """What a checkpoint's ``train_state.json`` holds; the only mutable state of the loop."""

    step: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # validation rows
    loss_curve: list[list[float]] = field(default_factory=list)  # [step, mean loss over ranks]
    resumed_from_step: int | None = None
    configs: list[dict[str, Any]] = field(default_factory=list)  # [{"from_step", "config"}] every config used
    sharding_plan: list[dict[str, Any]] | None = None
    early_stopping: EarlyStopping | None = None  # with train.early_stopping

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "TrainState":
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        if known.get("early_stopping") is not None:
            known["early_stopping"] = EarlyStopping.from_json(known["early_stopping"])
        return cls(**known)

    def record_config(self, config: dict[str, Any]) -> None:
        """Append ``config`` to the run's config history unless it is the one in force."""
        if not self.configs or self.configs[-1]["config"] != config:
            self.configs.append({"from_step": self.step, "config": config})


@dataclass(frozen=True)
class Schedule:
    """When to log, evaluate and checkpoint: a pure function of the (1-based, global) step.

    ``eval_every == 0`` evaluates at the end of each epoch; the last step does neither (the final
    evaluation and checkpoint follow the loop).
    """

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, batch within the epoch)`` of the step that follows ``step`` steps."""
        return divmod(step, self.steps_per_epoch)

    def log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps

    def evaluate(self, step: int) -> bool:
        if step >= self.total_steps:
            return False
        if self.eval_every:
            return step % self.eval_every == 0
        return step % self.steps_per_epoch == 0

    def checkpoint(self, step: int) -> bool:
        return bool(self.checkpoint_every) and step % self.checkpoint_every == 0 and step < self.total_steps


def schedule_for(config: TrainConfig, steps_per_epoch: int) -> Schedule:
    total = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total = min(total, config.train.max_steps)
    t = config.train
    return Schedule(total, steps_per_epoch, t.log_every, t.eval_every, t.checkpoint_every)


@dataclass
class Worker:
    """This rank's view of the run (built by :func:`setup`)."""

    config: TrainConfig
    spec: DatasetSpec
    rank: int
    world: int
    device: torch.device
    train: ShardReader
    validation: ShardReader
    test: ShardReader
    schedule: Schedule
    fault: faults.Fault | None
    payload: dict[str, Any]
    task: Task
    files: dict[str, list[Path]]  # per split, its parquet files (the evaluation context)

    @property
    def global_batch(self) -> int:
        return self.train.batch_size * self.world

    def log(self, message: str) -> None:
        if self.rank == 0:
            _log(message)


def setup(payload: dict[str, Any], rank: int, world: int, local_rank: int) -> Worker:
    config = TrainConfig.model_validate(payload["config"])
    spec = spec_from_dict(payload["spec"], "resolved spec")
    if config.ray.use_gpu:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(config.ray.cpus_per_worker)))
    files = {split: [Path(p) for p in paths] for split, paths in payload["files"].items()}
    per_rank = config.data.batch_size // world  # the driver checked that it divides
    per_rank_eval = -(-config.data.eval_batch_size // world)
    common = dict(rank=rank, world_size=world)
    train = ShardReader(
        files["train"], spec, batch_size=per_rank, seed=config.train.seed, shuffle_files=config.data.shuffle_files,
        shuffle_buffer_rows=config.data.shuffle_buffer_rows, **common,
    )
    validation = ShardReader(files["validation"], spec, batch_size=per_rank_eval, **common)
    test = ShardReader(files["test"], spec, batch_size=per_rank_eval, **common)
    schedule = schedule_for(config, train.steps_per_epoch)
    return Worker(
        config, spec, rank, world, device, train, validation, test, schedule, faults.load_fault(payload["run_dir"], payload.get("ray_root")), payload,
        task_for(config.model.arch, payload.get("data_root", config.data.path)), files,
    )


def build_sharded(w: Worker, local_world_size: int) -> tuple[torch.nn.Module, Any, list[dict[str, Any]]]:
    """The DMP-sharded model, its combined optimizer, and the sharding plan as rows."""
    config = w.config
    task = w.task.build(config, w.spec, w.payload.get("counts"), w.device)
    emb = config.optimizer.embedding
    sharding.apply_fused_optimizer(task, emb.kind, emb.lr, emb.eps, emb.weight_decay)
    table_specs = tables_of(task)
    per_value = {t.name for t in table_specs if t.per_value}
    plan = sharding.plan_sharding(
        task,
        world_size=w.world,
        local_world_size=local_world_size,
        compute_device=w.device.type,
        batch_size=w.train.batch_size,
        constraints=constraints_for(config, [t.name for t in table_specs], per_value),
        # TorchRec assumes 32 GiB per GPU otherwise: plan for the card this worker has.
        hbm_cap=torch.cuda.get_device_properties(w.device).total_memory if w.device.type == "cuda" else None,
    )
    model = sharding.shard_model(task, plan, w.device)
    dense = config.optimizer.dense
    optimizer = sharding.build_optimizer(model, dense.kind, dense.lr, dense.eps, dense.weight_decay)
    return model, optimizer, sharding.describe_plan(plan)


def restore(w: Worker, model: torch.nn.Module, optimizer: Any) -> TrainState:
    """Load the newest intact checkpoint, if any: Ray's latest (a restart within this run, or the
    run's snapshot on ``resume=true``) unless it is damaged or older than the driver's choice."""
    import ray.train

    choice: list[Any] = [None]
    if w.rank == 0:
        candidates = []
        latest = ray.train.get_checkpoint()
        if latest is not None:
            candidates.append(Path(latest.path))
        if w.payload.get("resume_from"):
            candidates.append(Path(w.payload["resume_from"]))
        best = None
        for path in candidates:
            reason = checkpoint.verify_checkpoint(path)
            if reason is not None:
                w.log(f"checkpoint {path} is damaged ({reason}); passing over it")
                continue
            step = checkpoint.checkpoint_step(path)
            if best is None or step > best[0]:
                best = (step, str(path))
        choice = [best]
    dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        state = TrainState()
    else:
        saved = checkpoint.load_into(choice[0][1], model, optimizer)
        state = TrainState.from_json(saved)
        state.resumed_from_step = state.step
        w.log(f"resumed from checkpoint at step {state.step} ({choice[0][1]})")
    state.record_config(w.payload["config"])
    state.early_stopping = _early_stopping(w, state.early_stopping, state.step, choice[0][1] if choice[0] else None)
    return state


def _early_stopping(w: Worker, saved: EarlyStopping | None, step: int, resumed_from: str | None) -> EarlyStopping | None:
    """The early-stopping state of the config, continuing the checkpoint's count where it watched
    the same metric (patience and min_delta as the config says now)."""
    cfg = w.config.train.early_stopping
    if cfg is None:
        return None
    higher = w.task.higher_is_better(cfg.metric) if cfg.mode is None else cfg.mode == "max"
    if saved is None or saved.metric != cfg.metric or saved.higher_is_better != higher:
        if saved is not None:
            w.log(f"early stopping now watches {cfg.metric}; the checkpoint's count on {saved.metric} starts over")
        return EarlyStopping(cfg.metric, higher, cfg.patience, cfg.min_delta)
    saved.patience, saved.min_delta = cfg.patience, cfg.min_delta
    if saved.best_step == step and resumed_from is not None:
        saved.best_checkpoint = resumed_from  # the best was written at the step resumed from
    return saved


# -- evaluation -------------------------------------------------------------------------------


def evaluate(w: "Worker", model: torch.nn.Module, reader: ShardReader) -> dict[str, float]:
    """The task's exact metrics of one split (collective: every rank calls it)."""
    split = "test" if reader is w.test else "validation"
    return w.task.evaluate(model, reader, w.device, EvalContext(w.config, w.files, split))


def observe(w: "Worker", state: TrainState, step: int, row: dict[str, Any]) -> bool:
    """Hand an evaluation's row to early stopping; True if it holds the new best parameters.

    Every rank observes rank 0's value (broadcast), so all take the same decision.
    """
    es = state.early_stopping
    if es is None:
        return False
    value = [row.get(es.metric)]
    dist.broadcast_object_list(value, src=0)
    best = es.observe(step, value[0])
    w.log(f"early stopping: {es.metric} {value[0]:.4f} at step {step}; best {es.best if es.best is not None else float('nan'):.4f} "
          f"at step {es.best_step} ({es.bad_evaluations}/{es.patience} evaluations without improvement)")
    return best


def checkpoint_score(state: TrainState, best: bool) -> dict[str, float]:
    """The score Ray keeps checkpoints by when early stopping is on (``CheckpointConfig``'s
    ``checkpoint_score_attribute``): the time a checkpoint became the best, 0 for any other. So the
    newest best (and the bests before it, up to ``train.num_checkpoints``) outrank every other
    checkpoint; Ray also always keeps the latest, which resume reads."""
    if state.early_stopping is None:
        return {}
    return {"early_stopping_score": time.time() if best else 0.0}


def restore_best(w: "Worker", model: torch.nn.Module, optimizer: Any, es: EarlyStopping) -> None:
    """Load the parameters of the best evaluation (collective)."""
    dist.barrier()  # every rank's upload of the best checkpoint is long done; this makes it certain
    path = [es.best_checkpoint]
    dist.broadcast_object_list(path, src=0)
    reason = checkpoint.verify_checkpoint(path[0]) if path[0] else "no checkpoint was recorded"
    if reason is not None:
        raise TrainingStopped(f"early stopping: cannot restore the best parameters (step {es.best_step}) from {path[0]}: {reason}")
    checkpoint.load_into(path[0], model, optimizer)
    w.log(f"early stopping: restored the parameters of step {es.best_step} ({es.metric} {es.best:.4f}) from {path[0]}")


def _history_val(state: TrainState, step: int) -> dict[str, Any]:
    """The validation metrics recorded at ``step`` (keys without ``val_``, ``rows`` included)."""
    row = next(r for r in reversed(state.history) if r.get("step") == step)
    return {k[len("val_"):]: v for k, v in row.items() if k.startswith("val_")}


# -- the loop ---------------------------------------------------------------------------------


def train_worker(payload: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``payload`` from :func:`recsys.train.run.launch`.

    Keys: ``config`` (resolved TrainConfig as JSON), ``spec`` (the resolved feature spec),
    ``files`` (per split, its parquet files), ``counts`` (vocab counts for mixed_dim),
    ``run_dir`` (absolute), ``resume_from`` (the driver's choice of checkpoint, or None).
    """
    import ray.train

    from recsys import console
    from recsys.tensorboard import Curves

    console.setup()  # again: Ray Train's worker logging set-up ran after the process's set-up hook
    ctx = ray.train.get_context()
    w = setup(payload, ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank())
    model, optimizer, plan_rows = build_sharded(w, ctx.get_local_world_size())
    state = restore(w, model, optimizer)
    state.sharding_plan = plan_rows
    s = w.schedule
    w.log(
        f"world size {w.world}; batch {w.global_batch} ({w.train.batch_size} per worker); "
        f"{s.steps_per_epoch} steps per epoch; training to step {s.total_steps}"
    )
    resolved = {"config": payload["config"], "spec": payload["spec"]}
    last_saved = state.step if state.resumed_from_step is not None else None

    def report(row: dict[str, Any], with_checkpoint: bool) -> None:
        nonlocal last_saved
        if not with_checkpoint:
            ray.train.report(row)
            return
        after = (lambda folder: w.fault.during_save(state.step, w.rank, folder, last_saved)) if w.fault else None
        with checkpoint.saved_checkpoint(
            model, optimizer, rank=w.rank, train_state=state.to_json(), resolved=resolved, after_write=after
        ) as path:
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(str(path)))
        last_saved = state.step

    window = _Window()
    # Rank 0 writes the curves (loss, samples/s, validation metrics) for `tensorboard --logdir runs/`.
    curves = Curves(payload["run_dir"], enabled=w.rank == 0)
    progress = _Progress(payload, s.total_steps, state.step, w.rank == 0)
    es = state.early_stopping
    while state.step < s.total_steps and not (es and es.stopped_at is not None):
        epoch, skip = s.position(state.step)
        step_start = time.perf_counter()
        for batch in w.train.train_batches(epoch, skip):
            if w.fault is not None:
                w.fault.before_step(state.step + 1, w.rank, last_saved)
            loss, _ = model(batch.to(w.device, non_blocking=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not np.isfinite(value):
                raise TrainingStopped(
                    f"training stopped at step {state.step + 1}: the loss is {value} on worker {w.rank}; "
                    "check the data for non-finite dense values (data.check_ranges scans for them) and lower the learning rates"
                )
            state.step += 1
            now = time.perf_counter()
            state.train_seconds += now - step_start
            state.samples += w.global_batch
            window.add(value)
            step = state.step
            if s.log(step):
                mean = window.mean_over_ranks(w.device)
                state.loss_curve.append([step, mean])
                rate = window.rate(now, w.global_batch)
                curves.scalars(step, {"train/loss": mean, "train/samples_per_s": rate})
                progress.log(w, step, epoch, mean, rate)
                window.reset()
            if s.evaluate(step) or s.checkpoint(step):
                row: dict[str, Any] = {"step": step, "epoch": epoch}
                if s.evaluate(step):
                    val = evaluate(w, model, w.validation)
                    row.update({f"val_{k}": v for k, v in val.items()})
                    w.log(f"step {step} validation {w.task.describe(val)} ({val['rows']:,} rows)")
                    curves.scalars(step, {f"validation/{k}": v for k, v in val.items() if k != "rows"})
                    progress.validation = w.task.describe(val)
                    state.history.append(row)
                best = s.evaluate(step) and observe(w, state, step, row)
                if es and es.exhausted:
                    es.stopped_at = step
                report({**row, **checkpoint_score(state, best)}, with_checkpoint=s.checkpoint(step) or best)
                if best:
                    es.best_checkpoint = ray.train.get_checkpoint().path  # the folder Ray persisted it to
                window.restart()
            if step >= s.total_steps or (es and es.stopped_at is not None):
                break
            step_start = time.perf_counter()

    if es is not None and es.stopped_at is not None:
        val = _history_val(state, es.stopped_at)  # that evaluation stopped the run
    else:
        val = evaluate(w, model, w.validation)
        state.history.append({"step": state.step, **{f"val_{k}": v for k, v in val.items() if k != "rows"}})
        if es is not None:
            observe(w, state, state.step, {f"val_{k}": v for k, v in val.items()})
    if es is not None and es.best_step is not None and es.best_step != state.step:
        restore_best(w, model, optimizer, es)
        val = _history_val(state, es.best_step)
    test = evaluate(w, model, w.test)
    w.log(f"validation {w.task.describe(val)}; test {w.task.describe(test)}")
    curves.scalars(state.step, {f"validation/{k}": v for k, v in val.items() if k != "rows"})
    curves.scalars(state.step, {f"test/{k}": v for k, v in test.items() if k != "rows"})
    curves.close()
    progress.done(state.step)
    val_row = {f"val_{k}": v for k, v in val.items() if k != "rows"}
    final = {
        "final": True,
        "step": state.step,
        "steps": state.step,
        **{k: v for k, v in test.items() if k != "rows"},
        **val_row,
        "test_rows": test["rows"],
        "val_rows": val["rows"],
        "samples": state.samples,
        "train_seconds": state.train_seconds,
        "samples_per_s": state.samples / state.train_seconds if state.train_seconds else float("nan"),
        "world_size": w.world,
        "resumed_from_step": state.resumed_from_step,
    }
    if es is not None:  # the final checkpoint holds the best parameters
        final.update(best_step=es.best_step, stopped_early=es.stopped_at is not None, **checkpoint_score(state, True))
    report(final, with_checkpoint=True)


class _Window:
    """Mean loss and throughput since the last log line."""

    def __init__(self) -> None:
        self.restart()
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps = 0.0, 0
        self.start = time.perf_counter()

    def restart(self) -> None:
        """After an evaluation or checkpoint: keep the losses, restart the clock."""
        self.start = time.perf_counter()

    def add(self, loss: float) -> None:
        self.loss += loss
        self.steps += 1

    def mean_over_ranks(self, device: torch.device) -> float:
        mean = torch.tensor([self.loss / max(self.steps, 1)], device=device)
        dist.all_reduce(mean)
        return mean.item() / dist.get_world_size()

    def rate(self, now: float, global_batch: int) -> float:
        return self.steps * global_batch / max(now - self.start, 1e-9)


class _Progress:
    """Rank 0's progress: a step line with rate, ETA and the last validation metric (plain output),
    or, when the driver draws a bar on its terminal, ``progress.json`` in the run folder for it."""

    def __init__(self, payload: dict[str, Any], total: int, first_step: int, enabled: bool) -> None:
        self.total, self.first_step, self.enabled = total, first_step, enabled
        self.bar = payload.get("progress") == "bar"
        self.path = Path(payload["run_dir"]) / PROGRESS_FILE
        self.start = time.perf_counter()
        self.validation = ""

    def eta(self, step: int) -> float:
        from recsys.console import eta_seconds

        return eta_seconds(step - self.first_step, self.total - self.first_step, time.perf_counter() - self.start)

    def log(self, w: "Worker", step: int, epoch: int, loss: float, rate: float) -> None:
        if not self.enabled:
            return
        if self.bar:
            self._write(step, loss, rate)
            return
        from recsys.console import format_duration

        last = f"; last validation {self.validation}" if self.validation else ""
        w.log(f"step {step}/{self.total} epoch {epoch} loss {loss:.4f} samples/s {rate:,.0f} ETA {format_duration(self.eta(step))}{last}")

    def done(self, step: int) -> None:
        """The last step (below the total when the run stopped early)."""
        if self.enabled and self.bar:
            self._write(step, None, None)

    def _write(self, step: int, loss: float | None, rate: float | None) -> None:
        import json
        import os

        row = {"step": step, "total": self.total, "loss": loss, "samples_per_s": rate, "validation": self.validation}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, self.path)  # the driver never reads half a file


PROGRESS_FILE = "progress.json"


def _log(message: str) -> None:
    """One line on the driver's console (Ray Train's patched ``print`` would tee it twice)."""
    print(message, file=sys.__stdout__, flush=True)
