"""What a folder holds, and the one rule for every command that writes a folder.

    recsys synth ctr --out data/synthetic_ctr --overwrite       # replace the synthetic CTR data set there
    recsys ingest csv logs.csv --spec clicks.yaml --out data/clicks --overwrite

A folder holds one of: nothing (missing or empty), a data set (``manifest.json`` of ``recsys ingest`` /
``recsys synth``; its kind is the source that wrote it: ``criteo``, ``csv``, ``synthetic ctr`` ...), a
training run (``results.json`` or Ray's ``ray/`` checkpoint folder), a sweep (``sweep.json``), a
serving bundle (``manifest.json`` with a ``bundle_id``), or other files.

The rule (:func:`check_dataset_out`, :func:`check_run_dir`, :func:`check_sweep_dir`):

- a data set is written into a missing or empty folder, or over a data set **of the same kind**,
  and only with ``--overwrite``; never over a data set of another kind, a training run, a sweep, a
  bundle or other files (the message names what is there);
- a training run's ``run_dir`` may be new, empty, an earlier run (resume decides) or a folder of
  other files, never a data set, a sweep or a bundle;
- a sweep folder may be new, empty or an earlier sweep (continued), nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FolderError", "FolderContents", "inspect_folder", "dataset_kind", "check_dataset_out", "check_run_dir", "check_sweep_dir"]

OVERWRITE_HELP = "replace the data set already in --out (only one of the same kind; default: refuse)"


class FolderError(ValueError):
    """A command would write into a folder that holds something else; the message names it."""


@dataclass(frozen=True)
class FolderContents:
    """What :func:`inspect_folder` found.

    Attributes:
        kind: ``missing``, ``empty``, ``dataset``, ``training run``, ``sweep``, ``bundle``, ``file`` or ``other``.
        dataset_kind: for a data set, the source that wrote it (:func:`dataset_kind`).
        detail: a few words for the message (the data set's name and rows, the folder's entries).
    """

    kind: str
    dataset_kind: str = ""
    detail: str = ""

    @property
    def is_free(self) -> bool:
        return self.kind in ("missing", "empty")

    def describe(self) -> str:
        """``a csv data set (clicks, 1,000 rows)``, ``a training run``, ``a non-empty folder (a.txt, b)``."""
        what = {
            "missing": "nothing", "empty": "an empty folder", "dataset": f"{_a(self.dataset_kind)} data set",
            "training run": "a training run", "sweep": "a sweep", "bundle": "a serving bundle",
            "file": "a file, not a folder", "other": "a non-empty folder",
        }[self.kind]
        return f"{what} ({self.detail})" if self.detail else what


def _a(kind: str) -> str:
    """``an avazu``, ``a csv``."""
    return f"{'an' if kind[:1] in tuple('aeiou') else 'a'} {kind}"


def dataset_kind(manifest: dict[str, Any]) -> str:
    """The kind of a data set: the source that wrote it (``criteo``, ``movielens``, ``csv``,
    ``interactions``, ...), with the generator for synthetic ones (``synthetic ctr``)."""
    source = manifest.get("source") or {}
    kind = str(source.get("kind") or "unknown")
    return f"{kind} {source['generator']}" if kind == "synthetic" and source.get("generator") else kind


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def inspect_folder(path: str | Path) -> FolderContents:
    """What ``path`` holds (reads at most one small JSON file)."""
    path = Path(path)
    if not path.exists():
        return FolderContents("missing")
    if not path.is_dir():
        return FolderContents("file")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return FolderContents("empty")
    if "manifest.json" in entries:
        manifest = _read_json(path / "manifest.json") or {}
        if "bundle_id" in manifest:
            return FolderContents("bundle", detail=f"bundle {manifest['bundle_id']}")
        if "dataset" in manifest or "feature_spec" in manifest:
            rows = (manifest.get("rows") or {}).get("total")
            items = ", with items.parquet" if "items.parquet" in entries else ""
            detail = f"{manifest.get('dataset', '?')}" + (f", {rows:,} rows" if isinstance(rows, int) else "") + items
            return FolderContents("dataset", dataset_kind(manifest), detail)
    if "sweep.json" in entries:
        return FolderContents("sweep", detail="sweep.json")
    sweep_files = {"trials", "results.parquet", "report.md", "pareto.png"}
    if "trials" in entries and all(e in sweep_files or e.startswith("tune-") for e in entries):
        return FolderContents("sweep", detail="trials/")  # a sweep's own layout, before its sweep.json
    if "results.json" in entries or "ray" in entries:  # ray/: Ray's checkpoints (recsys.train.checkpoint.RAY_RUN_NAME)
        return FolderContents("training run", detail=", ".join(e for e in ("results.json", "ray") if e in entries))
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    return FolderContents("other", detail=shown)


def check_dataset_out(path: str | Path, *, writes: str, overwrite: bool, flag: str = "--out") -> FolderContents:
    """The rule for a command that writes a data set of kind ``writes`` into ``path``.

    Raises:
        FolderError: ``path`` holds a data set of another kind, anything but a data set, or a data
            set of the same kind without ``overwrite``.
    """
    found = inspect_folder(path)
    if found.is_free:
        return found
    if found.kind == "dataset" and found.dataset_kind == writes:
        if overwrite:
            return found
        raise FolderError(f"{flag} {path}: holds {found.describe()}; pass --overwrite to replace it, or give another {flag}")
    if found.kind == "dataset":
        raise FolderError(
            f"{flag} {path}: holds {found.describe()}; this command writes {_a(writes)} data set and never replaces "
            f"a data set of another kind (not even with --overwrite): give another {flag}, or remove the folder yourself"
        )
    raise FolderError(
        f"{flag} {path}: holds {found.describe()}; a data set is written only into a new or empty folder, or over "
        f"{_a(writes)} data set with --overwrite: give another {flag}"
    )


def check_run_dir(path: str | Path, *, flag: str = "run_dir") -> FolderContents:
    """The rule for a training run's folder: new, empty, an earlier run (resumed, or refused by
    ``prepare``) or other files; never a data set, a sweep or a bundle.

    A file is left to :func:`recsys.train.checks.check_run_dir` (``run_dir: ... is a file``), which
    ``prepare`` runs for every caller.

    Raises:
        FolderError: the folder holds a data set, a sweep or a bundle.
    """
    found = inspect_folder(path)
    if found.kind in ("dataset", "sweep", "bundle"):
        raise FolderError(
            f"{flag} {path}: holds {found.describe()}; a training run writes its checkpoints and results.json into "
            f"{flag}: give a new folder (or an earlier run's, with resume=true)"
        )
    return found


def check_sweep_dir(path: str | Path, *, flag: str = "--out") -> FolderContents:
    """The rule for a sweep's folder: new, empty, or an earlier sweep (continued).

    Raises:
        FolderError: the folder holds anything else (a training run, a data set, a bundle, other files).
    """
    found = inspect_folder(path)
    if found.is_free or found.kind == "sweep":
        return found
    raise FolderError(
        f"{flag} {path}: holds {found.describe()}; a sweep writes its trials, results.parquet and report into "
        f"{flag}: give a new folder, or an earlier sweep's to continue it"
    )
