"""Tasks: what a job adds to the one training loop (model, loss, metrics, data checks).

``recsys train`` runs one loop (:mod:`recsys.train.loop`) for every job; the model config's
``arch`` picks the task:

========================  ==========================  =====================================
task                      ``model.arch``              metrics (exact, every row once)
========================  ==========================  =====================================
:class:`CTR`              ``dlrm``, ``dcn``           AUC, logloss
:class:`Retrieval`        ``two_tower``               Recall / NDCG / HitRate@k, MRR,
                                                      coverage@k, recall by popularity third,
                                                      over the WHOLE item catalogue
========================  ==========================  =====================================

A task builds the unsharded module (tables on ``meta``; ``module(batch) -> (loss, outputs)``,
so DMP can wrap it), checks the data before Ray starts, scores a split on all ranks, and formats
its metrics for the log and the summary line. A new job adds a task, not a loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from recsys import metrics
from recsys.features.spec import DatasetSpec

if TYPE_CHECKING:
    from recsys.data.loader import ShardReader
    from recsys.embeddings import EmbeddingPlan
    from recsys.train.config import TrainConfig


class Task(Protocol):
    name: str
    primary: str  # the metric that says "better" (higher is better)

    def check_data(self, files: dict[str, list[Path]], spec: DatasetSpec, root: Path) -> None:
        """Driver side, before Ray starts: raise ``ValueError`` naming file / row / field."""

    def plan(self, spec: DatasetSpec, counts: dict[str, np.ndarray] | None) -> "EmbeddingPlan":
        """The embedding plan of the model this task builds (every physical table, exact bytes)."""

    def build(self, config: "TrainConfig", spec: DatasetSpec, counts: dict[str, np.ndarray] | None, device: torch.device) -> torch.nn.Module:
        """The unsharded module, tables on ``meta``: ``module(batch) -> (loss, outputs)``."""

    def evaluate(self, model: torch.nn.Module, reader: "ShardReader", device: torch.device) -> dict[str, float]:
        """Exact metrics of one split over all ranks (collective); includes ``rows``."""

    def describe(self, m: dict[str, Any], prefix: str = "") -> str:
        """``m`` as a short phrase for the log (``prefix`` e.g. ``val_``)."""

    def summary(self, results: dict[str, Any]) -> str:
        """The driver's last line before ``run_dir:`` (test metrics against the baselines)."""


class CTR:
    """Click-through rate: BCE on 0/1 labels; exact AUC and logloss."""

    name = "ctr"
    primary = "auc"

    def plan(self, spec: DatasetSpec, counts: dict[str, np.ndarray] | None) -> "EmbeddingPlan":
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
    def evaluate(self, model: torch.nn.Module, reader: "ShardReader", device: torch.device) -> dict[str, float]:
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


class Retrieval:
    """Two-tower retrieval: in-batch sampled softmax (logQ, accidental hits, mixed negatives, SSL);
    exact full-catalogue metrics with the popularity baseline next to them.

    Evaluation (every rank, collectively): the item tower embeds EVERY row of ``items.parquet``
    (rank r its :func:`~recsys.data.loader.rank_rows` slice, padded to rank 0's batch sizes, then
    gathered), each rank scores its own evaluation rows against all of them with
    :class:`~recsys.retrieval_metrics.RetrievalEvaluator` (the user's training items excluded
    when ``model.eval_exclude_seen``; the OOV row 0 never ranked), and the evaluators' sums are
    all-reduced, so every row counts once. The popularity baseline (score = training count) goes
    through the same evaluator on the same rows.
    """

    name = "retrieval"

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else None
        self._seen = None  # (indptr, items): each user's training items
        self._catalogue = None

    @property
    def primary(self) -> str:
        return "recall@100"

    def _config(self, config: "TrainConfig"):
        return config.model

    def catalogue(self, spec: DatasetSpec):
        from recsys.data import layout
        from recsys.data.catalogue import ItemCatalogue

        if self._catalogue is None:
            self._catalogue = ItemCatalogue.from_parquet(layout.catalogue_path(self.root, "items"), spec)
        return self._catalogue

    def plan(self, spec: DatasetSpec, counts: dict[str, np.ndarray] | None) -> "EmbeddingPlan":
        """Both towers' collections as one plan: a unified group read by both towers is counted
        twice, since each tower holds its own copy."""
        from recsys.embeddings import EmbeddingPlan
        from recsys.models.two_tower import build_tower_collections

        user, item = (c.plan() for c in build_tower_collections(spec, device="meta", counts=counts))
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
        user_sparse, item_sparse = build_tower_collections(spec, device="meta", counts=counts)
        for c in (user_sparse, item_sparse):
            sharding.materialize_dense(c, device)
        model = build_two_tower_model(m, spec, user_sparse=user_sparse, item_sparse=item_sparse, device=device)
        catalogue = self.catalogue(spec) if m.num_mixed_negatives else None
        rank = dist.get_rank() if dist.is_initialized() else 0
        return build_two_tower_task(
            m, model, spec, counts={**(counts or {}), **self.item_counts(config, spec)}, catalogue=catalogue,
            device=device, seed=config.train.seed + rank,
        )

    def _seen_items(self, config: "TrainConfig", spec: DatasetSpec, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        from recsys.retrieval_metrics import user_item_csr

        if self._seen is None:
            m = config.model
            table = pa.concat_tables([pq.read_table(p, columns=[m.user_id_feature, m.item_id_feature]) for p in files])
            users = table.column(m.user_id_feature).to_numpy()
            items = table.column(m.item_id_feature).to_numpy()
            self._seen = user_item_csr(users, items, int(spec.feature(m.user_id_feature).cardinality))
        return self._seen

    @torch.no_grad()
    def evaluate_split(
        self, model: torch.nn.Module, reader: "ShardReader", device: torch.device, config: "TrainConfig", train_files: list[Path]
    ) -> dict[str, float]:
        from recsys.data.loader import rank_rows
        from recsys.retrieval_metrics import RetrievalEvaluator, exclusion_rows, popularity_vectors

        m = config.model
        spec = reader.spec
        inner = getattr(model, "module", model)  # DMP -> the sharded module (no DDP wrapper)
        model.eval()
        # Every catalogue row, each rank its slice, padded to rank 0's batch sizes (collectives).
        catalogue = self.catalogue(spec)
        rank, world = dist.get_rank(), dist.get_world_size()
        start, stop = rank_rows(len(catalogue), rank, world)
        most = rank_rows(len(catalogue), 0, world)[1]
        b = reader.batch_size
        own = []
        for k in range(-(-most // b)):
            size = min(b, most - k * b)
            rows = torch.arange(start + k * b, min(start + (k + 1) * b, stop))
            real = int(rows.numel())
            if real < size:
                rows = torch.cat([rows, torch.full((size - real,), start, dtype=torch.int64)])
            vecs = inner.model.item_embeddings(catalogue.kjt(rows, device=device))
            own.append(vecs[:real].float().cpu())
        pieces: list[Any] = [None] * world
        dist.all_gather_object(pieces, torch.cat(own).numpy() if own else np.zeros((0, inner.model.embedding_dim), np.float32))
        item_vectors = torch.from_numpy(np.concatenate(pieces))  # (V, D)

        counts = self.item_counts(config, spec).get(m.item_id_feature)
        seen = self._seen_items(config, spec, train_files) if m.eval_exclude_seen else None
        evaluator = RetrievalEvaluator(item_vectors, m.eval_ks, item_counts=counts, excluded_items=[0])
        popular = None
        if counts is not None:
            _, pop_items = popularity_vectors(counts, 1)
            popular = RetrievalEvaluator(pop_items, m.eval_ks, item_counts=counts, excluded_items=[0])
        for batch, real in reader.eval_batches():
            batch = batch.to(device, non_blocking=True)
            _, out = model(batch)
            users = batch.sparse[m.user_id_feature].values()[:real].cpu().numpy()
            targets = out.item_ids[:real].cpu()
            indptr = indices = None
            if seen is not None:
                indptr, indices = exclusion_rows(seen, users)
            evaluator.update(out.user[:real].float().cpu(), targets, indptr, indices)
            if popular is not None:
                popular.update(torch.ones((real, 1), dtype=torch.float64), targets, indptr, indices)
        model.train()
        result = _all_reduced(evaluator)
        result["rows"] = int(result["rows"])
        if popular is not None:
            result.update({f"popularity_{k}": v for k, v in _all_reduced(popular).items() if k != "rows"})
        return result

    def evaluate(self, model, reader, device):  # the loop calls evaluate_split with its context
        raise NotImplementedError("Retrieval.evaluate needs the run's context; the loop calls evaluate_split")

    def describe(self, m: dict[str, Any], prefix: str = "") -> str:
        ks = sorted(int(k.split("@")[1]) for k in m if k.startswith(prefix + "recall@") and "/" not in k)
        return " ".join(f"recall@{k} {m[f'{prefix}recall@{k}']:.4f}" for k in ks) + f" mrr {m[prefix + 'mrr']:.4f}"

    def summary(self, results: dict[str, Any]) -> str:
        ks = sorted(int(k.split("@")[1]) for k in results if k.startswith("recall@") and "/" not in k)
        parts = []
        for k in (ks[0], ks[-1]) if ks else ():
            extra = [f"{name} {results[key]:.4f}" for name, key in (("popularity", f"popularity_recall@{k}"), ("oracle", f"oracle_recall@{k}"))
                     if results.get(key) is not None]
            parts.append(f"recall@{k} {results[f'recall@{k}']:.4f}" + (f" ({', '.join(extra)})" if extra else ""))
        return "test " + "; ".join(parts) + f"; mrr {results.get('mrr', float('nan')):.4f}"


def _all_reduced(evaluator) -> dict[str, float]:
    """Sum the evaluator's counters over all ranks (covered items: any rank), then compute."""
    dist.all_reduce(evaluator.sums, op=dist.ReduceOp.SUM)
    covered = evaluator.covered.to(torch.int32)
    dist.all_reduce(covered, op=dist.ReduceOp.MAX)
    evaluator.covered = covered.to(torch.uint8)
    return evaluator.compute()


def task_for(arch: str, root: str | Path | None = None) -> Task:
    """The task of a model architecture (``model.arch``); ``root`` is the data set's folder."""
    if arch in ("dlrm", "dcn"):
        return CTR()
    if arch == "two_tower":
        return Retrieval(root)
    raise ValueError(f"model.arch: got {arch!r}; no training task for it")
