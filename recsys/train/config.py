"""Training configs: YAML + ``key=value`` overrides -> a frozen, validated :class:`TrainConfig`.

    recsys train configs/ctr_synthetic_full.yaml ray.num_workers=2 train.epochs=1 run_dir=runs/a

A config file starts with a comment giving the command that runs it, then six sections::

    data:       {path: data/synthetic_ctr, batch_size: 4096}
    model:      {arch: dlrm, dense_layers: [64, 16], over_layers: [256, 128, 1]}
    embeddings: {budget: {method: hashed, ratio: 0.0625}, compression: {C3: {kind: qr, num_collisions: 64}}}
    optimizer:  {embedding: {kind: rowwise_adagrad, lr: 0.05}, dense: {kind: adam, lr: 0.001}}
    train:      {epochs: 2, log_every: 50, checkpoint_every: 0}
    sharding:   {sharding_types: [data_parallel, table_wise], tables: {C3__full: {sharding_types: [column_wise]}}}
    ray:        {num_workers: 1, max_failures: 0}

plus top-level ``run_dir`` and ``resume``. Every problem (YAML, override syntax, unknown keys
with the allowed ones, bad values) is reported at once in one :class:`ConfigError`, each line
with its dotted path. Defaults live here only.

The data set's feature spec (from its manifest) is resolved against the ``embeddings`` section
by :func:`resolve_spec`: first ``budget`` (the budget solver picks one method's hyperparameters
for every feature at a memory ratio), then per-feature ``compression`` overrides, so one data
set serves every compression family's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from recsys.features.budget_options import BUDGET_METHODS, BudgetOptions, budget_option_problems
from recsys.features.compression import CompressionSpec, FeatureGroup
from recsys.features.errors import Problem, Problems, SpecError, validation_problems
from recsys.features.methods.base import PRECISION_BYTES
from recsys.features.spec import DatasetSpec
from recsys.models.ctr import DCNConfig, DLRMConfig
from recsys.models.two_tower import TwoTowerConfig
from recsys.train.sharding import SHARDING_TYPES

# The model section picks the task (recsys.train.tasks): dlrm / dcn -> CTR, two_tower -> retrieval.
ModelConfig = Annotated[Union[DLRMConfig, DCNConfig, TwoTowerConfig], Field(discriminator="arch")]

__all__ = ["ConfigError", "TrainConfig", "load_config", "config_from_dict", "parse_overrides", "resolve_spec"]


class ConfigError(SpecError):
    """A training config failed validation; ``errors`` holds one line per problem."""

    what = "training config"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Args:
        path: data set folder written by ``recsys ingest`` / ``recsys synth``.
        spec: a feature spec YAML to read the data with; default: the data set's manifest spec.
        source_spec: the feature spec YAML the data set at ``path`` is ingested / generated from
            (its cardinalities are caps). Training never reads it; ``recsys plan`` sizes the tables
            from it when no data set is at ``path`` (an upper bound on the ingested vocabularies).
        batch_size: GLOBAL training batch; each of N workers takes ``batch_size / N`` rows.
        eval_batch_size: global evaluation batch.
        check_ranges: scan every split once before training for ids outside ``[0, cardinality)``.
        shuffle_files: read training files in a random order each epoch.
        shuffle_buffer_rows: rows of Ray Data's local shuffle buffer per worker (0: none).
    """

    path: str
    spec: str | None = None
    source_spec: str | None = None
    batch_size: Annotated[int, Field(ge=1)] = 4096
    eval_batch_size: Annotated[int, Field(ge=1)] = 16384
    check_ranges: bool = True
    shuffle_files: bool = True
    shuffle_buffer_rows: Annotated[int, Field(ge=0)] = 0


class BudgetConfig(_Section):
    """Solve one method's hyperparameters for every feature so the tables take ``ratio`` of full.

    Args:
        method: the compression family the solver sizes.
        ratio: the plan's bytes as a fraction of the full tables', in ``(0, 1]``.
        options: the method's other hyperparameters, typed per method (see
            :mod:`recsys.features.budget_options`): e.g. ``{num_hashes: 3}`` for multi_hash,
            ``{operation: concat}`` for qr, ``{num_chunks: 4}`` for unified. Unknown keys and keys
            the solver sets itself (``num_buckets``, ``num_collisions``, ...) are errors.
        keep_full_below: features with fewer ids stay full; the others are sized so the WHOLE
            plan takes ``ratio`` (small tables cost little memory but carry much of the signal).
    """

    method: Literal[BUDGET_METHODS]  # type: ignore[valid-type]
    ratio: Annotated[float, Field(gt=0.0, le=1.0)]
    options: dict[str, Any] = Field(default_factory=dict)
    keep_full_below: Annotated[int, Field(ge=0)] = 0

    @field_validator("options")
    @classmethod
    def _typed_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # A field validator (not a model one), so a bad ratio and a bad option are reported together.
        if "method" in info.data:  # else the method itself is the error
            _, problems = budget_option_problems(info.data["method"], options, path="")
            if problems:
                raise Problems(problems)
        return options

    @property
    def method_options(self) -> BudgetOptions:
        """``options`` as the method's typed schema, defaults filled in (what the solver receives)."""
        typed, _ = budget_option_problems(self.method, self.options)
        assert typed is not None  # checked at load
        return typed


class EmbeddingsConfig(_Section):
    """Args:
        budget: solve a method at a memory ratio for all vocabulary features (applied first).
        compression: per-feature compression overrides, e.g. ``{C3: {kind: hashed, num_buckets: 100000}}``.
        groups: extra unified groups (``{name, num_buckets, num_chunks, num_tables}``) for overrides.
        precision: row precision of EVERY sparse feature's tables, whatever its method: ``fp32``,
            or ``fp16`` (half the bytes per row; the budget solver sizes for it, so a ratio buys
            about twice the rows). Applied after the budget and the overrides.
    """

    budget: BudgetConfig | None = None
    precision: Literal["fp32", "fp16"] = "fp32"
    compression: dict[str, CompressionSpec] = Field(default_factory=dict)
    groups: list[FeatureGroup] = Field(default_factory=list)


class EmbeddingOptimizerConfig(_Section):
    """The fused table optimizer (FBGEMM updates rows inside the backward)."""

    kind: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"] = "rowwise_adagrad"
    lr: Annotated[float, Field(gt=0.0)] = 0.05
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0


class DenseOptimizerConfig(_Section):
    """The torch optimizer of the dense (data-parallel) parameters."""

    kind: Literal["adam", "adagrad", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0


class OptimizerConfig(_Section):
    embedding: EmbeddingOptimizerConfig = EmbeddingOptimizerConfig()
    dense: DenseOptimizerConfig = DenseOptimizerConfig()


class EarlyStoppingConfig(_Section):
    """Stop when a validation metric has not improved for ``patience`` evaluations, then test the
    best parameters (see ``docs/early-stopping.md``).

    Args:
        metric: a validation metric the task yields, ``val_`` + its name (``val_auc``,
            ``val_recall@20``: the ``@k`` must be in ``model.eval_ks``).
        mode: ``max`` or ``min``; default: the metric's own direction (``val_logloss``: min).
        patience: evaluations in a row without improvement that stop the run.
        min_delta: an improvement must beat the best value by more than this.
    """

    metric: str
    mode: Literal["max", "min"] | None = None
    patience: Annotated[int, Field(ge=1)]
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0


class LoopConfig(_Section):
    """Args:
        epochs: passes over the training split.
        max_steps: stop after this many steps (global count) even mid-epoch.
        log_every: a log line every N steps.
        eval_every: validation metrics every N steps; 0: at the end of each epoch.
        checkpoint_every: a checkpoint every N steps (0: only at the end).
        num_checkpoints: checkpoints kept (oldest deleted by Ray); with early stopping, the
            checkpoints holding the best parameters so far are kept first (and the latest always).
        early_stopping: stop on a validation metric at each evaluation; default: train all steps.
        seed: model init, file order and shuffle-buffer seed (same config and seed -> same run).
    """

    epochs: Annotated[int, Field(ge=1)] = 1
    max_steps: Annotated[int, Field(ge=1)] | None = None
    log_every: Annotated[int, Field(ge=1)] = 50
    eval_every: Annotated[int, Field(ge=0)] = 0
    checkpoint_every: Annotated[int, Field(ge=0)] = 0
    num_checkpoints: Annotated[int, Field(ge=1)] = 2
    early_stopping: EarlyStoppingConfig | None = None
    seed: int = 0


class TableConstraint(_Section):
    sharding_types: list[Literal[SHARDING_TYPES]] | None = None  # type: ignore[valid-type]
    compute_kernels: list[Literal["fused", "dense"]] | None = None


class ShardingConfig(_Section):
    """Constraints for TorchRec's planner.

    Args:
        sharding_types: allowed for every table (CPU: data_parallel, table_wise, column_wise,
            table_column_wise; row-wise kinds need CUDA).
        tables: per physical table (names as in the plan, e.g. ``C3__full``) overrides.
    """

    sharding_types: list[Literal[SHARDING_TYPES]] = ["data_parallel", "table_wise", "column_wise", "table_column_wise"]  # type: ignore[valid-type]
    tables: dict[str, TableConstraint] = Field(default_factory=dict)


class RayConfig(_Section):
    """Args:
        num_workers: Ray Train workers (= torch.distributed world size).
        use_gpu: one GPU per worker, nccl; default CPU with gloo.
        cpus_per_worker: CPUs reserved per worker.
        max_failures: restarts of the worker group from the last checkpoint.
        address: Ray cluster address; default the ``RAY_ADDRESS`` environment variable, else local.
        storage_path: where Ray keeps the run's checkpoints: a folder every node reaches (NFS or
            another shared mount) for multi-node runs; the run goes to ``<storage_path>/<run_dir
            name>/ray``. Default: the run directory itself (one machine).
    """

    num_workers: Annotated[int, Field(ge=1)] = 1
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1.0
    max_failures: Annotated[int, Field(ge=0)] = 0
    address: str | None = None
    storage_path: str | None = None


class TrainConfig(_Section):
    """The whole training config; see the module docstring."""

    data: DataConfig
    model: ModelConfig = DLRMConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: LoopConfig = LoopConfig()
    sharding: ShardingConfig = ShardingConfig()
    ray: RayConfig = RayConfig()
    run_dir: str | None = None
    resume: bool = False
    resume_allow_changes: list[str] = Field(default_factory=list)
    """Dotted config keys (or sections) a resumed run may change, e.g. ``[train.max_steps]``."""


# -- loading ----------------------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> tuple[list[tuple[list[str], Any]], list[str]]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``[(["a", "b"], 1), (["c"], [1, 2])]`` and syntax errors."""
    parsed, errors = [], []
    for item in overrides:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or not key.strip() or any(not p for p in path):
            errors.append(f"override {item!r}: expected key=value with a dotted key, e.g. train.epochs=2")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            errors.append(f"override {item!r}: value is not YAML: {str(exc).splitlines()[0]}")
            continue
        parsed.append((path, value))
    return parsed, errors


def _set_path(raw: dict, path: list[str], value: Any, errors: list[str]) -> None:
    node = raw
    for i, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            errors.append(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is {child!r}, not a section")
            return
        node = child
    node[path[-1]] = value


def config_from_dict(raw: Any, overrides: list[str] | None = None, source: str = "<dict>") -> TrainConfig:
    """Validate a parsed config after applying ``key=value`` overrides; all errors at once."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"<config>: got {type(raw).__name__}; expected a mapping of sections"])
    raw = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy: never change the caller's dict
    parsed, errors = parse_overrides(list(overrides or []))
    for path, value in parsed:
        _set_path(raw, path, value, errors)
    if isinstance(raw.get("model"), dict):
        raw["model"].setdefault("arch", "dlrm")  # the default model, also when only overrides name it
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, errors + [p.line("<config>") for p in validation_problems(exc, raw, TrainConfig)]) from None
    errors += early_stopping_problems(config)
    if errors:
        raise ConfigError(source, errors)
    return config


def early_stopping_problems(config: TrainConfig) -> list[str]:
    """``train.early_stopping`` must watch a validation metric the config's task yields, in its direction."""
    from recsys.train.tasks import task_class

    es = config.train.early_stopping
    if es is None:
        return []
    task = task_class(config.model.arch)
    names = task.metric_names(config.model)
    allowed = [f"val_{n}" for n in names]
    if es.metric not in allowed:
        stem, at, k = es.metric.partition("@")
        where = f"task {task.name!r} ({config.model.arch}) yields {allowed}"
        if at and any(a.partition("@")[0] == stem for a in allowed):
            return [f"train.early_stopping.metric: got {es.metric!r}; its cut-off {k.partition('/')[0]} is not in model.eval_ks "
                    f"{list(config.model.eval_ks)}: add it there, or watch another metric; {where}"]
        return [f"train.early_stopping.metric: got {es.metric!r}; {where}"]
    higher = task.higher_is_better(es.metric)
    if es.mode is not None and (es.mode == "max") != higher:
        return [f"train.early_stopping.mode: got {es.mode!r} for {es.metric}, where {'higher' if higher else 'lower'} "
                f"is better; use mode: {'max' if higher else 'min'} or leave mode out"]
    return []


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML training config and apply overrides.

    Raises:
        ConfigError: unreadable file, bad YAML, bad overrides, unknown keys or bad values.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return config_from_dict(raw if raw is not None else {}, overrides, source=str(path))


# -- the spec the model is built from ---------------------------------------------------------


def resolve_spec(config: TrainConfig, data_spec: DatasetSpec, counts: dict[str, np.ndarray] | None = None) -> tuple[DatasetSpec, list[str]]:
    """Apply the ``embeddings`` section to a data set's spec.

    Returns:
        The spec the model is built from, and notes (the budget solver's).

    Raises:
        ConfigError: an override names a feature the data set does not have (the known sparse
            features are listed), or the resulting spec is invalid (e.g. more buckets than ids).
    """
    emb = config.embeddings
    sparse_names = [f.name for f in data_spec.sparse]
    errors = [
        f"embeddings.compression.{name}: no sparse feature {name!r} in data set {data_spec.name!r}; "
        f"known sparse features: {sparse_names}"
        for name in emb.compression
        if name not in sparse_names
    ]
    if errors:
        raise ConfigError("embeddings", errors)
    spec, notes = data_spec, []
    if emb.budget is not None:
        spec, note = _solve(spec, emb.budget, counts, emb.precision)
        notes.append(note)
    if emb.compression or emb.groups or emb.precision != "fp32":
        raw = spec.to_dict()
        for f in raw["features"]:
            if f["name"] in emb.compression:
                f["compression"] = emb.compression[f["name"]].model_dump(mode="json")
            if f.get("kind") == "sparse" and emb.precision != "fp32":
                f["compression"] = {**f.get("compression", {"kind": "full"}), "precision": emb.precision}
        raw["groups"] = raw["groups"] + [g.model_dump(mode="json") for g in emb.groups]
        try:
            spec = DatasetSpec.model_validate(raw)
        except ValidationError as exc:
            problems = validation_problems(exc, raw, DatasetSpec)
            lines = [_override_path(p, emb).line("<spec>") for p in problems]
            raise ConfigError("embeddings", lines) from None
    return spec, notes


def _solve(
    spec: DatasetSpec, budget: BudgetConfig, counts: dict[str, np.ndarray] | None, precision: str = "fp32"
) -> tuple[DatasetSpec, str]:
    """Run the budget solver, on the features with at least ``keep_full_below`` ids only."""
    from recsys.embeddings.budget import solve_budget

    small = [f for f in spec.sparse if f.has_vocab and int(f.cardinality) < budget.keep_full_below]
    if not small:
        solution = solve_budget(spec, budget.method, target_ratio=budget.ratio, counts=counts, options=budget.method_options,
                                precision=precision)
        return solution.spec, solution.format()
    small_names = {f.name for f in small}
    full_bytes = sum(int(f.cardinality) * f.embedding_dim * 4 for f in spec.sparse if f.has_vocab)
    small_bytes = sum(int(f.cardinality) * f.embedding_dim * PRECISION_BYTES[precision] for f in small)
    target = round(budget.ratio * full_bytes) - small_bytes
    if target <= 0:
        raise ConfigError(
            "embeddings.budget",
            [f"embeddings.budget.keep_full_below: the {len(small)} features below {budget.keep_full_below} ids alone take "
             f"{small_bytes:,} B, more than ratio {budget.ratio} of {full_bytes:,} B; lower keep_full_below"],
        )
    large = spec.model_copy(update={"features": [f for f in spec.features if f.name not in small_names]})
    solution = solve_budget(large, budget.method, target_bytes=target, counts=counts, options=budget.method_options,
                            precision=precision)
    solved = {f.name: f for f in solution.spec.features}
    features = [solved.get(f.name, f) for f in spec.features]
    resolved = spec.model_copy(update={"features": features, "groups": list(spec.groups) + list(solution.spec.groups)})
    resolved = DatasetSpec.model_validate(resolved.to_dict())
    note = (
        f"budget: {len(small)} features with < {budget.keep_full_below} ids kept full ({small_bytes:,} B); "
        f"the others solved for the remaining {target:,} B\n{solution.format()}"
    )
    return resolved, note


def _override_path(problem: Problem, emb: EmbeddingsConfig) -> Problem:
    """A problem of the overridden spec, at the config key that caused it.

    ``features[C3].compression.num_buckets`` -> ``embeddings.compression.C3.num_buckets``;
    ``groups[g].num_chunks`` -> ``embeddings.groups[g].num_chunks`` for a group of the config.
    """
    path = problem.path
    for name in emb.compression:
        prefix = f"features[{name}].compression"
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            return Problem(f"embeddings.compression.{name}{path[len(prefix):]}", problem.message)
    for g in emb.groups:
        prefix = f"groups[{g.name}]"
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            return Problem(f"embeddings.{path}", problem.message)
    where = f" at {path}" if path else ""
    return Problem("embeddings", f"applied to the data set's spec{where}: {problem.message}")
