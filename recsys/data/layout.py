"""The on-disk layout of an ingested data set (what ``recsys ingest`` and ``recsys synth`` write).

::

    DIR/
      manifest.json              source, row counts, split, resolved feature spec, vocab sizes, ...
      features.yaml              the resolved feature spec (real cardinalities), loadable by load_spec
      train/part-00000.parquet   label float32, dense float32, sparse int64 (single-valued) or
      validation/part-....       list<int64> (multi-valued), timestamp int64 when the spec has one
      test/part-....
      vocab/<feature>.parquet    index int64, raw_id int64 (null for the OOV row 0), count int64,
                                 token string (when the source had string values)
      items.parquet              interaction data sets: one row per item_id index 0..V (row i = index
                                 i, row 0 the OOV row) with every ``tower: item`` feature, ids encoded
                                 as in the splits; every catalogue item has an index, also the ones
                                 never seen in training (count 0 in the vocab file)
      users.parquet              where the source has user side features: one row per user_id index
                                 with the ``tower: user`` side features (not history features)

The manifest's ``catalogue`` entry names these files (``path``, ``rows``, ``key``, ``columns``).
A history feature (:mod:`recsys.data.interactions`) shares its target's vocabulary: its vocab
file is a copy of the target's and the manifest's ``vocab[f]["shares_vocab_of"]`` names the target.

Ids of a vocabulary feature lie in ``[0, cardinality)``; 0 is the out-of-vocabulary index.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features.spec import DatasetSpec, SparseFeature, spec_from_dict

SPLITS: tuple[str, ...] = ("train", "validation", "test")
OOV_INDEX = 0
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOGUE_FILES: dict[str, str] = {"items": "items.parquet", "users": "users.parquet"}


def arrow_type(feature) -> pa.DataType:
    if isinstance(feature, SparseFeature):
        return pa.list_(pa.int64()) if feature.multi_valued else pa.int64()
    return pa.float32()


def arrow_schema(spec: DatasetSpec) -> pa.Schema:
    """The parquet schema of a data set's split files, columns in spec order (+ timestamp last)."""
    fields = [pa.field(f.name, arrow_type(f), nullable=False) for f in spec.features]
    if spec.timestamp is not None:
        fields.append(pa.field(spec.timestamp, pa.int64(), nullable=False))
    return pa.schema(fields)


VOCAB_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("raw_id", pa.int64()),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("token", pa.string()),
    ]
)


def split_dir(root: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return Path(root) / split


def split_files(root: str | Path, split: str) -> list[Path]:
    """The parquet part files of one split, in order."""
    return sorted(split_dir(root, split).glob("part-*.parquet"))


def catalogue_path(root: str | Path, name: str) -> Path:
    """``DIR/items.parquet`` or ``DIR/users.parquet`` (name ``items`` / ``users``)."""
    if name not in CATALOGUE_FILES:
        raise ValueError(f"catalogue {name!r} is not one of {sorted(CATALOGUE_FILES)}")
    return Path(root) / CATALOGUE_FILES[name]


def vocab_path(root: str | Path, feature: str) -> Path:
    return Path(root) / "vocab" / f"{feature}.parquet"


def vocab_counts(root: str | Path, features: list[SparseFeature]) -> dict[str, np.ndarray]:
    """Training counts of the vocabulary features, index-aligned: ``counts[f][i]`` for index ``i``.

    Features without a vocabulary file (``cardinality: raw``) are left out.
    """
    counts = {}
    for f in features:
        path = vocab_path(root, f.name)
        if f.has_vocab and path.exists():
            table = pq.read_table(path, columns=["index", "count"])
            out = np.zeros(int(f.cardinality), dtype=np.int64)
            idx = table.column("index").to_numpy()
            keep = idx < out.size
            out[idx[keep]] = table.column("count").to_numpy()[keep]
            counts[f.name] = out
    return counts


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a data set written by `recsys ingest` or `recsys synth`"
        )
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def dataset_spec(root: str | Path) -> DatasetSpec:
    """The resolved feature spec of an ingested data set (real cardinalities)."""
    return spec_from_dict(read_manifest(root)["feature_spec"], f"{Path(root) / MANIFEST}:feature_spec")
