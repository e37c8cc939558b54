"""recsys: compressed embeddings for CTR and two-tower retrieval, trained on Ray, served over HTTP.

The jobs as functions (:mod:`recsys.api`; imported on first use, so ``import recsys`` stays cheap):

    import recsys
    run = recsys.train("configs/ctr_synthetic_full.yaml", {"train.epochs": 1})
    run.metrics["auc"], run.run_dir
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "export", "bench_compression", "RunResult", "ExportResult", "SweepResult", "load_train_config"]


def __getattr__(name: str) -> Any:
    # Lazy: recsys.api imports torch / Ray only inside its functions, and only when first asked for.
    if name == "train":  # the package recsys.train is callable: recsys.train(config, overrides)
        import importlib

        return importlib.import_module("recsys.train")
    if name in __all__:
        from recsys import api

        return getattr(api, name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
