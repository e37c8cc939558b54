"""Tasks: what a job adds to the one training loop (model, loss, metrics, data checks).

``recsys train`` runs one loop (:mod:`recsys.train.loop`) for every job; the model config's
``arch`` picks the task:

========================  ==========================  =====================================
task                      ``model.arch``              metrics (exact, every row once)
========================  ==========================  =====================================
:class:`CTR`              ``dlrm``, ``dcn``           AUC, logloss
========================  ==========================  =====================================

A task builds the unsharded module (tables on ``meta``; ``module(batch) -> (loss, outputs)``,
so DMP can wrap it), checks the data before Ray starts, scores a split on all ranks, and formats
its metrics for the log and the summary line. A new job adds a task, not a loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from recsys import metrics
from recsys.features.spec import DatasetSpec

if TYPE_CHECKING:
    from recsys.data.loader import ShardReader
    from recsys.train.config import TrainConfig


class Task(Protocol):
    name: str
    primary: str  # the metric that says "better" (higher is better)

    def check_data(self, files: dict[str, list[Path]], spec: DatasetSpec, root: Path) -> None:
        """Driver side, before Ray starts: raise ``ValueError`` naming file / row / field."""

    def build(self, config: "TrainConfig", spec: DatasetSpec, counts: dict[str, np.ndarray] | None, device: torch.device) -> torch.nn.Module:
        """The unsharded module, tables on ``meta``: ``module(batch) -> (loss, outputs)``."""

    def evaluate(self, model: torch.nn.Module, reader: "ShardReader", device: torch.device) -> dict[str, float]:
        """Exact metrics of one split over all ranks (collective); includes ``rows``."""

    def describe(self, m: dict[str, Any], prefix: str = "") -> str:
        """``m`` as a short phrase for the log (``prefix`` e.g. ``val_``)."""


class CTR:
    """Click-through rate: BCE on 0/1 labels; exact AUC and logloss."""

    name = "ctr"
    primary = "auc"

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


def task_for(arch: str) -> Task:
    """The task of a model architecture (``model.arch``)."""
    if arch in ("dlrm", "dcn"):
        return CTR()
    raise ValueError(f"model.arch: got {arch!r}; no training task for it")
