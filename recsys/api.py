"""The jobs as Python functions, for notebooks and scripts: the library calls ``recsys train``,
``recsys export`` and ``recsys bench compression`` make, returning typed results.

    import recsys
    run = recsys.train("configs/ctr_synthetic_full.yaml", {"train.epochs": 1, "run_dir": "runs/nb"})
    run.metrics["auc"], run.run_dir, run.tensorboard_dir
    bundle = recsys.export(run_dir, "bundles/nb")            # a two-tower run
    sweep = recsys.bench_compression("configs/bench_tiny.yaml", out="runs/bench-nb")

Overrides are the command line's ``dotted.key=value`` strings, or a mapping ``{"train.epochs": 2}``
(values as YAML / JSON: lists and dicts too). Errors are the command line's: a
:class:`~recsys.train.config.ConfigError` lists every bad key with its dotted path, a
``ValueError`` names the file / field / value, all before any worker starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from recsys.train.config import TrainConfig

Overrides = Sequence[str] | Mapping[str, Any]


def _override_list(overrides: Overrides | None) -> list[str]:
    """``{"train.epochs": 2, "model.dense_layers": [64, 16]}`` -> ``["train.epochs=2", "model.dense_layers=[64, 16]"]``."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TypeError(f"overrides: got the string {overrides!r}; give a list of 'key=value' strings or a dict")
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]  # JSON is YAML
    return [str(o) for o in overrides]


def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass(frozen=True)
class RunResult:
    """What a training run left: its folder, ``results.json`` and the numbers in it.

    Attributes:
        run_dir: the run folder (checkpoints under ``ray/``, TensorBoard curves, ``results.json``).
        results_path: ``run_dir / "results.json"``.
        metrics: every number of ``results.json`` (``auc``, ``logloss``, ``recall@20``,
            ``samples_per_s``, ``embedding_bytes``, ``compression_ratio`` ...).
        results: the whole ``results.json`` (history, loss curve, plan, config ...).
        config: the resolved training config.
    """

    run_dir: Path
    results_path: Path
    metrics: Mapping[str, float]
    results: Mapping[str, Any] = field(repr=False)
    config: "TrainConfig" = field(repr=False)

    @property
    def tensorboard_dir(self) -> Path:
        """``tensorboard --logdir`` this (or the runs/ folder above it)."""
        from recsys.tensorboard import SUBDIR

        return self.run_dir / SUBDIR


def load_train_config(config: "str | Path | Mapping[str, Any] | TrainConfig", overrides: Overrides | None = None) -> "TrainConfig":
    """A :class:`~recsys.train.config.TrainConfig` from a YAML path, a dict or a config, overrides applied."""
    from recsys.train.config import TrainConfig, config_from_dict, load_config

    if isinstance(config, (str, Path)):
        return load_config(config, _override_list(overrides))
    raw = config.model_dump(mode="json") if isinstance(config, TrainConfig) else dict(config)
    return config_from_dict(raw, _override_list(overrides), source="<config>")


def train(
    config: "str | Path | Mapping[str, Any] | TrainConfig", overrides: Overrides | None = None, *, name: str | None = None,
) -> RunResult:
    """Train as ``recsys train CONFIG OVERRIDES...`` does (the same checks, Ray Train loop and
    ``results.json``); returns when the run has finished.

    Args:
        config: a config YAML path, a dict of one, or a :class:`~recsys.train.config.TrainConfig`.
        overrides: ``["train.epochs=1", ...]`` or ``{"train.epochs": 1, ...}``.
        name: names the default run folder ``runs/train-<name>-<time>`` (default: the YAML's stem,
            else ``run``) when the config has no ``run_dir``.

    Raises:
        ConfigError: bad keys or values (every one, with its dotted path).
        ValueError / FileNotFoundError: bad data or run folder, found before training starts; a run
            that stopped (e.g. a non-finite loss, naming the step).
    """
    from recsys import console
    from recsys.train.run import RESULTS, launch, prepare

    console.setup()
    resolved = load_train_config(config, overrides)
    if name is None:
        name = Path(config).stem if isinstance(config, (str, Path)) else "run"
    prepared = prepare(resolved, config_name=name)
    for line in [*prepared.notes, *prepared.warnings]:
        console.say(line)
    results = launch(prepared)
    return RunResult(prepared.run_dir, prepared.run_dir / RESULTS, _scalars(results), results, prepared.config)


@dataclass(frozen=True)
class ExportResult:
    """A serving bundle: its folder and manifest (items, index, precision, source run)."""

    bundle_dir: Path
    manifest: Mapping[str, Any] = field(repr=False)


def export(
    run_dir: str | Path, out: str | Path, *, precision: str = "fp32", index: str = "exact",
    index_settings: Mapping[str, int] | None = None, checkpoint: str | Path | None = None, require_all_features: bool = False,
) -> ExportResult:
    """Export a two-tower run as ``recsys export RUN_DIR --out OUT`` does (same defaults).

    Raises:
        ValueError / FileNotFoundError: not a two-tower run, ``out`` exists, a missing checkpoint.
    """
    from recsys import console
    from serving.bundle import load_bundle
    from serving.export import export_bundle

    console.setup()
    path = export_bundle(run_dir, out, precision=precision, index=index, index_settings=dict(index_settings or {}),
                         checkpoint=checkpoint, require_all_features=require_all_features, log=console.say)
    return ExportResult(Path(path), load_bundle(path).manifest)


@dataclass(frozen=True)
class SweepResult:
    """A compression sweep: its folder, ``results.parquet`` (one row per trial), the report and plot."""

    sweep_dir: Path
    results_path: Path
    report_path: Path
    pareto_path: Path
    rows: Sequence[Mapping[str, Any]] = field(repr=False)  # results.parquet as dicts


def bench_compression(config: str | Path, overrides: Overrides | None = None, *, out: str | Path | None = None) -> SweepResult:
    """Run a compression sweep as ``recsys bench compression CONFIG`` does: plan every trial,
    run the pending ones (an earlier sweep in ``out`` continues), collect, write the report.

    Args:
        config: a sweep config YAML (``configs/bench_*.yaml``).
        overrides: of the sweep config, e.g. ``{"seeds": [0]}``.
        out: the sweep folder (default ``runs/bench-<config>-<time>``).
    """
    import pyarrow.parquet as pq

    from recsys import console
    from recsys.folders import check_sweep_dir
    from recsys.train.report import write_report
    from recsys.train.sweep import PARQUET, collect, load_sweep_config, plan_sweep, run_sweep, write_plan

    console.setup()
    sweep, base = load_sweep_config(config, _override_list(overrides))
    stem = Path(config).stem.removeprefix("bench_")
    sweep_dir = Path(out) if out else Path("runs") / f"bench-{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_sweep_dir(sweep_dir, flag="out")  # a new or empty folder, or an earlier sweep: never a run or a data set
    plans = plan_sweep(sweep, base, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_plan(plans, sweep_dir, sweep)
    try:
        run_sweep(sweep, base, plans, sweep_dir)
    finally:  # as the command: what finished is collected and reported, also after Ctrl-C
        collect(sweep.task, plans, sweep_dir)
        report, pareto = write_report(sweep_dir)
    rows = pq.read_table(sweep_dir / PARQUET).to_pylist()
    return SweepResult(sweep_dir.resolve(), sweep_dir.resolve() / PARQUET, Path(report), Path(pareto), rows)
