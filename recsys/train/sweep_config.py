"""The sweep config of ``recsys bench compression``: YAML + ``key=value`` overrides -> a frozen, validated
:class:`SweepConfig` and its base :class:`~recsys.train.config.TrainConfig`; every error at once, with
dotted paths, through the project's one formatter (:mod:`recsys.features.errors`). The tasks a sweep
can measure are the training tasks' registry (:data:`recsys.train.tasks.TASKS`, re-exported here).
See :mod:`recsys.train.sweep` for the format.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from recsys.embeddings.budget import METHODS
from recsys.features.budget_options import budget_option_problems
from recsys.features.errors import Problem, Problems, SpecError, format_value, validation_problems
from recsys.train.config import ConfigError, TrainConfig, config_from_dict, parse_overrides
from recsys.train.tasks import TASKS, Metric, Task

__all__ = ["Metric", "SweepConfig", "SweepConfigError", "Task", "TASKS", "budget_label", "load_sweep_config", "sweep_config_from_dict"]


class SweepConfigError(SpecError):
    """A sweep config failed validation; ``errors`` holds one line per problem."""

    what = "sweep config"


# -- tasks ------------------------------------------------------------------------------------
# The tasks a sweep can measure are the training tasks' one registry (recsys.train.tasks.TASKS):
# each declares its architectures, the metrics a sweep ranks by and the columns it keeps.


# -- the sweep config -------------------------------------------------------------------------


def _ratio(value: Any) -> Any:
    """``"1/16"`` -> 0.0625; numbers pass through (bounds are checked by the field)."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError("allowed: a ratio in (0, 1] as a number or a fraction such as '1/16'") from None
    return value


Ratio = Annotated[float, BeforeValidator(_ratio), Field(gt=0.0, le=1.0)]


def budget_label(ratio: float) -> str:
    """``0.0625`` -> ``"1/16"``, ``1.0`` -> ``"1"``; other ratios as ``"0.3"``."""
    if ratio == 1:
        return "1"
    inverse = 1 / ratio
    if abs(inverse - round(inverse)) < 1e-9 * inverse:
        return f"1/{round(inverse)}"
    return f"{ratio:g}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SweepData(_Section):
    """Args:
        path: the data set folder (``recsys ingest`` / ``recsys synth``); replaces the base config's.
    """

    path: str


class BaseTraining(_Section):
    """Args:
        config: a training config YAML of the task's model (``configs/ctr_*.yaml`` for ``ctr``,
            ``configs/two_tower_*.yaml`` for ``retrieval``); its ``embeddings`` section must not size
            features itself (the sweep's budget solver does).
        overrides: ``dotted.key=value`` overrides of it, as for ``recsys train``.
    """

    config: str
    overrides: list[str] = Field(default_factory=list)


class SweepResources(_Section):
    """Args:
        max_concurrent_trials: trials at once; default: as many as the cluster's CPUs hold, each
            trial taking ``trial_cpus`` plus its training's ``ray.num_workers x ray.cpus_per_worker``.
        trial_cpus: CPUs reserved for a trial's own process (``tune.with_resources``): its training
            driver and the lookup timing.
    """

    max_concurrent_trials: Annotated[int, Field(ge=1)] | None = None
    trial_cpus: Annotated[float, Field(gt=0.0)] = 1.0


class LookupTiming(_Section):
    """The short lookup-throughput timing of each trial's embedding collection (forward only,
    FBGEMM's fused kernel as in training, random Zipf ids at the spec's cardinalities).

    Args:
        enabled: time lookups (before the trial's training).
        batch_size: rows per batch.
        steps: timed forwards per round.
        rounds: timing rounds; the median is reported.
        warmup: untimed forwards first.
    """

    enabled: bool = True
    batch_size: Annotated[int, Field(ge=1)] = 4096
    steps: Annotated[int, Field(ge=1)] = 5
    rounds: Annotated[int, Field(ge=1)] = 3
    warmup: Annotated[int, Field(ge=0)] = 2


class SweepConfig(_Section):
    """The whole sweep config; see the module docstring."""

    task: Literal[tuple(TASKS)] = "ctr"  # type: ignore[valid-type]
    data: SweepData
    base: BaseTraining
    methods: Annotated[list[Literal[METHODS]], Field(min_length=1)]  # type: ignore[valid-type]
    budgets: Annotated[list[Ratio], Field(min_length=1)]
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    keep_full_below: Annotated[int, Field(ge=0)] = 0
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    resources: SweepResources = SweepResources()
    lookup: LookupTiming = LookupTiming()
    keep_checkpoints: bool = False
    """Keep each trial's final checkpoint (default: deleted once its results.json is written)."""

    @field_validator("methods", "budgets", "seeds")
    @classmethod
    def _unique(cls, values: list[Any], info: ValidationInfo) -> list[Any]:
        seen, problems = set(), []
        for i, v in enumerate(values):
            if v in seen:
                problems.append(Problem(f"[{i}]", f"got {format_value(v)}; each {info.field_name[:-1]} may appear once"))
            seen.add(v)
        if problems:
            raise Problems(problems)
        return values

    @field_validator("options")
    @classmethod
    def _typed_options(cls, options: dict[str, dict[str, Any]], info: ValidationInfo) -> dict[str, dict[str, Any]]:
        methods = info.data.get("methods")
        problems = []
        for method, opts in options.items():
            if method not in METHODS:
                problems.append(Problem(method, f"unknown method; allowed: {list(METHODS)}"))
                continue
            # Options of a method left out of `methods` (e.g. `methods=[full,hashed]` on a shipped
            # config with unified options) are still checked, then unused: narrowing a sweep from the
            # command line must not need `options={}` as well.
            problems.extend(budget_option_problems(method, opts, path=method)[1])
        if problems:
            raise Problems(problems)
        return options


def _set(raw: dict, path: list[str], value: Any, errors: list[str]) -> None:
    node = raw
    for i, key in enumerate(path[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            errors.append(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is {child!r}, not a section")
            return
        node = child
    node[path[-1]] = value


def sweep_config_from_dict(raw: Any, overrides: list[str] | None = None, source: str = "<dict>") -> tuple[SweepConfig, TrainConfig]:
    """Validate a parsed sweep config and its base training config; every error at once.

    Returns:
        The sweep config and the base training config (with the sweep's ``data.path``).

    Raises:
        SweepConfigError: lines with dotted paths; the base training config's own problems come
            under ``base.`` (``base.train.epochs: got 0; allowed: >= 1``).
    """
    if not isinstance(raw, dict):
        raise SweepConfigError(source, [f"<config>: got {type(raw).__name__}; expected a mapping of sections"])
    raw = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy
    parsed, errors = parse_overrides(list(overrides or []))
    for path, value in parsed:
        _set(raw, path, value, errors)
    sweep = None
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        errors += [p.line("<config>") for p in validation_problems(exc, raw, SweepConfig)]
    base = None
    base_raw = raw.get("base") if isinstance(raw.get("base"), dict) else {}
    data_raw = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    if isinstance(base_raw.get("config"), str) and isinstance(base_raw.get("overrides", []), list):
        base, base_errors = _base_config(base_raw["config"], [str(o) for o in base_raw.get("overrides", [])], data_raw.get("path"))
        errors += base_errors
        task = TASKS.get(raw.get("task", "ctr")) if isinstance(raw.get("task", "ctr"), str) else None
        if base is not None and task is not None:
            errors += _task_problems(task, base, base_raw["config"])
    if errors:
        raise SweepConfigError(source, errors)
    assert sweep is not None and base is not None
    return sweep, base


def _task_problems(task: type[Task], base: TrainConfig, path: str) -> list[str]:
    """The base config must train the sweep's task and report the metrics it ranks by."""
    arch = base.model.arch
    if arch not in task.archs:
        other = next((t for t in TASKS.values() if arch in t.archs), None)
        fix = f"set task: {other.name}, or " if other is not None else ""
        return [f"base.model.arch: got {arch!r} (from {path}); task {task.name!r} trains {' / '.join(task.archs)} models: "
                f"{fix}use a base config of that model"]
    ks = list(getattr(base.model, "eval_ks", []))
    missing = [k for k in task.eval_ks if k not in ks]
    if missing:
        return [f"base.model.eval_ks: got {ks}; task {task.name!r} reports {', '.join(m.label for m in task.metrics)}: "
                f"add {missing}"]
    return []


def _base_config(path: str, overrides: list[str], data_path: Any) -> tuple[TrainConfig | None, list[str]]:
    """The base training config with the sweep's data path; its problems under ``base.``."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        return None, [f"base.config: cannot read {path}: {exc.strerror}"]
    except yaml.YAMLError as exc:
        return None, [f"base.config: {path} is not valid YAML: {str(exc).splitlines()[0]}"]
    if isinstance(data_path, str) and isinstance(raw, dict):
        raw.setdefault("data", {})
        if isinstance(raw["data"], dict):
            raw["data"]["path"] = data_path
    try:
        config = config_from_dict(raw, overrides, source=path)
    except ConfigError as exc:
        return None, [f"base.{line}" if not line.startswith("override") else f"base.overrides: {line}" for line in exc.errors]
    errors = []
    emb = config.embeddings
    if emb.budget is not None or emb.compression or emb.groups:
        errors.append(
            f"base.config: {path} sets embeddings.{'budget' if emb.budget else 'compression' if emb.compression else 'groups'}; "
            "the sweep sizes every feature with the budget solver: use a base config without an embeddings section"
        )
    if config.run_dir or config.resume:
        errors.append("base.config: run_dir / resume are set by the sweep (one run folder per trial); remove them")
    return config, errors


def load_sweep_config(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, TrainConfig]:
    """Load a sweep YAML and apply ``key=value`` overrides; see :func:`sweep_config_from_dict`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SweepConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise SweepConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return sweep_config_from_dict(raw if raw is not None else {}, overrides, source=str(path))
