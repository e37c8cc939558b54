"""Checks before training that read data or an earlier run (no Ray, no model).

Each raises ``ValueError`` with one line naming the field, file or split, the value found and
what is allowed. :mod:`recsys.train.run` calls them in order of cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features.spec import DatasetSpec

# Config keys that a resumed run may differ in without asking: they only say where things are.
IGNORED_ON_RESUME = ("run_dir", "resume", "resume_allow_changes", "ray.address")
# Config keys that decide what the checkpoint holds (tables, their sharding, optimizer state):
# a resumed run can never change them.
STRUCTURAL = (
    "model",
    "embeddings",
    "optimizer.embedding.kind",
    "optimizer.dense.kind",
    "data.batch_size",
    "data.spec",
    "ray.num_workers",
    "ray.use_gpu",
    "sharding",
)


def split_rows(files: dict[str, list[Path]]) -> dict[str, int]:
    return {split: sum(pq.ParquetFile(p).metadata.num_rows for p in paths) for split, paths in files.items()}


def check_splits(rows: dict[str, int], *, batch_size: int, num_workers: int, root: str | Path) -> None:
    """Every split has rows (evaluation splits one per worker); the batch fits the data and divides."""
    for split, n in rows.items():
        if n == 0:
            raise ValueError(
                f"data.path {root}: the {split} split has 0 rows; re-ingest with non-zero --split fractions "
                "(each of train, validation and test needs rows)"
            )
        if split != "train" and n < num_workers:
            raise ValueError(
                f"data.path {root}: the {split} split has {n} rows, fewer than ray.num_workers {num_workers}; "
                "every worker scores at least one row: use fewer workers or more data"
            )
    if batch_size % num_workers:
        lower = batch_size - batch_size % num_workers
        raise ValueError(
            f"data.batch_size: got {batch_size}; it is the GLOBAL batch and must divide by ray.num_workers "
            f"{num_workers} (e.g. {lower} or {lower + num_workers})"
        )
    per_worker = rows["train"] // num_workers
    if per_worker < batch_size // num_workers:
        raise ValueError(
            f"data.batch_size: got {batch_size}; the train split has {rows['train']:,} rows "
            f"({per_worker:,} per worker over {num_workers}), not one full batch: use at most "
            f"{per_worker * num_workers:,}"
        )


def check_labels(files: dict[str, list[Path]], spec: DatasetSpec, *, allowed: tuple[float, ...] = (0.0, 1.0), task: str = "the CTR task (BCE)") -> None:
    """Every label of every split is one of ``allowed`` (reads the label column only)."""
    name = spec.label.name
    for split, paths in files.items():
        for path in paths:
            pf = pq.ParquetFile(path)
            row0 = 0
            for rb in pf.iter_batches(batch_size=1 << 20, columns=[name]):
                y = rb.column(0).to_numpy(zero_copy_only=False).astype(np.float64)
                bad = ~np.isin(y, allowed)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise ValueError(
                        f"{path}, row {row0 + i}: label {name!r} is {y[i]:g}; {task} needs labels in "
                        f"{list(allowed)} ({int(bad.sum()):,} such rows in this file part); binarise the labels "
                        "at ingest (e.g. `recsys ingest movielens --min-rating R`)"
                    )
                row0 += rb.num_rows


def check_dense_finite(files: dict[str, list[Path]], spec: DatasetSpec) -> None:
    """No NaN / inf in dense columns: one would make the loss non-finite from the first step."""
    names = [f.name for f in spec.dense]
    if not names:
        return
    for paths in files.values():
        for path in paths:
            row0 = 0
            for rb in pq.ParquetFile(path).iter_batches(batch_size=1 << 20, columns=names):
                for name in names:
                    col = rb.column(name)
                    finite = pc.is_finite(col)
                    if pc.all(finite).as_py() is False:
                        i = int(np.argmin(finite.to_numpy(zero_copy_only=False)))
                        raise ValueError(
                            f"{path}, row {row0 + i}: dense feature {name!r} is {col[i].as_py()}; dense values must be "
                            "finite: re-ingest (ingest maps non-finite values to the missing value and counts them)"
                        )
                row0 += rb.num_rows


def check_run_dir(run_dir: Path) -> None:
    """A run folder is a folder, and never a data set, a sweep or a bundle (:mod:`recsys.folders`),
    for every caller of ``prepare`` (the CLI, the Python API, sweep trials)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir: {run_dir} is a file, not a folder; give a new or existing folder")
    from recsys.folders import check_run_dir as check_folder

    check_folder(run_dir)


# -- resume -----------------------------------------------------------------------------------


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "f": [{"name": "C1", "d": 4}]}`` -> ``{"a.b": 1, "f[C1].d": 4}``.

    Lists of named dicts (a spec's features and groups) are keyed by name; other lists and
    scalars are leaves.
    """
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, list) and node and all(isinstance(v, dict) and "name" in v for v in node):
        out = {}
        for value in node:
            out.update(flatten({k: v for k, v in value.items() if k != "name"} or {"name": value["name"]}, f"{prefix}[{value['name']}]"))
        return out
    return {prefix: node}


def _under(key: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs (keys on either side)."""
    a, b = flatten(old), flatten(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        if _under(key, IGNORED_ON_RESUME):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append((key, None if va is missing else va, None if vb is missing else vb))
    return out


def check_resume(
    checkpoint_path: Path, saved: dict[str, Any], config: dict[str, Any], spec: dict[str, Any], allow: list[str]
) -> list[str]:
    """Compare a resumed run's config and resolved spec with the checkpoint's ``config.json``.

    Returns one note per allowed change. Raises ``ValueError`` naming every refused key (model,
    embeddings, plan, optimizer kinds, batch size, workers, sharding) or every change that was not
    listed in ``resume_allow_changes``.
    """
    changes = config_changes(saved.get("config", {}), config)
    structural = [c for c in changes if _under(c[0], STRUCTURAL)]
    if not structural and saved.get("spec") != spec:  # same config, but the data set's spec changed
        for key, va, vb in config_changes(saved.get("spec") or {}, spec):
            structural.append((f"feature_spec.{key}", va, vb))
    if structural:
        lines = "; ".join(f"{k}: {va!r} -> {vb!r}" for k, va, vb in structural)
        raise ValueError(
            f"resume=true: {checkpoint_path} was written by a different model or plan ({lines}); a resumed run keeps "
            "the model, embeddings, feature spec, optimizer kinds, batch size, workers and sharding of its "
            "checkpoint: start a new run_dir, or resume with the original values"
        )
    unasked = [c for c in changes if not _under(c[0], allow)]
    if unasked:
        lines = "; ".join(f"{k}: {va!r} -> {vb!r}" for k, va, vb in unasked)
        keys = ",".join(k for k, _, _ in unasked)
        raise ValueError(
            f"resume=true: the config differs from {checkpoint_path / 'config.json'} ({lines}); to continue with "
            f"these changes pass resume_allow_changes=[{keys}], or resume with the original values"
        )
    return [f"resume: {k} changed from {va!r} to {vb!r} (allowed by resume_allow_changes)" for k, va, vb in changes]
