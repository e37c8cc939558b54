"""The index kinds a bundle can carry: ONE registry entry per kind, read by export, bundle loading, the
service and ``recsys bench serve``.

    .venv/bin/python -m pytest tests/unit/serving/test_index_kinds.py -q

An :class:`IndexKind` holds everything about one kind:

* ``settings``: each :class:`IndexSetting` with its range and whether it may change at serve time;
* ``defaults(num_items)``: the settings that reach recall@100 >= 0.95 on the ``mixture`` catalogue;
* ``clamp(settings, num_items, clamp_fn)``: what cannot be built as asked (``nlist`` above the items ...);
* ``build(vectors, settings)``: the :class:`IndexArtifacts` written into the bundle;
* ``load(artifacts)`` and ``candidates(index, users, want, settings)``: the searchable object and
  one search for ``want`` candidates per query, with the search settings passed PER CALL (faiss
  ``SearchParametersIVF`` / ``SearchParametersHNSW``), never written into the shared index, so
  retrievers made by ``Retriever.with_settings`` and concurrent searches never see each other's;
* ``files``: the bundle files the kind needs (load names a missing one).

A new kind is one entry in :data:`INDEX_REGISTRY`; :mod:`serving.retriever` re-scores every
kind's candidates exactly with the bundle's stored vectors, so every kind answers with exact scores.

Kinds:

=========  ==========================================================================  ==============
kind       index                                                                        bytes / item
=========  ==========================================================================  ==============
exact      none: ``(B, D) @ (D, V)`` in blocks                                          0
ivf        ``IndexIVFFlat``: a float32 copy of every vector + its id                    4 D + 8
ivf_sq8    ``IndexIVFScalarQuantizer`` (8-bit per dimension): no float32 copy           D + 8
hnsw       ``IndexHNSWFlat``: float32 copy + graph (2 m links)                          4 D + 8 m
hnsw_sq8   ``IndexHNSWSQ`` (8-bit per dimension) + graph                                D + 8 m
binary     sign codes, Hamming search over all, ``rerank`` candidates                   ceil(D / 8)
=========  ==========================================================================  ==============
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

ClampFn = Callable[[str, int, str], None]


@dataclass(frozen=True)
class IndexSetting:
    """One integer setting of an index kind: ``low <= value <= high``."""

    name: str
    help: str
    serve_time: bool = False
    low: int = 1
    high: int = 1 << 24


@dataclass
class IndexArtifacts:
    """What an index adds to a bundle: a serialised faiss index or binary codes."""

    kind: str
    index_bytes: bytes | None = None
    codes: np.ndarray | None = None

    def bytes_per_item(self, stored: np.ndarray, scales: np.ndarray | None) -> dict[str, float]:
        """Bytes per item of what the search reads: stored vectors (+ scale), the index or codes."""
        num_items = max(1, stored.shape[0])
        out = {"vectors": float(stored.shape[1] * stored.itemsize + (4 if scales is not None else 0))}
        if self.index_bytes is not None:
            out["index"] = len(self.index_bytes) / num_items
        if self.codes is not None:
            out["codes"] = float(self.codes.shape[1])
        return out


@dataclass(frozen=True)
class IndexKind:
    """One index kind (module docstring)."""

    name: str
    description: str
    settings: tuple[IndexSetting, ...]
    defaults: Callable[[int], dict[str, int]]
    build: Callable[[np.ndarray, dict[str, int]], IndexArtifacts]
    load: Callable[[IndexArtifacts], Any] | None = None
    candidates: Callable[[Any, np.ndarray, int, dict[str, int]], np.ndarray] | None = None
    clamp: Callable[[dict[str, int], int, ClampFn], None] | None = None
    files: tuple[str, ...] = ()
    serve_clamp: Callable[[dict[str, int], Any, list[str], str], None] | None = field(default=None)

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings)

    @property
    def serve_time_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings if s.serve_time)

    def check(self, settings: dict[str, Any], serve_time: bool = False) -> None:
        """Raise ``ValueError`` naming a setting the kind does not take (at build / serve time) or a value out of range."""
        allowed = self.serve_time_names if serve_time else self.setting_names
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise ValueError(f"index settings {unknown} are not settings of the {self.name} index; allowed: {list(allowed)}")
        by_name = {s.name: s for s in self.settings}
        for key, value in settings.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"index setting {key}: got {value!r}; give a positive integer")
            s = by_name[key]
            if not s.low <= value <= s.high:
                raise ValueError(f"index setting {key}: got {value}; the {self.name} index takes {key} in [{s.low}, {s.high:,}]")


def sign_codes(vectors: np.ndarray) -> np.ndarray:
    """``(n, ceil(D / 8))`` uint8: bit j of row i is ``vectors[i, j] > 0`` (big-endian within a byte)."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


# ---- IVF (flat and 8-bit scalar-quantised lists) ----------------------------------------------------------------

def _ivf_defaults(num_items: int) -> dict[str, int]:
    """``nlist = 4 sqrt(V)`` (at most V / 39, faiss's floor of training points per cell), ``nprobe = 24 nlist^0.3``
    (recall@100 >= 0.95 on ``mixture`` from 20k to 1M items), k-means on ``64 nlist`` sampled items."""
    nlist = int(max(1, min(round(4 * math.sqrt(num_items)), num_items // 39)))
    nprobe = max(1, min(nlist, int(math.ceil(24 * nlist**0.3))))
    return {"nlist": nlist, "nprobe": nprobe, "train_size": min(num_items, 64 * nlist)}


def _ivf_clamp(out: dict[str, int], num_items: int, clamp: ClampFn) -> None:
    clamp("nlist", min(out["nlist"], max(1, num_items)), f"is above the {num_items:,} items (k-means needs a point per cell)")
    clamp("train_size", min(max(out["train_size"], out["nlist"]), max(1, num_items)),
          f"is outside [nlist, items] = [{out['nlist']:,}, {num_items:,}]")
    clamp("nprobe", min(out["nprobe"], out["nlist"]), f"is above nlist={out['nlist']:,} (there are no more cells to scan)")


def _ivf_serve_clamp(settings: dict[str, int], index: Any, notes: list[str], source: str) -> None:
    """The index's real nlist wins over the manifest's (bundles written before clamps were recorded); nprobe <= nlist."""
    if source == "manifest" and settings.get("nlist") != index.nlist:
        notes.append(f"index setting nlist={settings.get('nlist')} in the manifest; the index has "
                     f"nlist={index.nlist}: serving with the index's")
        settings["nlist"] = int(index.nlist)
    if settings["nprobe"] > settings["nlist"]:
        what = "index setting" if source == "manifest" else "--index-setting"
        notes.append(f"{what} nprobe={settings['nprobe']} is above " + ("" if source == "manifest" else "the index's ")
                     + f"nlist={settings['nlist']}: serving with nprobe={settings['nlist']}" + ("" if source == "manifest" else " (every cell)"))
        settings["nprobe"] = settings["nlist"]


def _ivf_builder(scalar_quantized: bool) -> Callable[[np.ndarray, dict[str, int]], IndexArtifacts]:
    def build(vectors: np.ndarray, settings: dict[str, int]) -> IndexArtifacts:
        import faiss

        num_items, dim = vectors.shape
        settings, _ = resolve(INDEX_REGISTRY["ivf_sq8" if scalar_quantized else "ivf"], settings, num_items)
        nlist = settings["nlist"]
        quantizer = faiss.IndexFlatIP(dim)
        if scalar_quantized:
            # 8 bits per dimension between each dimension's trained min and max: D bytes per item instead of 4 D;
            # candidates are re-scored exactly with the stored vectors, so only the candidate set is approximate
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train_size = settings["train_size"]
        sample = vectors if train_size >= num_items else vectors[np.sort(rng.choice(num_items, train_size, replace=False))]
        index.train(sample)
        index.add(vectors)
        return IndexArtifacts("ivf_sq8" if scalar_quantized else "ivf", index_bytes=faiss.serialize_index(index).tobytes())
    return build


def _ivf_candidates(index: Any, users: np.ndarray, want: int, settings: dict[str, int]) -> np.ndarray:
    import faiss

    # 8-bit kinds fetch ``rerank`` candidates: their approximate scores misorder items near the cut, which the exact
    # rerank of a few more candidates repairs (100k mixture, k 100: 101 candidates recall 0.959, 150 -> 0.966 = IVF-Flat's)
    want = min(index.ntotal, max(want, settings.get("rerank", 0)))
    return index.search(users, want, params=faiss.SearchParametersIVF(nprobe=settings["nprobe"]))[1]


# ---- HNSW (flat and 8-bit scalar-quantised storage) -------------------------------------------------------------

def _hnsw_defaults(num_items: int) -> dict[str, int]:
    """``m 32``, ``ef_construction 100``, ``ef_search 256`` up to 100k items, then ``256 (V / 100k)^0.3``
    (1M items: 511; at 256 recall@100 fell to 0.919 there, 512 gave 0.966)."""
    ef_search = 256 if num_items <= 100_000 else int(math.ceil(256 * (num_items / 100_000) ** 0.3))
    return {"m": 32, "ef_construction": 100, "ef_search": ef_search}


def _hnsw_builder(scalar_quantized: bool) -> Callable[[np.ndarray, dict[str, int]], IndexArtifacts]:
    def build(vectors: np.ndarray, settings: dict[str, int]) -> IndexArtifacts:
        import faiss

        dim = vectors.shape[1]
        if scalar_quantized:
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, settings["m"], faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)  # the per-dimension ranges of the 8-bit codes
        else:
            index = faiss.IndexHNSWFlat(dim, settings["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings["ef_construction"]
        index.add(vectors)
        return IndexArtifacts("hnsw_sq8" if scalar_quantized else "hnsw", index_bytes=faiss.serialize_index(index).tobytes())
    return build


def _hnsw_candidates(index: Any, users: np.ndarray, want: int, settings: dict[str, int]) -> np.ndarray:
    import faiss

    # faiss's HNSW returns at most efSearch results and never raises it to k
    want = min(index.ntotal, max(want, settings.get("rerank", 0)))  # 8-bit kinds: see _ivf_candidates
    return index.search(users, want, params=faiss.SearchParametersHNSW(efSearch=max(settings["ef_search"], want)))[1]


def _load_faiss(artifacts: IndexArtifacts) -> Any:
    import faiss

    return faiss.deserialize_index(np.frombuffer(artifacts.index_bytes, dtype=np.uint8))


# ---- binary sign codes ------------------------------------------------------------------------------------------

def _load_binary(artifacts: IndexArtifacts) -> Any:
    import faiss

    codes = np.ascontiguousarray(artifacts.codes, dtype=np.uint8)
    index = faiss.IndexBinaryFlat(int(codes.shape[1]) * 8)
    index.add(codes)
    return index


def _binary_candidates(index: Any, users: np.ndarray, want: int, settings: dict[str, int]) -> np.ndarray:
    return index.search(sign_codes(users), min(index.ntotal, max(want, settings["rerank"])))[1]


_IVF_SETTINGS = (
    IndexSetting("nlist", "k-means cells", high=1 << 20),
    IndexSetting("nprobe", "cells scanned per query", serve_time=True, high=1 << 20),
    IndexSetting("train_size", "items sampled for k-means"),
)
_SQ8_RERANK = IndexSetting("rerank", "candidates of the 8-bit codes re-scored exactly (at least k + excluded + 1)", serve_time=True)
_SQ8_DEFAULT_RERANK = 150  # 1.5 x the default k of 100 (measured: 100k mixture, recall equal to the float32 copy's)
_HNSW_SETTINGS = (
    IndexSetting("m", "graph degree (2 m links on level 0)", high=256),
    IndexSetting("ef_construction", "candidate list while building", high=1 << 16),
    IndexSetting("ef_search", "candidate list while searching (at least the candidates asked for)", serve_time=True, high=1 << 16),
)

INDEX_REGISTRY: dict[str, IndexKind] = {
    k.name: k
    for k in (
        IndexKind("exact", "(B, D) @ (D, V) + top-k in blocks: the reference", (), lambda n: {},
                  lambda vectors, settings: IndexArtifacts("exact")),
        IndexKind("ivf", "faiss IndexIVFFlat (inner product): a float32 copy of the vectors in nlist cells",
                  _IVF_SETTINGS, _ivf_defaults, _ivf_builder(False), _load_faiss, _ivf_candidates, _ivf_clamp,
                  ("index.faiss",), _ivf_serve_clamp),
        IndexKind("ivf_sq8", "faiss IndexIVFScalarQuantizer QT_8bit: IVF with 8-bit codes, no float32 copy",
                  (*_IVF_SETTINGS, _SQ8_RERANK), lambda n: {**_ivf_defaults(n), "rerank": _SQ8_DEFAULT_RERANK}, _ivf_builder(True), _load_faiss, _ivf_candidates, _ivf_clamp,
                  ("index.faiss",), _ivf_serve_clamp),
        IndexKind("hnsw", "faiss IndexHNSWFlat (inner product): graph + a float32 copy of the vectors",
                  _HNSW_SETTINGS, _hnsw_defaults, _hnsw_builder(False), _load_faiss, _hnsw_candidates, files=("index.faiss",)),
        IndexKind("hnsw_sq8", "faiss IndexHNSWSQ QT_8bit: graph + 8-bit codes, no float32 copy",
                  (*_HNSW_SETTINGS, _SQ8_RERANK), lambda n: {**_hnsw_defaults(n), "rerank": _SQ8_DEFAULT_RERANK}, _hnsw_builder(True), _load_faiss, _hnsw_candidates, files=("index.faiss",)),
        IndexKind("binary", "sign codes (ceil(D / 8) bytes), Hamming search over all codes, rerank candidates re-scored",
                  (IndexSetting("rerank", "candidates re-scored exactly", serve_time=True),), lambda n: {"rerank": 2000},
                  lambda vectors, settings: IndexArtifacts("binary", codes=sign_codes(vectors)), _load_binary,
                  _binary_candidates, files=("item_codes.npy",)),
    )
}
INDEX_KINDS: tuple[str, ...] = tuple(INDEX_REGISTRY)


def index_kind(name: str) -> IndexKind:
    """The registry entry of ``name``.

    Raises:
        ValueError: an unknown kind, naming the known ones.
    """
    try:
        return INDEX_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"index: got {name!r}; choose one of {list(INDEX_KINDS)}") from None


def resolve(kind: IndexKind, settings: dict[str, Any] | None, num_items: int) -> tuple[dict[str, Any], list[str]]:
    """The kind's defaults filled in, then clamped to what can be built over ``num_items``; a line per change."""
    given = dict(settings or {})
    kind.check(given)
    out = {**kind.defaults(num_items), **given}
    notes: list[str] = []

    def clamp(key: str, value: int, why: str) -> None:
        if out[key] != value:
            notes.append(f"index setting {key}={out[key]} {why}: built with {key}={value}")
            out[key] = value

    if kind.clamp is not None:
        kind.clamp(out, num_items, clamp)
    return out, notes
