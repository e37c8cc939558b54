"""Compression sweeps: methods x memory budgets x seeds, each trial an ordinary training run.

    recsys bench compression configs/bench_quick.yaml [--out SWEEP_DIR] [key=value ...]

A sweep config names a data set, a base training config (plus overrides), the methods, the
budgets as ratios of the full-table bytes (``1``, ``0.25`` or ``"1/16"``), the seeds and per-method
budget options::

    task: ctr
    data: {path: data/synthetic_ctr_1m}
    base: {config: configs/ctr_synthetic_full.yaml, overrides: [train.max_steps=300]}
    methods: [full, hashed, qr, mixed_dim, unified]
    budgets: [1, 1/4, 1/16, 1/64]
    seeds: [0, 1]
    keep_full_below: 2000
    options: {unified: {num_chunks: 2}}
    resources: {max_concurrent_trials: 1, trial_cpus: 1}

It runs in three steps:

1. :func:`plan_sweep` (no Ray): the base config is prepared once with its data checks; then each
   (method, budget) is sized by the budget solver through :func:`recsys.train.run.prepare` (models
   on ``meta``). A budget whose achieved ratio is off the target by more than the solver's
   tolerance is ``unreachable`` with the solver's reason, never silently replaced by another size.
   ``full`` is the reference: it runs at budget 1 only.
2. :func:`run_sweep`: every trial without a finished ``results.json`` in its folder
   ``SWEEP_DIR/trials/<trial_id>/`` runs as a Ray Tune trial of a function trainable that calls
   ``prepare`` + ``launch`` (a Ray Train ``TorchTrainer``, Train V2's supported Train-in-Tune
   pattern: the trial reserves ``resources.trial_cpus`` for its driver, the Train worker group its
   own ``ray.num_workers x ray.cpus_per_worker``). Finished trials are never re-run: running the same
   command again after a crash or Ctrl-C runs only the missing or failed ones. Each trial records what
   it runs with (``trial.json``) first; continuing a sweep whose trials ran with another config
   (other ``base.overrides``, an edited base config, other options or lookup settings) is refused
   with the differing keys (:func:`check_unchanged`), so one ``sweep.json`` never reports two configs.
3. :func:`collect`: one row per trial into ``results.parquet``, from which
   :mod:`recsys.train.report` writes ``report.md`` and ``pareto.png``.

A task says which base configs it takes, which metrics a trial yields and which one ranks
methods (:data:`TASKS`): ``ctr`` (a DLRM / DCN base: AUC, logloss) or ``retrieval`` (a two-tower
base: recall@100, recall@10, NDCG@10 over the whole catalogue, the oracle's recall beside them on
synthetic data). The budget ratio is always of the full-table bytes of the model's tables, as the
training run's plan reports them: where the model holds a table more than once (a ``unified``
group read by both towers gets a copy per tower), the solver's ratio is scaled until the model's
plan lands on the target (:func:`_size`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.embeddings.budget import TOLERANCE
from recsys.train.config import TrainConfig
from recsys.train.sweep_config import (  # noqa: F401  (the sweep's public names, re-exported)
    TASKS,
    Metric,
    SweepConfig,
    SweepConfigError,
    Task,
    budget_label,
    load_sweep_config,
    sweep_config_from_dict,
)

__all__ = [
    "SweepConfig", "SweepConfigError", "TrialPlan", "Task", "TASKS", "budget_label", "load_sweep_config",
    "sweep_config_from_dict", "plan_sweep", "run_sweep", "collect", "check_unchanged", "SweepChangedError",
]

TRIALS = "trials"
RESULTS = "results.json"
LOOKUP = "lookup.json"
FAILURE = "failure.json"
PARQUET = "results.parquet"
TRIAL = "trial.json"  # what a trial was run with (its TrainConfig and lookup timing), written before it runs
# Keys of a trial's config that say where and how it runs, not what it computes.
UNCOMPARED = ("run_dir", "resume", "resume_allow_changes")


# -- planning ---------------------------------------------------------------------------------


@dataclass
class TrialPlan:
    """One trial of the sweep, decided before anything runs."""

    trial_id: str
    method: str
    budget: str  # label, e.g. "1/16"
    target_ratio: float
    seed: int
    status: str  # "pending" (to run), "done" (results.json exists), "unreachable", "failed" (at planning)
    reason: str = ""
    achieved_ratio: float | None = None
    embedding_bytes: int | None = None
    full_table_bytes: int | None = None
    solver_ratio: float | None = None  # the ratio the budget solver was given, where it differs from the target
    config: dict[str, Any] = field(default_factory=dict)  # the trial's TrainConfig as JSON


def trial_id(method: str, ratio: float, seed: int) -> str:
    """``hashed-1_16-s0``: a folder name that sorts nothing away and reads back."""
    return f"{method}-{budget_label(ratio).replace('/', '_').replace('.', 'p')}-s{seed}"


def _reach_reason(notes: list[str], achieved: float, target: float) -> str:
    """Why a method missed its budget: the solver's notes that say so, else the numbers."""
    said = [n.strip().removeprefix("note: ") for text in notes for n in text.splitlines()
            if n.strip().startswith("note:") and ("floor" in n or "spans" in n or "cannot" in n)]
    said = [s for s in said if "could not land" not in s] or said
    numbers = f"achieved ratio {achieved:.4g} vs target {target:.4g} (tolerance {TOLERANCE:.0%})"
    return f"{numbers}: {'; '.join(said)}" if said else numbers


def plan_sweep(sweep: SweepConfig, base: TrainConfig, sweep_dir: Path, *, log=None) -> list[TrialPlan]:
    """Size every (method, budget) with the budget solver; mark finished, unreachable and failed ones.

    Raises:
        ValueError / FileNotFoundError / ConfigError: the base config does not prepare on the data
            set (every trial would fail the same way).
    """
    from recsys.train.run import prepare

    log = log or say
    trials_dir = sweep_dir / TRIALS
    scratch = sweep_dir / ".plan"  # never created: prepare only checks that no run is there
    first = prepare(base.model_copy(update={"run_dir": str(scratch)}))  # the data checks, once
    log(f"data {base.data.path}: {first.train_rows:,} training rows; full tables {first.plan.full_bytes:,} B; "
        f"{'ids checked against the cardinalities' if base.data.check_ranges else 'ids NOT range-checked (data.check_ranges=false)'}")
    options = sweep.options
    plans: list[TrialPlan] = []
    sized: dict[tuple[str, float], TrialPlan] = {}
    for seed in sweep.seeds:
        for ratio in sweep.budgets:
            for method in sweep.methods:
                if method == "full" and ratio != 1:
                    continue  # the reference: full tables take ratio 1 by definition
                key = (method, ratio)
                if key not in sized:
                    sized[key] = _size(base, method, ratio, sweep.keep_full_below, options.get(method, {}), scratch, prepare)
                plans.append(_trial(sized[key], seed, trials_dir))
    if "full" in sweep.methods and 1.0 not in sweep.budgets:  # still run the reference
        ref = _size(base, "full", 1.0, 0, {}, scratch, prepare)
        plans = [_trial(ref, seed, trials_dir) for seed in sweep.seeds] + plans
    check_unchanged(plans, sweep, sweep_dir)
    return plans


class SweepChangedError(ValueError):
    """A sweep folder's trials ran with another config than the one given now."""


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    """What a trial folder says it was run with: ``trial.json``, else (trials of older sweeps) the
    config in its ``results.json``; ``None`` when it holds neither (never started)."""
    trial = _read_json(run_dir / TRIAL)
    if trial is not None:
        return trial
    results = _read_json(run_dir / RESULTS)
    if results is not None and isinstance(results.get("config"), dict):
        return {"config": results["config"]}
    return None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every leaf both configs have and disagree on (keys only one side has
    come from another recsys version's schema and are not compared)."""
    from recsys.train.checks import flatten

    a, b = flatten(old), flatten(new)
    return [f"{key}: {json.dumps(a[key])} -> {json.dumps(b[key])}" for key in sorted(a.keys() & b.keys())
            if a[key] != b[key] and key.split(".")[-1] not in UNCOMPARED and key not in UNCOMPARED]


def check_unchanged(plans: list[TrialPlan], sweep: SweepConfig, sweep_dir: Path) -> None:
    """Refuse to continue a sweep whose trials ran with another config than this sweep gives them.

    A trial folder that was started (``trial.json``, or a ``results.json`` of an older sweep) keeps
    its results, ``lookup.json`` and checkpoints; continuing it with a changed config (other
    ``base.overrides``, an edited base config, other ``options`` or ``lookup`` settings) would mix
    results of two configs under one ``sweep.json``. Adding methods, budgets or seeds is fine: their
    trials are new folders.

    Raises:
        SweepChangedError: the differing keys per trial (and of the sweep config), in one message.
    """
    changed: dict[str, list[str]] = {}
    for plan in plans:
        if not plan.config:
            continue
        recorded = _recorded(sweep_dir / TRIALS / plan.trial_id)
        if recorded is None:
            continue
        diffs = _differences(recorded.get("config") or {}, plan.config)
        if "lookup" in recorded:
            diffs += [f"lookup.{d}" for d in _differences(recorded["lookup"], sweep.lookup.model_dump(mode="json"))]
        if diffs:
            changed[plan.trial_id] = diffs
    if not changed:
        return
    saved = (_read_json(sweep_dir / "sweep.json") or {}).get("sweep")
    sweep_diffs = _differences(saved, sweep.model_dump(mode="json")) if isinstance(saved, dict) else []
    shown = list(changed.items())[:3]
    raise SweepChangedError(
        f"--out {sweep_dir}: {len(changed)} trial(s) there ran with another config than this sweep gives them; continuing "
        "would mix results of two configs. "
        + (f"sweep config: {'; '.join(sweep_diffs)}. " if sweep_diffs else "")
        + " ".join(f"trial {tid}: {'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}." for tid, diffs in shown)
        + (f" ({len(changed) - len(shown)} more trials likewise.)" if len(changed) > len(shown) else "")
        + " Give a new --out for the changed sweep, or continue it with the config its trials ran with"
    )


CALIBRATION_STEPS = 3  # solver re-runs where the model's plan counts bytes differently from the solver


def _size(base: TrainConfig, method: str, ratio: float, keep_full_below: int, options: dict, scratch: Path, prepare) -> TrialPlan:
    """Size one (method, budget) through ``prepare`` (models on ``meta``).

    The solver sizes the spec's features (each table once); the model's plan may hold a table
    twice (a two-tower ``unified`` group: one copy per tower). Where the solver hit its own target
    but the model's plan missed it, the solver's ratio is scaled by target / achieved and solved
    again (at most :data:`CALIBRATION_STEPS` times), so the trial's bytes are the budget's.
    """
    raw = base.model_dump(mode="json")
    raw["run_dir"] = str(scratch)
    raw["data"]["check_ranges"] = False  # checked once by plan_sweep
    # Absolute paths: a Tune trial runs in its own working directory (and maybe on another node).
    raw["data"]["path"] = str(Path(raw["data"]["path"]).resolve())
    if raw["data"].get("spec"):
        raw["data"]["spec"] = str(Path(raw["data"]["spec"]).resolve())
    plan = TrialPlan("", method, budget_label(ratio), ratio, 0, "pending")
    solve_at, tried = ratio, []
    for step in range(CALIBRATION_STEPS + 1):
        raw["embeddings"] = {"budget": {"method": method, "ratio": solve_at, "keep_full_below": keep_full_below, "options": options}}
        try:
            config = TrainConfig.model_validate(raw)
            prepared = prepare(config)
        except (ValueError, FileNotFoundError) as exc:
            text = "; ".join(getattr(exc, "errors", None) or [str(exc)])
            plan.status = "unreachable" if "embeddings.budget" in text else "failed"
            plan.reason = text.splitlines()[0][:500]
            return plan
        achieved = prepared.plan.ratio
        if abs(achieved / ratio - 1) <= TOLERANCE or step == CALIBRATION_STEPS or not _solver_hit(prepared, solve_at):
            break
        # Bytes are affine in the solver's ratio (tables kept full count once, shared ones twice):
        # a secant step through the last two points, a proportional one from the first.
        if tried:
            (s0, a0), (s1, a1) = tried[-1], (solve_at, achieved)
            scaled = s1 + (ratio - a1) * (s1 - s0) / (a1 - a0) if a1 != a0 else s1
        else:
            scaled = solve_at * ratio / achieved
        tried.append((solve_at, achieved))
        if not 0 < scaled <= 1 or scaled == solve_at:
            break
        solve_at = scaled
    plan.achieved_ratio, plan.embedding_bytes, plan.full_table_bytes = achieved, prepared.plan.total_bytes, prepared.plan.full_bytes
    plan.solver_ratio = solve_at if solve_at != ratio else None
    if abs(achieved / ratio - 1) > TOLERANCE:
        plan.status, plan.reason = "unreachable", _reach_reason(prepared.notes, achieved, ratio)
    raw["run_dir"] = None
    plan.config = raw
    return plan


def _solver_hit(prepared, solve_at: float) -> bool:
    """Whether the spec's own plan (every table once, as the solver counts) is on the solver's target."""
    from recsys.embeddings import compile_plan

    return abs(compile_plan(prepared.spec, prepared.counts).ratio / solve_at - 1) <= TOLERANCE


def _trial(sized: TrialPlan, seed: int, trials_dir: Path) -> TrialPlan:
    plan = TrialPlan(**{**asdict(sized), "seed": seed, "trial_id": trial_id(sized.method, sized.target_ratio, seed)})
    if plan.config:
        plan.config = json.loads(json.dumps(plan.config))
        plan.config["train"]["seed"] = seed
        plan.config["run_dir"] = str((trials_dir / plan.trial_id).resolve())
    if plan.status == "pending" and (trials_dir / plan.trial_id / RESULTS).exists():
        plan.status = "done"
    return plan


# -- one trial --------------------------------------------------------------------------------


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line: its type and the first lines that say something."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(("Traceback", "File "))]
    text = "; ".join(lines[:3]) or type(exc).__name__
    text = text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def time_lookups(spec_raw: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    """Forward lookups/s of the spec's collection in FBGEMM's fused kernel (single process, gloo).

    Reuses the timing helpers of :mod:`recsys.embeddings.bench`: random Zipf ids at the spec's
    cardinalities, a sharded (world size 1) collection, interleaved rounds, the median.
    """
    import socket

    import torch
    import torch.distributed as dist

    from recsys.embeddings.bench import fused_model, make_batches, time_interleaved, warm_up
    from recsys.features.spec import spec_from_dict

    spec = spec_from_dict(spec_raw, "resolved spec")
    started = not dist.is_initialized()
    if started:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as recsys bench lookup: one thread keeps timings stable on a shared machine
        batches = make_batches(spec, timing["batch_size"], 4, seed=0)
        try:
            model, _ = fused_model(spec)
            path = "fused (tables on meta, sharded)"
        except RuntimeError:  # an EmbeddingCollection (per-value QR bags) cannot be sharded from meta
            model, path = _fused_from_cpu(spec), "fused (tables built on CPU, sharded)"

        def forward(kjt):
            with torch.no_grad():
                model(kjt).values()

        warm_up(forward, batches, timing["warmup"])
        seconds = time_interleaved({"forward": (forward, timing["steps"])}, batches, timing["rounds"])["forward"]
        torch.set_num_threads(threads)
        del model
    finally:
        if started:
            dist.destroy_process_group()
    lookups = timing["batch_size"] * len(spec.sparse)
    return {"lookups_per_s": lookups / statistics.median(seconds), "seconds_per_batch": statistics.median(seconds),
            "batch_size": timing["batch_size"], "features": len(spec.sparse), "path": path}


def _fused_from_cpu(spec):
    """:func:`recsys.embeddings.bench.fused_model` with the collection built on CPU first.

    TorchRec 1.8's EmbeddingCollection sharder copies the unsharded weights, which fails from
    ``meta`` ("Cannot copy out of meta tensor"); tables built on CPU shard fine.
    """
    import torch
    import torch.distributed as dist
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import OptimType
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingEnv

    from recsys.embeddings.builder import build_embedding_collection

    fused_params = {"learning_rate": 0.01, "optimizer": OptimType.EXACT_SGD}
    sharders = [EmbeddingBagCollectionSharder(fused_params=fused_params), EmbeddingCollectionSharder(fused_params=fused_params)]
    module = build_embedding_collection(spec, device="cpu")
    constraints = {t.name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"]) for t in module.plan().tables}
    plan = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"), constraints=constraints).plan(module, sharders)
    env = ShardingEnv.from_process_group(dist.GroupMember.WORLD)
    return DistributedModelParallel(module, env=env, device=torch.device("cpu"), plan=plan, sharders=sharders)


def run_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """One trial, in its own run folder: lookup timing, then ``prepare`` + ``launch``.

    ``trial`` holds ``config`` (the trial's TrainConfig as JSON, ``run_dir`` its folder), ``lookup``
    (:class:`LookupTiming` as a dict) and ``keep_checkpoints``. A failure leaves ``failure.json``
    (the one-line reason) and is raised again, so Ray Tune records the trial as errored.
    """
    from recsys.train.checkpoint import checkpoint_folders
    from recsys.train.run import launch, prepare

    run_dir = Path(trial["config"]["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILURE).unlink(missing_ok=True)
    # Before anything runs: a later continuation compares its config with this (check_unchanged).
    _write_json(run_dir / TRIAL, {"config": trial["config"], "lookup": trial["lookup"]})
    try:
        raw = dict(trial["config"], resume=bool(checkpoint_folders(run_dir)))  # a crashed trial continues
        prepared = prepare(TrainConfig.model_validate(raw))
        if trial["lookup"]["enabled"] and not (run_dir / LOOKUP).exists():
            try:
                timed = time_lookups(prepared.spec.to_dict(), trial["lookup"])
            except Exception as exc:  # the timing is a side measurement: it never fails the trial
                timed = {"lookups_per_s": None, "error": one_line(exc)}
            _write_json(run_dir / LOOKUP, timed)
        results = launch(prepared, shutdown=False)
        if not trial["keep_checkpoints"]:
            for _, folder in checkpoint_folders(run_dir):
                shutil.rmtree(folder, ignore_errors=True)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            _write_json(run_dir / FAILURE, {"reason": one_line(exc), "type": type(exc).__name__})
        raise
    return results


def _tune_trainable(param: dict[str, Any], trials: dict[str, dict[str, Any]]) -> None:
    from ray import tune

    trial = trials[param["trial_id"]]
    results = run_trial(trial)
    metrics = {column: results.get(key) for column, key in trial["metrics"]}
    tune.report({"status": "ok", **metrics, **{k: results.get(k) for k in ("compression_ratio", "samples_per_s")}})


# -- running the sweep ------------------------------------------------------------------------


def say(text: str, **kwargs: Any) -> None:
    """``print``, looked up when called: Ray Train patches ``builtins.print`` in the driver, and Tune
    pickles its callbacks, which must not hold the replaced function."""
    print(text, **kwargs)


def _write_json(path: Path, obj: Any) -> None:
    from recsys.data.layout import write_json_atomic

    write_json_atomic(path, obj)


def _ray_init(address: str | None, cpus_needed: float) -> bool:
    import ray

    if ray.is_initialized():
        return False
    level = os.environ.get("RECSYS_RAY_LOG_LEVEL", "ERROR")
    # The trials' training lines stay in Ray's logs: the console shows the sweep's progress.
    common = dict(logging_config=ray.LoggingConfig(log_level=level), log_to_driver=os.environ.get("RECSYS_TRIAL_LOGS") == "1")
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)), include_dashboard=False, **common)
    return True


class _Progress:
    """Printed lines while the sweep runs: trials done / running / failed and the best per budget."""

    def __init__(self, task: Task, plans: list[TrialPlan], log) -> None:
        self.task, self.log = task, log
        self.total = sum(p.status in ("pending", "done") for p in plans)
        self.done = sum(p.status == "done" for p in plans)
        self.running = self.failed = 0
        self.best: dict[str, tuple[float, str]] = {}
        self.by_id = {p.trial_id: p for p in plans}
        self.order = {p.budget: -p.target_ratio for p in plans}
        self.start, self.ended_here = time.monotonic(), 0  # the ETA: trials left at this session's pace
        for p in plans:
            if p.status == "done":
                self._record(p, _read_json(Path(p.config["run_dir"]) / RESULTS))

    def _record(self, plan: TrialPlan, results: dict[str, Any] | None) -> None:
        m = self.task.primary
        value = (results or {}).get(m.source)
        if value is None or not math.isfinite(value):
            return
        old = self.best.get(plan.budget)
        if old is None or (value > old[0] if m.higher_is_better else value < old[0]):
            self.best[plan.budget] = (value, f"{plan.method} s{plan.seed}")

    def line(self, head: str) -> None:
        m = self.task.primary
        best = ", ".join(f"{b}: {v[1]} {v[0]:.4f}" for b, v in sorted(self.best.items(), key=lambda kv: self.order[kv[0]]))
        from recsys.console import eta_seconds, format_duration

        left = self.total - self.done - self.failed
        eta = eta_seconds(self.ended_here, self.ended_here + left, time.monotonic() - self.start)
        self.log(f"[{self.done}/{self.total} done, {self.running} running, {self.failed} failed] {head} | {left} left, "
                 f"ETA {format_duration(eta)}"
                 + (f" | best {m.label} so far: {best}" if best else ""), flush=True)

    def started(self, tid: str) -> None:
        self.running += 1
        self.line(f"started {tid}")

    def finished(self, tid: str, ok: bool) -> None:
        self.running = max(0, self.running - 1)
        self.ended_here += 1
        plan = self.by_id[tid]
        run_dir = Path(plan.config["run_dir"])
        if ok:
            self.done += 1
            results = _read_json(run_dir / RESULTS) or {}
            self._record(plan, results)
            metrics = " ".join(f"{m.label} {_or_nan(results.get(m.source)):.4f}" for m in self.task.metrics)
            self.line(f"{tid}: {metrics}, ratio {results.get('compression_ratio', float('nan')):.4f}, "
                      f"{results.get('samples_per_s') or 0:,.0f} samples/s, {results.get('wall_seconds') or 0:.0f} s")
        else:
            self.failed += 1
            reason = (_read_json(run_dir / FAILURE) or {}).get("reason", "see Ray's log")
            self.line(f"{tid} FAILED: {reason}")


def _or_nan(x: Any) -> float:
    return x if isinstance(x, (int, float)) else float("nan")


def _callback(progress: _Progress):
    from ray.tune import Callback

    class SweepProgress(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            progress.started(trial.config["trial_id"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.finished(trial.config["trial_id"], ok=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.finished(trial.config["trial_id"], ok=False)

    return SweepProgress()


def run_sweep(sweep: SweepConfig, base: TrainConfig, plans: list[TrialPlan], sweep_dir: Path, *, log=None) -> None:
    """Run every pending trial as a Ray Tune trial (local Ray, or the cluster at ``RAY_ADDRESS``)."""
    import ray
    from ray import tune

    log = log or say
    pending = [p for p in plans if p.status == "pending"]
    progress = _Progress(TASKS[sweep.task], plans, log)
    if not pending:
        return
    per_trial = sweep.resources.trial_cpus + base.ray.num_workers * base.ray.cpus_per_worker
    concurrency = sweep.resources.max_concurrent_trials
    started = _ray_init(base.ray.address or os.environ.get("RAY_ADDRESS"), per_trial * (concurrency or 1))
    try:
        cpus = ray.cluster_resources().get("CPU", 1)
        if concurrency is None:
            concurrency = max(1, int(cpus // per_trial))
        log(f"{len(pending)} trial(s) to run, {concurrency} at once ({per_trial:g} CPUs each: {sweep.resources.trial_cpus:g} "
            f"for the trial, {base.ray.num_workers} x {base.ray.cpus_per_worker:g} for its training; {cpus:g} CPUs in Ray)")
        metrics = [list(c) for c in TASKS[sweep.task].columns]
        payload = {
            p.trial_id: {"config": p.config, "lookup": sweep.lookup.model_dump(), "keep_checkpoints": sweep.keep_checkpoints,
                         "metrics": metrics}
            for p in pending
        }
        trainable = tune.with_resources(tune.with_parameters(_tune_trainable, trials=payload), {"CPU": sweep.resources.trial_cpus})
        attempt = 1 + sum(1 for _ in sweep_dir.glob("tune-*"))
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search([p.trial_id for p in pending])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency,
                reuse_actors=True,  # one trial process, imports paid once
                trial_name_creator=lambda t: t.config["trial_id"],
                trial_dirname_creator=lambda t: t.config["trial_id"],
            ),
            run_config=tune.RunConfig(
                name=f"tune-{attempt}",
                storage_path=str(sweep_dir.resolve()),
                verbose=0,
                callbacks=[_callback(progress)],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )
        tuner.fit()
    finally:
        if started:
            ray.shutdown()


# -- collecting -------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


HEAD = ("task", "trial_id", "method", "budget", "target_ratio", "seed", "status", "reason")
TAIL = ("embedding_bytes", "full_table_bytes", "achieved_ratio", "samples_per_s", "lookups_per_s",
        "train_seconds", "wall_seconds", "steps", "run_dir")
INTS = {"seed", "embedding_bytes", "full_table_bytes", "steps"}
FLOATS = {"target_ratio", "achieved_ratio", "samples_per_s", "lookups_per_s", "train_seconds", "wall_seconds"}


def columns(task: str) -> tuple[str, ...]:
    """The columns of a task's ``results.parquet``: the trial, the task's metrics, bytes and speed."""
    return HEAD + tuple(column for column, _ in TASKS[task].columns) + TAIL


COLUMNS = columns("ctr")


def trial_row(task: str, plan: TrialPlan, sweep_dir: Path) -> dict[str, Any]:
    """One row of ``results.parquet``: the plan, and what the trial's folder holds."""
    row: dict[str, Any] = {c: None for c in columns(task)}
    row.update(task=task, trial_id=plan.trial_id, method=plan.method, budget=plan.budget, target_ratio=plan.target_ratio,
               seed=plan.seed, status=plan.status, reason=plan.reason or None, achieved_ratio=plan.achieved_ratio,
               embedding_bytes=plan.embedding_bytes, full_table_bytes=plan.full_table_bytes)
    if plan.status in ("unreachable", "failed"):
        return row
    run_dir = sweep_dir / TRIALS / plan.trial_id
    row["run_dir"] = str(Path(TRIALS) / plan.trial_id)
    results = _read_json(run_dir / RESULTS)
    if results is None:
        failure = _read_json(run_dir / FAILURE)
        row["status"], row["reason"] = ("failed", failure.get("reason")) if failure else ("not_run", "the sweep stopped before this trial finished")
        return row
    row["status"] = "ok"
    for column, key in TASKS[task].columns:
        row[column] = results.get(key)
    for key in ("embedding_bytes", "full_table_bytes", "samples_per_s", "train_seconds", "wall_seconds", "steps"):
        row[key] = results.get(key)
    row["achieved_ratio"] = results.get("compression_ratio")
    row["lookups_per_s"] = (_read_json(run_dir / LOOKUP) or {}).get("lookups_per_s")
    return row


def collect(task: str, plans: list[TrialPlan], sweep_dir: Path) -> Path:
    """Write ``results.parquet`` (one row per trial, in plan order); returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [trial_row(task, p, sweep_dir) for p in plans]
    floats = FLOATS | {column for column, _ in TASKS[task].columns}
    schema = pa.schema([(c, pa.int64() if c in INTS else pa.float64() if c in floats else pa.string()) for c in columns(task)])
    table = pa.Table.from_pylist(rows, schema=schema)
    path = sweep_dir / PARQUET
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_plan(plans: list[TrialPlan], sweep_dir: Path, sweep: SweepConfig) -> None:
    """``sweep.json``: the resolved sweep config and every trial's plan (what a rerun compares)."""
    _write_json(sweep_dir / "sweep.json", {"sweep": sweep.model_dump(mode="json"), "trials": [
        {k: v for k, v in asdict(p).items() if k != "config"} for p in plans
    ], "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
