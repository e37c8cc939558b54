"""The serving bundle: a self-contained, versioned folder written by ``recsys export``.

    .venv/bin/python -m pytest tests/unit/serving -q

Layout (every file but ``manifest.json`` is listed in the manifest with its size and sha256)::

    BUNDLE/
      manifest.json            format_version, bundle_id, created_at, source (run, checkpoint, step),
                               config + feature_spec (resolved), metrics (results.json), plan,
                               precision, user_tower (keys, output dim, ops libraries), items
                               (count, dim, dtype), index (kind + settings), vocab, files
      user_tower.pt2           torch.export program: (values (N,) int64, lengths (F, B) int32) ->
                               (B, D) float32 unit-norm user vectors; F = len(user_tower.keys)
      item_vectors.npy         (V, D) float32 | float16 | int8, row i = item index i (row 0: OOV)
      item_scales.npy          (V,) float32, int8 only: v_i ~= item_vectors[i] * item_scales[i]
      item_codes.npy           (V, ceil(D / 8)) uint8, binary index only: sign bits of the vectors
      index.faiss              ivf* / hnsw* only: the faiss index (serving.index_kinds: each kind names its files)
      vocab/<feature>.parquet  the data set's vocabulary (index, raw_id, count, token) of every
                               user-tower feature with a vocabulary, and of the item id feature

A bundle is written into a temporary sibling folder (``.BUNDLE.tmp-*``) and renamed at the end,
so a crash never leaves a half bundle under BUNDLE. :func:`load_bundle` checks the format
version and every file's size and checksum before anything is used; problems name the file.

This module imports no training code (torch, numpy, pyarrow only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from serving.index_kinds import INDEX_KINDS, index_kind  # noqa: F401 (the one registry of kinds; re-exported)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
USER_TOWER = "user_tower.pt2"
ITEM_VECTORS = "item_vectors.npy"
ITEM_SCALES = "item_scales.npy"
ITEM_CODES = "item_codes.npy"
INDEX = "index.faiss"
VOCAB_DIR = "vocab"

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


class BundleError(ValueError):
    """A bundle that cannot be served: missing, partial, corrupt or of another format version."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def new_bundle_id() -> str:
    """``<UTC time>-<8 hex>``: sortable by creation and unique."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def write_bundle(out: str | Path, manifest: dict[str, Any], fill: Callable[[Path], None]) -> Path:
    """Write a bundle atomically: ``fill(tmp)`` writes the files, then checksums, manifest, rename.

    Args:
        out: the bundle folder to create; it must not exist (a bundle is never overwritten in place).
        manifest: everything but ``format_version``, ``bundle_id``, ``created_at`` and ``files``.
        fill: writes every bundle file under the folder it is given.

    Raises:
        FileExistsError: ``out`` exists.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} exists; give a new folder (bundles are never overwritten in place)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        full = {
            "format_version": FORMAT_VERSION,
            "bundle_id": manifest.get("bundle_id") or new_bundle_id(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in manifest.items() if k != "bundle_id"},
            "files": files,
        }
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(full, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private; a bundle is read by the service's user
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a bundle folder, with its format version checked.

    Raises:
        BundleError: no folder, no / unreadable manifest, another format version.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle folder (it does not exist or is a file); give the folder `recsys export --out` wrote")
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{file}: missing; {path} is not a complete bundle (re-run recsys export)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{file}: unreadable ({type(exc).__name__}: {exc}); re-run recsys export") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{file}: format_version {version!r}, this recsys reads format_version {FORMAT_VERSION}; "
            "export the run again with this recsys"
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{file}: no `files` table of checksums; re-run recsys export")
    return manifest


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check the format version and every file's size and sha256; return the manifest.

    Raises:
        BundleError: naming the first missing, truncated or corrupt file (and the check that failed).
    """
    path = Path(path)
    manifest = read_manifest(path)
    for rel, entry in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            raise BundleError(f"{file}: missing (the manifest lists it); the bundle is partial, re-run recsys export")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(f"{file}: {size:,} bytes, the manifest says {entry['bytes']:,}; the file is truncated or corrupt")
        digest = sha256_file(file)
        if digest != entry["sha256"]:
            raise BundleError(f"{file}: sha256 {digest[:16]}... does not match the manifest's {entry['sha256'][:16]}...; the file is corrupt")
    for name in (USER_TOWER, ITEM_VECTORS):
        if name not in manifest["files"]:
            raise BundleError(f"{path / name}: not in the manifest; every bundle has it (re-run recsys export)")
    return manifest


@dataclass(frozen=True)
class Vocabulary:
    """Raw id -> index of one feature (sorted raw ids + ``np.searchsorted``), and index -> raw id.

    ``tokens`` maps the source's string values (where it had them) to indices.
    """

    name: str
    sorted_raw: np.ndarray  # (n,) int64 ascending raw ids
    sorted_index: np.ndarray  # (n,) int64 their indices
    raw_by_index: np.ndarray  # (cardinality,) int64; -1 where the row has no raw id (the OOV row 0)
    tokens: dict[str, int]
    token_by_index: dict[int, str]

    @classmethod
    def from_parquet(cls, name: str, path: str | Path) -> "Vocabulary":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        index = table.column("index").to_numpy().astype(np.int64)
        raw = table.column("raw_id")
        has_raw = ~raw.is_null().to_numpy(zero_copy_only=False)
        raw_values = raw.fill_null(-1).to_numpy().astype(np.int64)
        order = np.argsort(raw_values[has_raw], kind="stable")
        by_index = np.full(int(index.max()) + 1 if index.size else 1, -1, dtype=np.int64)
        by_index[index] = raw_values
        tokens: dict[str, int] = {}
        if "token" in table.column_names:
            for i, tok in zip(index.tolist(), table.column("token").to_pylist()):
                if tok is not None:
                    tokens[tok] = i
        return cls(name, raw_values[has_raw][order], index[has_raw][order], by_index, tokens, {v: k for k, v in tokens.items()})

    @property
    def cardinality(self) -> int:
        return int(self.raw_by_index.size)

    def lookup(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, known)`` for int64 raw ids; unknown ids get the OOV index 0."""
        raw = np.asarray(raw, dtype=np.int64)
        if self.sorted_raw.size == 0:
            return np.zeros(raw.shape, np.int64), np.zeros(raw.shape, bool)
        pos = np.searchsorted(self.sorted_raw, raw)
        pos_c = np.minimum(pos, self.sorted_raw.size - 1)
        known = self.sorted_raw[pos_c] == raw
        return np.where(known, self.sorted_index[pos_c], 0), known


@dataclass
class Bundle:
    """A verified bundle in memory.

    Attributes:
        path: the folder.
        manifest: its manifest.
        user_tower: the loaded ``torch.export`` program's module, without per-call input checks (the
            service's encoder is its only caller).
        stored_vectors: ``(V, D)`` item vectors in their stored dtype (float32 | float16 | int8):
            the service keeps them so, at the bundle's precision, and dequantises only the rows a
            search reads (:class:`serving.retriever.Retriever`).
        item_scales: ``(V,)`` float32 per-item scales of int8 vectors, else None.
        item_codes: ``(V, ceil(D/8))`` uint8 for the binary index, else None.
        index_bytes: the serialised faiss index (ivf / hnsw), else None.
        vocabs: feature -> :class:`Vocabulary`.
    """

    path: Path
    manifest: dict[str, Any]
    user_tower: Any
    stored_vectors: np.ndarray
    item_scales: np.ndarray | None
    item_codes: np.ndarray | None
    index_bytes: bytes | None
    vocabs: dict[str, Vocabulary]

    @property
    def item_vectors(self) -> np.ndarray:
        """``(V, D)`` float32 dequantised vectors (what search scores with): a new full copy per call."""
        return dequantize(self.stored_vectors, self.item_scales)

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def num_items(self) -> int:
        return int(self.stored_vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.stored_vectors.shape[1])

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/metadata`` shows: no config dump, the facts a client needs."""
        m = self.manifest
        return {
            "bundle_id": m["bundle_id"],
            "format_version": m["format_version"],
            "created_at": m["created_at"],
            "source": m.get("source"),
            "precision": m["precision"],
            "index": m["index"],
            "items": m["items"],
            "user_features": m["user_tower"]["features"],
            "item_id_feature": m["items"]["id_feature"],
            "metrics": {k: v for k, v in m.get("metrics", {}).items()
                        if v is not None and "/" not in k and k.startswith(("recall@", "ndcg@", "mrr", "popularity_recall@"))},
            "bytes": sum(f["bytes"] for f in m["files"].values()),
        }


def dequantize(vectors: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """float32 ``(..., D)`` from stored fp32 / fp16 / int8 (+ per-row scales ``(...)``) vectors."""
    if vectors.dtype == np.int8:
        if scales is None:
            raise BundleError(f"int8 item vectors need {ITEM_SCALES}")
        return vectors.astype(np.float32) * scales.astype(np.float32, copy=False)[..., None]
    return np.ascontiguousarray(vectors, dtype=np.float32)


def served_module(program: Any) -> Any:
    """The ``torch.export`` program's module without the checks export adds to every call.

    The service's encoder builds the tower's inputs itself (int64 values, ``(F, B)`` int32 lengths, B >= 2), so
    the per-call input checks (pytree spec match, shape guards) and the graph's runtime asserts of dynamic sizes
    (``aten._assert_scalar`` / ``_assert_tensor_metadata`` and the size arithmetic feeding only them) cost time and
    check nothing new: the trained test tower's graph falls from 157 to 83 nodes, and a batch-1 call of the
    synthetic tower took 2.5x less time (docs/serving.md, "Index kinds and their costs"). Outputs are unchanged
    (tested against ``program.module()``).
    """
    import torch

    module = program.module(check_guards=False)
    module.validate_inputs = False
    asserts = (torch.ops.aten._assert_scalar.default, torch.ops.aten._assert_tensor_metadata.default)
    graph = module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in asserts:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()
    return module


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Verify (format version, every checksum) and load a bundle.

    Raises:
        BundleError: naming the file that is missing, partial, corrupt or unloadable.
    """
    path = Path(path)
    manifest = verify_bundle(path) if verify else read_manifest(path)
    import torch

    for lib in manifest["user_tower"].get("ops_libraries", []):
        if lib == "fbgemm_gpu":  # quantised tables' lookup ops live in fbgemm's registered ops
            import fbgemm_gpu  # noqa: F401
    try:
        program = torch.export.load(str(path / USER_TOWER))
    except Exception as exc:
        raise BundleError(f"{path / USER_TOWER}: torch.export.load failed ({type(exc).__name__}: {exc})") from None
    try:
        stored = np.load(path / ITEM_VECTORS, allow_pickle=False)
        scales = np.load(path / ITEM_SCALES, allow_pickle=False) if (path / ITEM_SCALES).exists() else None
        codes = np.load(path / ITEM_CODES, allow_pickle=False) if (path / ITEM_CODES).exists() else None
    except Exception as exc:
        raise BundleError(f"{path}: item arrays unreadable ({type(exc).__name__}: {exc})") from None
    items = manifest["items"]
    if stored.ndim != 2 or stored.shape != (items["count"], items["dim"]):
        raise BundleError(f"{path / ITEM_VECTORS}: shape {stored.shape}, the manifest says ({items['count']}, {items['dim']})")
    try:
        kind = index_kind(manifest["index"]["kind"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST}: index.kind: {exc}") from None
    for name in kind.files:  # the files the registry says the kind needs, named before anything is searched
        if not (path / name).exists():
            raise BundleError(f"{path / name}: missing; the bundle's {kind.name} index needs it")
    index_bytes = (path / INDEX).read_bytes() if (path / INDEX).exists() else None
    vocabs = {}
    for name, rel in manifest["vocab"].items():
        try:
            vocabs[name] = Vocabulary.from_parquet(name, path / rel)
        except Exception as exc:
            raise BundleError(f"{path / rel}: vocabulary unreadable ({type(exc).__name__}: {exc})") from None
    if stored.dtype not in (np.float32, np.float16, np.int8):
        raise BundleError(f"{path / ITEM_VECTORS}: dtype {stored.dtype}; a bundle stores float32, float16 or int8 vectors")
    if stored.dtype == np.int8 and (scales is None or scales.shape != (items["count"],)):
        raise BundleError(f"{path / ITEM_SCALES}: int8 item vectors need one float32 scale per item (shape ({items['count']},))")
    return Bundle(path, manifest, served_module(program), stored, None if scales is None else scales.astype(np.float32, copy=False),
                  codes, index_bytes, vocabs)
