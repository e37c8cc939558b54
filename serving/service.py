"""A loaded bundle ready to answer queries, and the micro-batcher in front of it.

    .venv/bin/python -m pytest tests/unit/serving/test_service.py -q

:class:`LoadedService` = bundle + :class:`~serving.features.UserEncoder` + :class:`~serving.retriever.Retriever`;
:meth:`LoadedService.run` answers many queries with ONE user-tower forward and ONE index search.

:class:`MicroBatcher` collects concurrent queries (up to ``max_batch``, waiting at most
``max_wait_s`` after the first) and runs each batch on one worker thread, so the event loop keeps
parsing requests while a batch computes, and queries that arrive during a batch form the next.
Each query carries the service it was admitted under, so a hot swap never moves a query that is
already in flight onto another bundle (a batch is split by service).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from serving.bundle import Bundle, load_bundle
from serving.features import FieldError, ParsedUser, RequestError, UserEncoder, coerce_id
from serving.retriever import Retriever


@dataclass
class Query:
    """One user's query: parsed features, list length, item indices to leave out."""

    user: ParsedUser
    k: int
    exclude: np.ndarray


@dataclass
class Answer:
    items: list[Any]  # raw item ids
    scores: list[float]
    indices: np.ndarray  # item indices (for tests and logs)


class LoadedService:
    """A verified bundle with its encoder and retriever.

    Args:
        bundle (Bundle): from :func:`serving.bundle.load_bundle`.
        index_overrides (dict | None): serve-time index settings (``nprobe``, ``ef_search``, ``rerank``).
        require_all_features (bool): every single-valued user feature required (``--require-all-features``).

    Attributes:
        notes: index settings served otherwise than the manifest or the overrides asked, one line each.
    """

    def __init__(self, bundle: Bundle, index_overrides: dict[str, Any] | None = None, require_all_features: bool = False):
        m = bundle.manifest
        self.bundle = bundle
        self.bundle_id = bundle.bundle_id
        self.item_vocab = bundle.vocabs[m["items"]["id_feature"]]
        self.encoder = UserEncoder(m["user_tower"]["features"], bundle.vocabs, m["items"]["id_feature"], require_all_features)
        retriever = Retriever(
            bundle.stored_vectors, m["index"]["kind"], m["index"]["settings"], scales=bundle.item_scales,
            index_bytes=bundle.index_bytes, codes=bundle.item_codes, first_item=int(m["items"]["first_item"]),
        )
        bundle.index_bytes = None  # the retriever holds the deserialised index; the bytes would be a second copy
        self.retriever = retriever.with_settings(index_overrides) if index_overrides else retriever
        self.notes = self.retriever.notes
        self._raw = self.item_vocab.raw_by_index
        self._tokens = self.item_vocab.token_by_index

    @classmethod
    def from_path(cls, path: str | Path, index_overrides: dict[str, Any] | None = None,
                  require_all_features: bool = False) -> "LoadedService":
        """Load, verify and warm up (one forward and search, so the first request pays no lazy init)."""
        service = cls(load_bundle(path), index_overrides, require_all_features)
        service.warm_up()
        return service

    def warm_up(self) -> None:
        f = self.encoder.features
        user = ParsedUser([np.zeros(1 if not x.multi_valued else 0, np.int64) for x in f])
        self.run([Query(user, 1, np.empty(0, np.int64))])

    def item_indices(self, raw_ids: Sequence[Any], path: str = "exclude") -> np.ndarray:
        """Item indices of raw item ids, matched by the type of the source's ids
        (:func:`serving.features.coerce_id`); well-typed ids the catalogue does not hold are left out
        (they cannot come back anyway).

        Raises:
            RequestError: each id of the wrong type, named ``exclude[i]``.
        """
        errors: list[FieldError] = []
        string_ids = bool(self.item_vocab.tokens)
        raw_ids = [coerce_id(x, self.item_vocab.name, string_ids, f"{path}[{i}]", errors) for i, x in enumerate(raw_ids)]
        if errors:
            raise RequestError(errors)
        ints = np.array([x for x in raw_ids if isinstance(x, int)], dtype=np.int64)
        idx, known = self.item_vocab.lookup(ints)
        out = [idx[known]]
        tokens = [self.item_vocab.tokens.get(x) for x in raw_ids if isinstance(x, str)]
        out.append(np.array([t for t in tokens if t is not None], dtype=np.int64))
        return np.unique(np.concatenate(out))

    def raw_item(self, index: int) -> Any:
        token = self._tokens.get(index) if self._tokens else None
        return token if token is not None else int(self._raw[index])

    @torch.inference_mode()
    def user_vectors(self, users: Sequence[ParsedUser]) -> torch.Tensor:
        """``(B, D)`` user vectors from the exported tower."""
        values, lengths = self.encoder.encode(users)
        return self.bundle.user_tower(values, lengths)[: len(users)]

    def run(self, queries: Sequence[Query]) -> list[Answer]:
        """One forward + one search for all queries."""
        users = self.user_vectors([q.user for q in queries])
        k = max(q.k for q in queries)
        excludes = [q.exclude for q in queries]
        scores, items = self.retriever.search(users, k, excludes if any(len(e) for e in excludes) else None)
        answers = []
        for row, q in enumerate(queries):
            idx = items[row, : q.k]
            keep = idx >= 0
            idx, sc = idx[keep], scores[row, : q.k][keep]
            raw = [self.raw_item(int(i)) for i in idx] if self._tokens else self._raw[idx].tolist()
            answers.append(Answer(raw, sc.tolist(), idx))
        return answers


class MicroBatcher:
    """Batches concurrent queries per service (module docstring).

    Args:
        max_batch (int): queries per batch at most.
        max_wait_s (float): how long a batch waits for more queries after its first. Default 0:
            batches form from the queries that arrived while the previous batch computed.
        on_batch (callable | None): ``on_batch(size, seconds)`` after each batch (metrics).
        thread (bool): compute batches on a worker thread (the event loop keeps parsing
            requests meanwhile) instead of inline on the event loop. Default False: on a few
            cores the hand-off costs more than it overlaps (GIL switches, thread wake-ups;
            measured in docs/serving.md), and inline batches still form from the queued requests.
    """

    def __init__(self, max_batch: int = 32, max_wait_s: float = 0.0, on_batch=None, thread: bool = False):
        if max_batch < 1:
            raise ValueError(f"max_batch: got {max_batch}; give at least 1")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_ms: got {max_wait_s * 1000}; give 0 or more")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-batch") if thread else None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, service: LoadedService, query: Query) -> Answer:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((service, query, future))
        return await future

    async def _collect(self) -> list[tuple[LoadedService, Query, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        await asyncio.sleep(0)  # let requests already read from sockets enqueue their queries
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[int, list] = {}
            for entry in batch:
                groups.setdefault(id(entry[0]), []).append(entry)
            for entries in groups.values():
                service = entries[0][0]
                live = [e for e in entries if not e[2].done()]  # a client that went away
                if not live:
                    continue
                start = time.perf_counter()
                try:
                    queries = [e[1] for e in live]
                    if self._executor is not None:
                        answers = await loop.run_in_executor(self._executor, service.run, queries)
                    else:
                        answers = service.run(queries)
                except Exception as exc:  # a failed batch fails its queries, never the worker
                    for e in live:
                        if not e[2].done():
                            e[2].set_exception(exc)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(live), time.perf_counter() - start)
                for e, answer in zip(live, answers):
                    if not e[2].done():
                        e[2].set_result(answer)
