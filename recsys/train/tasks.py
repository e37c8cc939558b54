"""Tasks: what a job adds to the one training loop (model, loss, evaluation, result keys).

``recsys train`` runs one loop (:mod:`recsys.train.loop`) for every job; the model config's
``arch`` picks the task from the one registry, :data:`TASKS`:

========================  ==========================  =====================================
task                      ``model.arch``              metrics (exact, every row once)
========================  ==========================  =====================================
:class:`CTR`              ``dlrm``, ``dcn``           AUC, logloss
:class:`Retrieval`        ``two_tower``               Recall / NDCG / HitRate@k, MRR,
                                                      coverage@k, recall by popularity third,
                                                      over the WHOLE item catalogue
========================  ==========================  =====================================

A task declares its architectures, the metrics one evaluation yields (the keys early stopping
may watch, with their direction), the metrics a compression sweep ranks by, and the keys it
writes into ``results.json``; it builds the unsharded module (tables on ``meta``;
``module(batch) -> (loss, outputs)``, so DMP can wrap it), checks the data before Ray starts,
scores a split on all ranks with an :class:`EvalContext`, and formats its metrics for the log
and the summary line. A new job adds one :class:`Task` subclass and one line in :data:`TASKS`;
the loop, the driver, the config checks and the sweeps read the registry.
"""

from __future__ import annotations

import abc

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from recsys import metrics
from recsys.features.spec import DatasetSpec

if TYPE_CHECKING:
    from recsys.data.loader import ShardReader
    from recsys.embeddings import EmbeddingPlan
    from recsys.train.config import TrainConfig


@dataclass(frozen=True)
class Metric:
    """One quality metric a compression sweep reads from a trial.

    Args:
        name: its ``results.parquet`` column (``recall_at_100``).
        higher_is_better: which way is better (ranks methods, signs the report's Δ).
        label: how the report and the plot write it (``recall@100``).
        key: its key in a trial's ``results.json`` (``recall@100``); default ``name``.
        oracle: the column holding the data set's oracle value of the same metric, drawn and
            reported as a reference where trials have it (synthetic data); ``None``: none shown.
    """

    name: str
    higher_is_better: bool
    label: str
    key: str | None = None
    oracle: str | None = None

    @property
    def source(self) -> str:
        """The ``results.json`` key."""
        return self.key or self.name


@dataclass(frozen=True)
class EvalContext:
    """What a task's evaluation reads besides the model and the split's reader.

    Args:
        config: the resolved training config.
        files: per split (``train`` / ``validation`` / ``test``), its parquet files (e.g. the
            training rows whose items leave the ranking).
        split: the split being scored, ``validation`` or ``test``.
    """

    config: "TrainConfig"
    files: Mapping[str, list[Path]]
    split: str


class Task(abc.ABC):
    """The contract of a task; subclasses set the class attributes and implement every abstract
    method (a subclass missing one cannot be instantiated: ``TypeError`` names it).

    Class attributes (read by the registry, the config checks and the sweeps without an instance):

    * ``name``: the sweep config's ``task``;
    * ``archs``: the ``model.arch`` values this task trains;
    * ``metrics``: the quality metrics a compression sweep reads from ``results.json`` (the first
      ranks methods: :attr:`primary`);
    * ``extra``: further ``(results.parquet column, results.json key)`` pairs a sweep keeps,
      not ranked (validation metrics, the oracle's, baselines);
    * ``eval_ks``: cut-offs the base config's ``model.eval_ks`` must hold for ``metrics``;
    * ``primary`` and ``columns``: derived (the first metric; every metric column in order).
    """

    name: ClassVar[str]
    archs: ClassVar[tuple[str, ...]]
    metrics: ClassVar[tuple[Metric, ...]]
    extra: ClassVar[tuple[tuple[str, str], ...]] = ()
    eval_ks: ClassVar[tuple[int, ...]] = ()
    primary: ClassVar[Metric]
    columns: ClassVar[tuple[tuple[str, str], ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.primary = cls.metrics[0]
        cls.columns = tuple((m.name, m.source) for m in cls.metrics) + tuple(cls.extra)

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else None  # the data set's folder

    @classmethod
    @abc.abstractmethod
    def metric_names(cls, model: Any) -> tuple[str, ...]:
        """The keys one evaluation of the model yields (validation prefixes them ``val_``),
        without ``rows`` and baselines: what early stopping may watch. ``model``: the config's
        ``model`` section."""

    @classmethod
    @abc.abstractmethod
    def higher_is_better(cls, name: str) -> bool:
        """The direction of a metric of :meth:`metric_names` (a ``val_`` prefix is ignored)."""

    @abc.abstractmethod
    def check_data(self, files: dict[str, list[Path]], spec: DatasetSpec, root: Path) -> None:
        """Driver side, before Ray starts: raise ``ValueError`` naming file / row / field."""

    @abc.abstractmethod
    def plan(self, spec: DatasetSpec, counts: dict[str, np.ndarray] | None, model: Any = None) -> "EmbeddingPlan":
        """The embedding plan of the model this task builds (every physical table, exact bytes);
        ``model``: the config's ``model`` section, where it decides which tables exist (``None``: defaults)."""

    @abc.abstractmethod
    def build(self, config: "TrainConfig", spec: DatasetSpec, counts: dict[str, np.ndarray] | None, device: torch.device) -> torch.nn.Module:
        """The unsharded module, tables on ``meta``: ``module(batch) -> (loss, outputs)``."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, reader: "ShardReader", device: torch.device, context: EvalContext) -> dict[str, float]:
        """Exact metrics of one split over all ranks (collective; the same dict on every rank);
        includes ``rows``."""

    @abc.abstractmethod
    def results(self, final: Mapping[str, Any], oracle: Mapping[str, Any]) -> dict[str, Any]:
        """The task's own keys of ``results.json``, from the loop's final report (test metrics
        unprefixed, validation ``val_``) and the data set's oracle (synthetic data; else ``{}``)."""

    @abc.abstractmethod
    def describe(self, m: dict[str, Any], prefix: str = "") -> str:
        """``m`` as a short phrase for the log (``prefix`` e.g. ``val_``)."""

    @abc.abstractmethod
    def summary(self, results: dict[str, Any]) -> str:
        """The driver's last line before ``run_dir:`` (test metrics against the baselines)."""


# Keys of the loop's final report that are bookkeeping, not a task's metrics.
BOOKKEEPING = frozenset({
    "final", "step", "epoch", "samples", "steps", "test_rows", "val_rows", "train_seconds", "samples_per_s",
    "world_size", "resumed_from_step", "best_step", "stopped_early", "early_stopping_score",
})


class CTR(Task):
    """Click-through rate: BCE on 0/1 labels; exact AUC and logloss."""

    name = "ctr"
    archs = ("dlrm", "dcn")
    metrics = (Metric("auc", True, "AUC"), Metric("logloss", False, "logloss"))
    extra = (("val_auc", "val_auc"), ("val_logloss", "val_logloss"), ("oracle_auc", "oracle_auc"))

    @classmethod
    def metric_names(cls, model: Any) -> tuple[str, ...]:
        return ("auc", "logloss")

    @classmethod
    def higher_is_better(cls, name: str) -> bool:
        return name.removeprefix("val_") != "logloss"

    def plan(self, spec: DatasetSpec, counts: dict[str, np.ndarray] | None, model: Any = None) -> "EmbeddingPlan":
        from recsys.embeddings import compile_plan

        return compile_plan(spec, counts)

    def check_data(self, files: dict[str, list[Path]], spec: DatasetSpec, root: Path) -> None:
        from recsys.train.checks import check_labels

        check_labels(files, spec)

    def build(self, config: "TrainConfig", spec: DatasetSpec, counts: dict[str, np.ndarray] | None, device: torch.device) -> torch.nn.Module:
        from recsys.embeddings import build_embedding_collection
        from recsys.models.ctr import CTRTask, build_ctr_model
        from recsys.train import sharding

        torch.manual_seed(config.train.seed)  # same dense init on every rank (DDP also broadcasts)
        collection = build_embedding_collection(spec, device="meta", counts=counts)
        sharding.materialize_dense(collection, device)
        return CTRTask(build_ctr_model(config.model, spec, collection, device=device))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, reader: "ShardReader", device: torch.device, context: EvalContext) -> dict[str, float]:
        model.eval()
        probs, labels = [], []
        for batch, real in reader.eval_batches():
            _, logits = model(batch.to(device, non_blocking=True))
            probs.append(torch.sigmoid(logits[:real]).float().cpu())  # (real,)
            labels.append(batch.labels[:real])
        model.train()
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (torch.cat(probs).numpy(), torch.cat(labels).numpy()))
        p = np.concatenate([g[0] for g in gathered])
        y = np.concatenate([g[1] for g in gathered])
        return {"auc": metrics.auc(y, p), "logloss": metrics.logloss(y, p), "rows": int(y.size)}

    def results(self, final: Mapping[str, Any], oracle: Mapping[str, Any]) -> dict[str, Any]:
        # These keys and their order are what CTR runs always wrote (sweeps read them).
        return {
            "auc": final.get("auc"), "logloss": final.get("logloss"),
            "oracle_auc": oracle.get("auc"), "oracle_logloss": oracle.get("logloss"),
            "val_auc": final.get("val_auc"), "val_logloss": final.get("val_logloss"),
        }

    def describe(self, m: dict[str, Any], prefix: str = "") -> str:
        return f"AUC {m[prefix + 'auc']:.4f} logloss {m[prefix + 'logloss']:.4f}"

    def summary(self, results: dict[str, Any]) -> str:
        oracle = results.get("oracle_auc")
        vs = f" vs oracle {oracle:.4f} (gap {oracle - results['auc']:.4f})" if oracle is not None else ""
        return f"test AUC {results['auc']:.4f}{vs}; logloss {results['logloss']:.4f}"


def tables_of(module: torch.nn.Module) -> list[Any]:
    """The physical tables (``TableSpec``) of every compressed collection in a task's module."""
    from recsys.embeddings import CompressedEmbeddingBagCollection

    return [t for m in module.modules() if isinstance(m, CompressedEmbeddingBagCollection) for t in m.plan().tables]


def _at(prefix: str, metric: str, k: int) -> tuple[str, str]:
    """``("val_", "recall", 10)`` -> ``("val_recall_at_10", "val_recall@10")``: a parquet column and its key."""
    return f"{prefix}{metric}_at_{k}", f"{prefix}{metric}@{k}"


class Retrieval(Task):
    """Two-tower retrieval: in-batch sampled softmax (logQ, accidental hits, mixed negatives, SSL);
    exact full-catalogue metrics with the classic baselines next to them.

    Evaluation (every rank, collectively; :mod:`recsys.train.retrieval_eval`): the item tower
    embeds EVERY row of ``items.parquet``; the split is ranked under ``model.eval_protocol``
    (``per_row`` or ``per_user``) with the exclusions of ``model.eval_exclude`` (the OOV row 0
    never ranked) by :mod:`recsys.retrieval_metrics`, sums all-reduced so every query counts once;
    the baselines of ``model.baselines`` (popularity, item-kNN, ALS) are fitted once per run and
    ranked on the same queries by the same evaluator (``<name>_<metric>`` keys).
    """

    name = "retrieval"
    archs = ("two_tower",)
    # oracle_*: the planted model's own ranking on synthetic interactions; popularity_*: the
    # training-count baseline on the same rows.
    metrics = (
        Metric("recall_at_100", True, "recall@100", key="recall@100", oracle="oracle_recall_at_100"),
        Metric("recall_at_10", True, "recall@10", key="recall@10", oracle="oracle_recall_at_10"),
        Metric("ndcg_at_10", True, "NDCG@10", key="ndcg@10"),
    )
    extra = (
        _at("val_", "recall", 100), _at("val_", "recall", 10), _at("val_", "ndcg", 10), ("mrr", "mrr"),
        _at("oracle_", "recall", 100), _at("oracle_", "recall", 10),
        _at("popularity_", "recall", 100), _at("popularity_", "recall", 10),
    )
    eval_ks = (10, 100)

    def __init__(self, root: str | Path | None = None):
        super().__init__(root)
        self._evaluation = None  # RetrievalEvaluation: the run's split rows and baselines, once
        self._catalogue = None

    @classmethod
    def metric_names(cls, model: Any) -> tuple[str, ...]:
        # Read from the evaluator itself (an empty one, two items), so the names early stopping
        # accepts are exactly the keys evaluation yields, whatever metrics the evaluator grows.
        from recsys.retrieval_metrics import RetrievalEvaluator

        empty = RetrievalEvaluator(torch.zeros((2, 1)), list(model.eval_ks), item_counts=np.ones(2, dtype=np.int64))
        return tuple(k for k in empty.compute() if k != "rows" and not k.startswith("rows/"))

    @classmethod
    def higher_is_better(cls, name: str) -> bool:
        return True  # recall, NDCG, hit rate, MRR, coverage: more is better

    def _config(self, config: "TrainConfig"):
        return config.model

    def catalogue(self, spec: DatasetSpec):
        from recsys.data import layout
        from recsys.data.catalogue import ItemCatalogue

        if self._catalogue is None:
            self._catalogue = ItemCatalogue.from_parquet(layout.catalogue_path(self.root, "items"), spec)
        return self._catalogue

    def plan(self, spec: DatasetSpec, counts: dict[str, np.ndarray] | None, model: Any = None) -> "EmbeddingPlan":
        """Both towers' collections as one plan: a unified group read by both towers is counted
        twice, since each tower holds its own copy; with ``model.history_table: item`` the history
        feature has no table of its own (it reads the item tower's)."""
        from recsys.embeddings import EmbeddingPlan
        from recsys.models.two_tower import build_tower_collections

        tables = {} if model is None else {"history_table": model.history_table, "item_id_feature": model.item_id_feature}
        user, item = (c.plan() for c in build_tower_collections(spec, device="meta", counts=counts, **tables))
        return EmbeddingPlan(
            features=user.features + item.features, tables=user.tables + item.tables,
            projections=user.projections + item.projections,
            notes=tuple(f"user tower: {n}" for n in user.notes) + tuple(f"item tower: {n}" for n in item.notes),
        )

    def check_data(self, files: dict[str, list[Path]], spec: DatasetSpec, root: Path) -> None:
        from recsys.data import layout
        from recsys.models.two_tower import tower_features

        tower_features(spec)  # a tower without features
        path = layout.catalogue_path(root, "items")
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no item catalogue; retrieval evaluates over every item of items.parquet, which "
                "`recsys ingest movielens` and `recsys synth interactions` write: re-ingest the data set"
            )
        names = set(pq.read_schema(path).names)
        missing = [f.name for f in spec.sparse if f.tower == "item" and f.name not in names]
        if missing:
            raise ValueError(f"{path}: item features {missing} are not in the catalogue (columns {sorted(names)}); re-ingest with this spec")

    def item_counts(self, config: "TrainConfig", spec: DatasetSpec) -> dict[str, np.ndarray]:
        from recsys.data import layout

        feature = spec.feature(config.model.item_id_feature)
        return layout.vocab_counts(self.root, [feature]) if feature.has_vocab else {}

    def build(self, config: "TrainConfig", spec: DatasetSpec, counts: dict[str, np.ndarray] | None, device: torch.device) -> torch.nn.Module:
        from recsys.models.two_tower import build_tower_collections, build_two_tower_model, build_two_tower_task
        from recsys.train import sharding

        m = config.model
        torch.manual_seed(config.train.seed)
        user_sparse, item_sparse = build_tower_collections(
            spec, device="meta", counts=counts, history_table=m.history_table, item_id_feature=m.item_id_feature
        )
        for c in (user_sparse, item_sparse):
            sharding.materialize_dense(c, device)
        model = build_two_tower_model(m, spec, user_sparse=user_sparse, item_sparse=item_sparse, device=device)
        catalogue = self.catalogue(spec) if m.num_mixed_negatives or m.loss == "full_softmax" else None
        rank = dist.get_rank() if dist.is_initialized() else 0
        return build_two_tower_task(
            m, model, spec, counts={**(counts or {}), **self.item_counts(config, spec)}, catalogue=catalogue,
            device=device, seed=config.train.seed + rank,
        )

    def evaluation(self, context: EvalContext, spec: DatasetSpec):
        """This run's :class:`~recsys.train.retrieval_eval.RetrievalEvaluation` (splits read once,
        baselines computed once)."""
        from recsys.train.retrieval_eval import RetrievalEvaluation

        if self._evaluation is None:
            m = context.config.model
            self._evaluation = RetrievalEvaluation(
                context.files, m.user_id_feature, m.item_id_feature, int(spec.feature(m.user_id_feature).cardinality),
                len(self.catalogue(spec)), spec.timestamp,
            )
        return self._evaluation

    def evaluate(self, model: torch.nn.Module, reader: "ShardReader", device: torch.device, context: EvalContext) -> dict[str, Any]:
        """Exact metrics of one split under ``model.eval_protocol`` / ``eval_exclude``, with the
        baselines' (:mod:`recsys.train.retrieval_eval`)."""
        spec = reader.spec
        counts = self.item_counts(context.config, spec).get(context.config.model.item_id_feature)
        return self.evaluation(context, spec).evaluate(
            model, reader, device, context.config, context.split, self.catalogue(spec), counts, log=_log_rank0,
        )

    def results(self, final: Mapping[str, Any], oracle: Mapping[str, Any]) -> dict[str, Any]:
        """Every metric the loop reported (test unprefixed, ``val_``, ``popularity_``), then the
        oracle's: the planted ranking's recall@k and the ranking by TRUE popularity (not the
        training counts that ``popularity_*`` ranks by), on synthetic interactions."""
        out = {k: v for k, v in final.items() if k not in BOOKKEEPING}
        for k, v in (oracle.get("recall") or {}).items():
            out[f"oracle_recall@{k}"] = v
        for k, v in (oracle.get("popularity_recall") or {}).items():
            out[f"oracle_true_popularity_recall@{k}"] = v
        return out

    def describe(self, m: dict[str, Any], prefix: str = "") -> str:
        ks = sorted(int(k.split("@")[1]) for k in m if k.startswith(prefix + "recall@") and "/" not in k)
        return " ".join(f"recall@{k} {m[f'{prefix}recall@{k}']:.4f}" for k in ks) + f" mrr {m[prefix + 'mrr']:.4f}"

    def summary(self, results: dict[str, Any]) -> str:
        """``test recall@20 0.2xxx (ALS 0.2xxx, item-kNN 0.2xxx, popularity 0.1xxx); ndcg@20 ...``."""
        from recsys.baselines import BASELINES
        from recsys.train.retrieval_eval import selection_cutoff

        ks = sorted(int(k.split("@")[1]) for k in results if k.startswith("recall@") and "/" not in k)
        if not ks:
            return "test: no retrieval metrics"
        head = selection_cutoff(ks)
        beside = [(cls.label, f"{name}_recall@{head}") for name, cls in BASELINES.items()] + [("oracle", f"oracle_recall@{head}")]
        extra = [f"{label} {results[key]:.4f}" for label, key in beside if results.get(key) is not None]
        parts = [f"recall@{head} {results[f'recall@{head}']:.4f}" + (f" ({', '.join(extra)})" if extra else "")]
        if results.get(f"ndcg@{head}") is not None:
            parts.append(f"ndcg@{head} {results[f'ndcg@{head}']:.4f}")
        if ks[-1] != head:
            parts.append(f"recall@{ks[-1]} {results[f'recall@{ks[-1]}']:.4f}")
        protocol = f" [{results['eval_protocol']}]" if results.get("eval_protocol") else ""
        return "test " + "; ".join(parts) + f"; mrr {results.get('mrr', float('nan')):.4f}{protocol}"


def _log_rank0(message: str) -> None:
    """One line on the driver's console from rank 0 (as the loop's log)."""
    import sys

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, file=sys.__stdout__, flush=True)


# The one registry of tasks: a new task is a Task subclass and one line here.
TASKS: dict[str, type[Task]] = {t.name: t for t in (CTR, Retrieval)}


def task_class(arch: str) -> type[Task]:
    """The task that trains ``model.arch`` ``arch``."""
    for task in TASKS.values():
        if arch in task.archs:
            return task
    known = sorted(a for t in TASKS.values() for a in t.archs)
    raise ValueError(f"model.arch: got {arch!r}; no training task for it; tasks train {known}")


def task_for(arch: str, root: str | Path | None = None) -> Task:
    """The task of a model architecture (``model.arch``); ``root`` is the data set's folder."""
    return task_class(arch)(root)


def _check_registry() -> None:
    seen: dict[str, str] = {}
    for task in TASKS.values():
        for arch in task.archs:
            if arch in seen:
                raise TypeError(f"model.arch {arch!r} is claimed by tasks {seen[arch]!r} and {task.name!r}")
            seen[arch] = task.name


_check_registry()
