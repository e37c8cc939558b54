"""Top-k retrieval over the item vectors: exact, faiss IVF-Flat / HNSW-Flat, binary codes + rerank.

    .venv/bin/python -m pytest tests/unit/serving/test_retriever.py -q

Every kind returns ``(scores (B, k) float32, items (B, k) int64)``, best first, scored EXACTLY
(``<u, v>`` in float32 with the bundle's dequantised vectors) and ordered by the tie rule of
:func:`recsys.retrieval_metrics.exact_topk`: score descending, equal scores by lower item index.
Rows below ``first_item`` (the OOV row 0) and each query's excluded items never appear; where
fewer than k items remain, the tail holds item ``-1`` and score ``-inf``.

* ``exact``: ``(B, D) @ (D, V)`` + top-k: the reference, and the default for small catalogues.
* ``ivf``: ``faiss.IndexIVFFlat`` (inner product): ``nlist`` k-means cells, ``nprobe`` scanned.
* ``hnsw``: ``faiss.IndexHNSWFlat`` (inner product): graph degree ``m``, ``ef_construction``,
  ``ef_search``. faiss's HNSW returns at most ``efSearch`` results and never raises it to k, so
  the search sets ``efSearch = max(ef_search, candidates)`` itself.
* ``binary``: the sign bits of the item vectors as ``ceil(D / 8)``-byte codes (the
  "Binary Embedding-based Retrieval" idea: compact codes for candidate generation), Hamming
  search over all codes (``faiss.IndexBinaryFlat``) for ``rerank`` candidates, then the exact
  rerank of those with the stored (float or int8) vectors.

ANN kinds fetch ``k + (excluded items of the query) + first_item`` candidates, so exclusions
never shorten a list the index could fill; candidates are re-scored exactly before the top-k.
An ANN search can still find fewer than k eligible items (IVF cells scanned by ``nprobe`` may
hold fewer items than k; an HNSW graph walk may stop short): those queries, and only those, are
answered again by exact search, so an answer holds k items whenever the catalogue has k eligible
items (``Retriever.exact_fallbacks`` counts them). Settings that cannot be built as asked
(``nlist`` above the item count, ``nprobe`` above ``nlist``, ``train_size`` below ``nlist``) are
clamped by :func:`resolve_index_settings`, each with a line saying so, and bundles record what
was built.

Threads: a process that serves batch-1 queries on a few cores is fastest with ONE thread per
library; idle OpenMP / OpenBLAS pools of torch and faiss spinning next to each other made
batch-1 latencies 5-10x worse on 2 cores. :func:`set_threads` sets all of them deliberately.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import numpy as np
import torch

from recsys.retrieval_metrics import topk_lower_index

from serving.index_kinds import INDEX_KINDS, INDEX_REGISTRY, IndexArtifacts, index_kind, resolve, sign_codes  # noqa: F401 (re-exported)

# derived from the registry (serving.index_kinds): one entry per kind, nothing to keep in step here
BUILD_SETTINGS: dict[str, tuple[str, ...]] = {name: k.setting_names for name, k in INDEX_REGISTRY.items()}
SERVE_TIME_SETTINGS: dict[str, tuple[str, ...]] = {name: k.serve_time_names for name, k in INDEX_REGISTRY.items()}


def set_threads(num_threads: int = 1) -> None:
    """One deliberate thread count for torch, faiss (OpenMP) and OpenBLAS / MKL.

    Environment variables only reach pools created after they are set, so call this before the
    first heavy numpy / torch / faiss call (``recsys serve`` calls it first thing).
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(num_threads)
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(num_threads)
    except RuntimeError:  # only settable before the first inter-op parallel work
        pass
    import faiss

    faiss.omp_set_num_threads(num_threads)


def default_index_settings(kind: str, num_items: int) -> dict[str, Any]:
    """Defaults that reach recall@100 >= 0.95 against exact on the harder synthetic catalogue.

    Measured on :func:`serving.testing.mixture_vectors` (overlapping power-law clusters, queries
    between clusters) from 20k to 1M items (docs/serving.md, "Index choices"):

    * ivf: ``nlist = 4 sqrt(V)`` cells (at most V / 39, faiss's floor of training points per cell),
      ``nprobe = 24 nlist^0.3``: the share of cells to scan for 0.95 falls as the catalogue grows
      (20k items: 156 of 512, 100k: 205 of 1,265, 1M: 289 of 4,000), fitted to those runs;
      k-means on ``64 nlist`` sampled items.
    * hnsw: ``m 32``, ``ef_construction 100``, ``ef_search 256`` up to 100k items, then
      ``256 (V / 100k)^0.3`` (1M items: 511; at 256 recall@100 fell to 0.919 there, 512 gave 0.966).
    * binary: ``rerank 2000`` candidates. 32-bit sign codes at D = 32 are weak candidates on the
      harder catalogue (docs/serving.md): a recall of 0.95 needs a rerank of about a fifth of it.

    Raises:
        ValueError: an unknown kind.
    """
    return index_kind(kind).defaults(num_items)


def parse_index_settings(pairs: Sequence[str]) -> dict[str, int]:
    """``["nprobe=32", ...]`` (``--index-setting KEY=N`` values) -> ``{"nprobe": 32}``.

    Raises:
        ValueError: a pair that is not ``key=integer``.
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--index-setting: got {pair!r}; give key=integer, e.g. nprobe=32")
        out[key.strip()] = int(value)
    return out


def resolve_index_settings(kind: str, settings: dict[str, Any] | None, num_items: int) -> tuple[dict[str, Any], list[str]]:
    """The settings an index of ``kind`` over ``num_items`` vectors is really built with, and a line per change.

    The defaults of :func:`default_index_settings` are filled in, then what cannot be built as asked is
    clamped: IVF ``nlist`` to the item count (k-means cannot make more cells than points), ``train_size``
    into ``[nlist, num_items]``, ``nprobe`` to ``nlist``. Export records the result in the manifest, so
    ``/v1/metadata`` shows the index that serves.

    Raises:
        ValueError: an unknown kind, a setting the kind does not take, a value below 1.
    """
    return resolve(index_kind(kind), settings, num_items)


def check_settings(kind: str, settings: dict[str, Any], serve_time: bool = False) -> None:
    """Raise ``ValueError`` naming any setting the kind does not take (at serve time: only those that may change
    without a rebuild) or a value outside the setting's range."""
    index_kind(kind).check(settings, serve_time)


def _topk_tie_rule(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`recsys.retrieval_metrics.topk_lower_index`'s result, faster for serving.

    ``torch.topk`` of k + 1 decides the SET of a row whenever its k-th and (k+1)-th scores differ
    (then only the order within ties is left: by lower index, a stable sort); rows where they are
    equal (a tie across the cut, or fewer than k finite scores) go through ``topk_lower_index``.
    """
    num_rows, num_items = scores.shape
    k = min(k, num_items)
    if k == num_items:
        return topk_lower_index(scores, k)
    values, items = torch.topk(scores, k + 1, dim=1)  # (B, k + 1) descending, ties unspecified
    ambiguous = values[:, k - 1] == values[:, k]  # (B,)
    values, items = values[:, :k], items[:, :k]
    by_index = torch.argsort(items, dim=1)
    values, items = values.gather(1, by_index), items.gather(1, by_index)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    values, items = values.gather(1, order), items.gather(1, order)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero()[:, 0]
        values[rows], items[rows] = topk_lower_index(scores[rows], k)
    return values, items


def build_index(kind: str, vectors: np.ndarray, settings: dict[str, Any]) -> IndexArtifacts:
    """Build the index of ``kind`` over float32 ``(V, D)`` vectors (every row, the OOV row included).

    Raises:
        ValueError: unknown kind or settings.
    """
    spec = index_kind(kind)
    spec.check(settings)
    return spec.build(np.ascontiguousarray(vectors, dtype=np.float32), settings)


class Retriever:
    """Top-k search of one index kind over a bundle's item vectors (module docstring).

    The vectors stay in their stored dtype (float32, float16, or int8 with per-item scales), so a
    service holds them at the bundle's precision; a search dequantises only what it reads: the
    candidate rows of an ANN / binary rerank, or the catalogue in chunks of ``chunk_rows`` for
    exact search. Scores are ``<u, v>`` in float32 of the dequantised vectors either way, equal to
    a search over :func:`serving.bundle.dequantize`'s float32 copy.

    Args:
        vectors (np.ndarray): ``(V, D)`` float32 | float16 | int8 item vectors, row i = item index i.
        kind (str): a kind of :data:`serving.index_kinds.INDEX_REGISTRY` (``exact``, ``ivf``, ``ivf_sq8``, ...).
        settings (dict): the index settings (the bundle's, with any serve-time overrides).
        scales (np.ndarray | None): ``(V,)`` float32 per-item scales, int8 vectors only.
        index_bytes (bytes | None): the serialised faiss index (ivf*, hnsw*; built from ``vectors`` when None).
        codes (np.ndarray | None): the binary codes (binary; built from ``vectors`` when None).
        first_item (int): rows below it are never returned. Default 1.
        chunk_rows (int): items per block of exact search (one ``(B, chunk) `` score block at a
            time). Default 65,536.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        kind: str,
        settings: dict[str, Any] | None = None,
        *,
        scales: np.ndarray | None = None,
        index_bytes: bytes | None = None,
        codes: np.ndarray | None = None,
        first_item: int = 1,
        chunk_rows: int = 1 << 16,
    ):
        self.spec = index_kind(kind)
        vectors = np.asarray(vectors)
        if vectors.dtype not in (np.float32, np.float16, np.int8):
            vectors = vectors.astype(np.float32)
        if (vectors.dtype == np.int8) != (scales is not None):
            raise ValueError("scales: give (V,) float32 per-item scales with int8 vectors, and only with them")
        self.kind = kind
        self.settings = dict(settings or default_index_settings(kind, len(vectors)))
        self.notes: list[str] = []  # settings that differ from what was asked, one line each (``recsys serve`` prints them)
        self.exact_fallbacks = 0  # queries an ANN search left short, answered again by exact search
        self.vectors = np.ascontiguousarray(vectors)  # stored dtype
        self.scales = None if scales is None else np.ascontiguousarray(scales, dtype=np.float32)
        self._scales_t = None if self.scales is None else torch.from_numpy(self.scales)
        self._local = threading.local()  # per-thread dequantisation buffer of exact search
        self.first_item = first_item
        self.chunk_rows = chunk_rows
        self._index = None
        if self.spec.load is not None:
            artifacts = IndexArtifacts(kind, index_bytes, codes)
            if (index_bytes is None and "index.faiss" in self.spec.files) or (codes is None and "item_codes.npy" in self.spec.files):
                self.settings, self.notes = resolve_index_settings(kind, self.settings, self.num_items)
                artifacts = build_index(kind, self.rows(slice(None)), self.settings)
            self._index = self.spec.load(artifacts)
            if self.spec.serve_clamp is not None:
                self.spec.serve_clamp(self.settings, self._index, self.notes, "manifest")

    def rows(self, index: Any) -> np.ndarray:
        """float32 dequantised rows ``vectors[index]`` (the same values as :func:`serving.bundle.dequantize`)."""
        from serving.bundle import dequantize

        return dequantize(self.vectors[index], None if self.scales is None else self.scales[index])

    def _block(self, start: int, stop: int) -> torch.Tensor:
        """float32 rows ``[start, stop)`` as a tensor, the values of :meth:`rows` (one exact cast, one
        float32 multiply). float16 / int8 blocks are converted by torch (~5x / ~2x faster than numpy)
        into one buffer per thread: a fresh 8 MiB block per step cost page faults that tripled the
        search time under uvloop (measured)."""
        block = torch.from_numpy(self.vectors[start:stop])
        if block.dtype == torch.float32:
            return block
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.shape[0] < stop - start:
            buffer = self._local.buffer = torch.empty((min(self.chunk_rows, self.num_items), self.vectors.shape[1]))
        out = buffer[: stop - start]
        out.copy_(block)
        if self.scales is not None:
            out.mul_(self._scales_t[start:stop, None])
        return out

    @property
    def num_items(self) -> int:
        return int(self.vectors.shape[0])

    def with_settings(self, overrides: dict[str, Any]) -> "Retriever":
        """A retriever sharing this one's index with serve-time settings changed (``nprobe``, ``ef_search``, ``rerank``).

        Raises:
            ValueError: a setting that cannot change at serve time.
        """
        check_settings(self.kind, overrides, serve_time=True)
        other = object.__new__(Retriever)
        other.__dict__.update(self.__dict__)
        other.settings = {**self.settings, **overrides}
        other.notes = list(self.notes)
        other.exact_fallbacks = 0
        if self.spec.serve_clamp is not None:
            self.spec.serve_clamp(other.settings, self._index, other.notes, "override")
        return other

    def search(
        self, users: np.ndarray | torch.Tensor, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query.

        Args:
            users: ``(B, D)`` float32 query vectors.
            k: items per query (at least 1).
            exclude: per query, item indices that must not be returned (or None).

        Returns:
            ``(scores (B, k) float32, items (B, k) int64)``; ``-inf`` / ``-1`` where fewer remain.
        """
        users_np = np.ascontiguousarray(users.numpy() if isinstance(users, torch.Tensor) else users, dtype=np.float32)
        if self._index is None:
            return self._exact(users_np, k, exclude)
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        want = min(self.num_items, k + extra + self.first_item)
        # the kind's search settings go with the call, never into the shared index (with_settings shares it)
        candidates = self.spec.candidates(self._index, users_np, want, self.settings)
        scores, items = self._rerank(users_np, candidates.astype(np.int64), k, exclude)
        short = self._short_rows(items, k, exclude)
        if short.size:  # the index found fewer eligible items than the catalogue has: exact search for these rows
            self.exact_fallbacks += int(short.size)
            sub_exclude = [exclude[r] for r in short] if exclude else None
            ex_scores, ex_items = self._exact(users_np[short], k, sub_exclude)  # (S, min(k, V))
            width = ex_items.shape[1]
            scores[short], items[short] = -np.inf, -1
            scores[short, :width], items[short, :width] = ex_scores, ex_items
        return scores, items

    def _short_rows(self, items: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None) -> np.ndarray:
        """Rows holding fewer items than ``min(k, eligible items of the row)``."""
        found = (items >= 0).sum(axis=1)
        eligible = np.full(len(items), self.num_items - self.first_item, dtype=np.int64)
        if exclude:
            for row, e in enumerate(exclude):
                e = np.unique(np.asarray(e, np.int64))
                eligible[row] -= int(((e >= self.first_item) & (e < self.num_items)).sum())
        return np.nonzero(found < np.minimum(k, eligible))[0]

    def _exact(self, users: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """``users @ vectors.T`` + the tie rule, one block of ``chunk_rows`` items at a time.

        Each block's own top-k (by score, then lower index) holds every item of the overall
        top-k that lies in it, so the top-k of the blocks' winners is the overall top-k.
        """
        users_t = torch.from_numpy(users)
        num_queries, num_items = users.shape[0], self.num_items
        if exclude:
            ex_rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
            ex_cols = np.concatenate([np.asarray(e, np.int64) for e in exclude]) if ex_rows.size else np.empty(0, np.int64)
        values_parts, items_parts = [], []
        for start in range(0, num_items, self.chunk_rows):
            stop = min(start + self.chunk_rows, num_items)
            scores = users_t @ self._block(start, stop).T  # (B, stop - start)
            if start < self.first_item:
                scores[:, : self.first_item - start] = float("-inf")
            if exclude and ex_rows.size:
                hit = (ex_cols >= start) & (ex_cols < stop)
                if hit.any():
                    scores[torch.from_numpy(ex_rows[hit]), torch.from_numpy(ex_cols[hit] - start)] = float("-inf")
            values, items = _topk_tie_rule(scores, k)
            values_parts.append(values)
            items_parts.append(items + start)
        if len(values_parts) == 1:
            values, items = values_parts[0], items_parts[0]
        else:
            values, items = torch.cat(values_parts, 1), torch.cat(items_parts, 1)  # (B, <= k * blocks)
            by_item = torch.argsort(items, dim=1)  # positions in item order: the tie rule's lower index
            values, items = values.gather(1, by_item), items.gather(1, by_item)
            values, pos = _topk_tie_rule(values, k)
            items = items.gather(1, pos)
        dropped = torch.isneginf(values)
        return values.numpy(), items.masked_fill(dropped, -1).numpy()

    def _rerank(
        self, users: np.ndarray, candidates: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of each query's candidates (``-1`` = none), the tie rule, top-k."""
        num_queries, width = candidates.shape
        valid = candidates >= self.first_item
        if exclude:
            for row, items in enumerate(exclude):
                if len(items):
                    valid[row] &= ~np.isin(candidates[row], items)
        safe = np.where(valid, candidates, 0)
        scores = np.einsum("bd,bcd->bc", users, self.rows(safe))  # (B, C)
        scores[~valid] = -np.inf
        order_key = np.where(valid, safe, np.iinfo(np.int64).max)  # ties by lower item index
        order = np.lexsort((order_key, -scores), axis=1)[:, :k]  # (B, min(k, C))
        top_scores = np.take_along_axis(scores, order, 1).astype(np.float32)
        top_items = np.where(np.isneginf(top_scores), -1, np.take_along_axis(candidates, order, 1))
        if top_items.shape[1] < k:
            pad = k - top_items.shape[1]
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            top_items = np.pad(top_items, ((0, 0), (0, pad)), constant_values=-1)
        return top_scores, top_items
