"""Loaders: a data set split -> a stream of :class:`~recsys.data.batch.Batch`.

Three ways in, the same batches out:

* **Per rank, deterministic** (what ``recsys train`` runs on every Ray Train worker):
  :class:`ShardReader` gives rank r of N its share of a split — seeded row-group order and
  shuffle buffer, equal full batches for training, every row exactly once (padded to equal batch
  sizes) for evaluation — and can skip to a batch of an epoch without reading it.
* **Ray Data** (pipelines and benchmarks): :func:`ray_dataset` reads a split's parquet files into
  a ``ray.data.Dataset``; :func:`iter_batches` turns it (or a trainer's dataset shard) into batches.
* **Local, Ray-free** (tests, evaluation, one process): :class:`ParquetBatchReader` reads the
  files in order with pyarrow and re-chunks them into batches of exactly ``batch_size`` rows
  across row-group and file boundaries.

Both validate the files' columns against the spec once, up front
(:func:`~recsys.data.batch.validate_columns`); id ranges are checked by
:func:`~recsys.data.batch.check_ranges`, which training runs before its first step.

Example::

    spec = layout.dataset_spec("data/synthetic_ctr")
    for batch in ParquetBatchReader("data/synthetic_ctr", "validation", spec, batch_size=4096):
        logits = model(batch.dense, batch.sparse)   # (B, 13), KJT of 28 keys -> (B,)

    # on Ray Train worker `rank` of `world`:
    reader = ShardReader(files, spec, rank=rank, world_size=world, batch_size=2048, seed=0, shuffle_files=True)
    for batch in reader.train_batches(epoch=0):
        ...
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import layout
from recsys.data.batch import Batch, batch_columns, collate, validate_columns
from recsys.features.spec import DatasetSpec

if TYPE_CHECKING:  # Ray is imported lazily: the local reader must not pay for (or need) it.
    import ray.data

__all__ = ["ParquetBatchReader", "ShardReader", "rank_rows", "ray_dataset", "iter_batches", "validated_files"]


def validated_files(root: str | Path, split: str, spec: DatasetSpec) -> list[Path]:
    """The split's part files, after checking each file's schema (metadata only) against ``spec``.

    Raises:
        FileNotFoundError: the split has no part files.
        ValueError: a file's columns or types do not match the spec (see ``validate_columns``).
    """
    files = layout.split_files(root, split)
    if not files:
        raise FileNotFoundError(f"no {split}/part-*.parquet files under {root}; is it a data set written by recsys?")
    for path in files:
        validate_columns(pq.read_schema(path), spec, source=str(path))
    return files


class ParquetBatchReader:
    """Reads a split in file order and yields batches of exactly ``batch_size`` rows.

    Every row is yielded exactly once, in file order; only the last batch may be short (or is
    dropped with ``drop_last``). Iterating again starts over.

    Args:
        root: data set folder (the ingest layout).
        split: ``train``, ``validation`` or ``test``.
        spec: the feature spec; default: the data set's resolved spec from its manifest.
        batch_size: rows per batch.
        drop_last: drop a final batch shorter than ``batch_size``.
        use_threads: let pyarrow decode columns in parallel.

    Raises:
        FileNotFoundError: the split has no files (or the data set no manifest, without ``spec``).
        ValueError: a file's columns do not match the spec; ``batch_size`` < 1.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        spec: DatasetSpec | None = None,
        batch_size: int = 4096,
        *,
        drop_last: bool = False,
        use_threads: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.spec = spec if spec is not None else layout.dataset_spec(root)
        self.files = validated_files(root, split, self.spec)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.use_threads = use_threads
        self.columns = batch_columns(self.spec)
        self.num_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)

    def __len__(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def iter_tables(self) -> Iterator[pa.Table]:
        """The raw batches as Arrow tables (columns may be chunked and sliced), before collate."""
        size = self.batch_size
        pending: list[pa.RecordBatch] = []
        num_pending = 0
        schema = None
        for path in self.files:
            pf = pq.ParquetFile(path)
            for rb in pf.iter_batches(batch_size=size, columns=self.columns, use_threads=self.use_threads):
                if schema is None:
                    schema = rb.schema
                pending.append(rb)
                num_pending += rb.num_rows
                while num_pending >= size:
                    # Zero-copy: a batch spanning row groups or files is a table of sliced chunks.
                    table = pa.Table.from_batches(pending, schema=schema)
                    yield table.slice(0, size)
                    rest = table.slice(size)
                    pending, num_pending = rest.to_batches(), rest.num_rows
        if num_pending and not self.drop_last:
            yield pa.Table.from_batches(pending, schema=schema)

    def __iter__(self) -> Iterator[Batch]:
        for table in self.iter_tables():
            yield collate(table, self.spec)


# -- Ray Data ---------------------------------------------------------------------------------


def ray_dataset(
    root: str | Path,
    split: str,
    spec: DatasetSpec | None = None,
    *,
    shuffle_files: bool = False,
    override_num_blocks: int | None = None,
    datasource_v2: bool = False,
) -> "ray.data.Dataset":
    """A lazy ``ray.data.Dataset`` over one split, reading only the columns a Batch needs.

    Row order: Ray Data streams blocks as they finish, so rows may arrive out of file order unless
    ``ray.data.DataContext.get_current().execution_options.preserve_order = True`` (slower). Training
    does not need the order; evaluation that must align rows should use :class:`ParquetBatchReader`.

    Args:
        root: data set folder (the ingest layout).
        split: ``train``, ``validation`` or ``test``.
        spec: the feature spec; default: the data set's resolved spec from its manifest.
        shuffle_files: read the files in a random order each epoch (Ray's ``shuffle="files"``).
        override_num_blocks: passed to ``ray.data.read_parquet``.
        datasource_v2: plan the read with Ray's V2 parquet reader (Ray 2.60's own default)
            instead of V1. V2 starts a pool of up to 32 footer-reading actors
            (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``) at every epoch, which costs seconds per
            epoch on a small machine: V1 was ~2x faster per epoch on 2 cores
            (``recsys bench loader`` measures both).

    Raises:
        FileNotFoundError: the split has no files.
        ValueError: a file's columns do not match the spec.
    """
    import ray.data

    spec = spec if spec is not None else layout.dataset_spec(root)
    validated_files(root, split, spec)
    # The split folder, not the list of its files: Ray 2.60 resolves each listed path in its own
    # thread, and those threads race on importing fsspec's HTTP filesystem, which fails with
    # "cannot import name 'HTTPFileSystem'" when aiohttp is not installed (as in our lock).
    ctx = ray.data.DataContext.get_current()
    default_v2 = ctx.use_datasource_v2
    ctx.use_datasource_v2 = datasource_v2  # read once, when read_parquet plans the read
    try:
        return ray.data.read_parquet(
            str(layout.split_dir(root, split)),
            file_extensions=["parquet"],
            columns=batch_columns(spec),
            shuffle="files" if shuffle_files else None,
            override_num_blocks=override_num_blocks,
        )
    finally:
        ctx.use_datasource_v2 = default_v2


@functools.cache
def _ray_collate_class() -> type:
    from ray.data.collate_fn import ArrowBatchCollateFn

    class _CollateBatch(ArrowBatchCollateFn):
        """Runs :func:`collate` (and pinning) in Ray's prefetch threads, off the training thread."""

        def __init__(self, spec: DatasetSpec, pin_memory: bool):
            self.spec = spec
            self.pin = pin_memory

        def __call__(self, table: pa.Table) -> Batch:
            batch = collate(table, self.spec)
            return batch.pin_memory() if self.pin else batch

    return _CollateBatch


def iter_batches(
    data: Any,
    spec: DatasetSpec,
    batch_size: int = 4096,
    *,
    drop_last: bool = False,
    prefetch_batches: int = 2,
    collate_in_ray: bool = True,
    pin_memory: bool = False,
    local_shuffle_buffer_size: int | None = None,
    local_shuffle_seed: int | None = None,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es from a ``ray.data.Dataset`` or a Ray Train worker's ``DataIterator``.

    Args:
        data: ``ray_dataset(...)`` or ``ray.train.get_dataset_shard(name)``.
        spec: the feature spec the data set was written with.
        batch_size: rows per batch (the last one may be short unless ``drop_last``).
        drop_last: drop a final short batch (keeps shapes static, e.g. for compiled models).
        prefetch_batches: batches Ray fetches and formats ahead in background threads.
        collate_in_ray: run :func:`collate` inside Ray's ``iter_torch_batches(collate_fn=...)`` so it
            overlaps with training in Ray's prefetch threads; ``False``: ``iter_batches`` of
            pyarrow tables and collate in the calling thread.
        pin_memory: pin the batch's host memory (in the prefetch threads) for fast copies to a GPU.
        local_shuffle_buffer_size: shuffle rows through a buffer of at least this many rows.
        local_shuffle_seed: seed of the local shuffle.

    Yields:
        CPU batches; move them with ``batch.to(device, non_blocking=True)`` (or a TrainPipeline).
    """
    common = dict(
        batch_size=batch_size,
        drop_last=drop_last,
        prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=local_shuffle_buffer_size,
        local_shuffle_seed=local_shuffle_seed,
    )
    if collate_in_ray:
        collate_fn = _ray_collate_class()(spec, pin_memory)
        # device="cpu": Ray moves only plain tensor batches; a Batch is moved by the caller.
        yield from data.iter_torch_batches(collate_fn=collate_fn, device="cpu", **common)
        return
    for table in data.iter_batches(batch_format="pyarrow", **common):
        batch = collate(table, spec)
        yield batch.pin_memory() if pin_memory else batch



# -- a rank's share of a split, deterministic (training on Ray Train) -------------------------


@dataclass(frozen=True)
class RowGroup:
    """One parquet row group: the unit that file shuffling permutes."""

    path: Path
    index: int
    num_rows: int


def row_groups(files: list[Path]) -> list[RowGroup]:
    """The row groups of ``files``, in file order (footers only)."""
    out = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        out.extend(RowGroup(Path(path), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups))
    return out


def rank_rows(num_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank`` when ``num_rows`` rows are dealt out in contiguous runs.

    The first ``num_rows % world_size`` ranks get one row more, so every row belongs to exactly
    one rank::

        rank_rows(10, r, 3) -> (0, 4), (4, 7), (7, 10)
    """
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _RowStream:
    """Reads rows ``[start, stop)`` of the concatenation of ``groups`` as Arrow tables."""

    def __init__(self, groups: list[RowGroup], columns: list[str]):
        self.groups = groups
        self.columns = columns
        self.ends = np.cumsum([g.num_rows for g in groups], dtype=np.int64)

    def tables(self, start: int, stop: int) -> Iterator[pa.Table]:
        first = int(np.searchsorted(self.ends, start, side="right"))
        for gi in range(first, len(self.groups)):
            g_start = int(self.ends[gi]) - self.groups[gi].num_rows
            if g_start >= stop:
                return
            g = self.groups[gi]
            table = pq.ParquetFile(g.path).read_row_group(g.index, columns=self.columns, use_threads=False)
            lo, hi = max(start, g_start) - g_start, min(stop, int(self.ends[gi])) - g_start
            yield table.slice(lo, hi - lo)


def _rebatch(tables: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    """Re-chunk a stream of tables into tables of exactly ``size`` rows (the last may be short)."""
    pending: list[pa.Table] = []
    num = 0
    for table in tables:
        pending.append(table)
        num += table.num_rows
        while num >= size:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, size)
            rest = joined.slice(size)
            pending, num = [rest], rest.num_rows
    if num:
        yield pa.concat_tables(pending)


class ShardReader:
    """One rank's batches of a split: every row read by exactly one rank, in a seeded order.

    Training (:meth:`train_batches`): the split's row groups are permuted with
    ``default_rng([seed, epoch])`` (``shuffle_files``), the permuted rows are dealt out to the
    ranks in contiguous runs of ``num_rows // world_size`` rows (the remainder, fewer than
    ``world_size`` rows, sits out that epoch), and each rank yields ``steps_per_epoch`` full
    batches. With ``shuffle_buffer_rows`` the rows are also shuffled within windows of that many
    rows (rounded up to whole batches), seeded by ``(seed, epoch, rank, window)``. The same
    ``(seed, epoch, rank, world_size)`` always gives the same batches, and ``skip`` batches of
    an epoch are skipped without reading them, so a resumed run sees exactly the rows the
    uninterrupted run would have.

    Evaluation (:meth:`eval_batches`): rank r scores rows :func:`rank_rows` of the split in file
    order. Ranks must run the same number of forward passes of the same sizes (sharded lookups
    are collectives), so a rank with fewer rows pads its batch with copies of its first row and
    reports how many rows are real; the gathered predictions are then the split's rows, each once.

    Ray Data's ``streaming_split`` is not used for training: its equal split drops rows, its
    block order depends on which read task finishes first, and it cannot skip to a batch.

    Args:
        files: the split's part files (``validated_files``).
        spec: the feature spec the files were written with.
        rank: this worker's rank; ``world_size``: number of ranks.
        batch_size: rows per batch on this rank (the global batch over ``world_size``).
        seed: the run's ``train.seed``.
        shuffle_files: permute row groups per epoch.
        shuffle_buffer_rows: shuffle rows within windows of at least this many rows (0: off).
        prefetch: batches collated ahead in a background thread (0: in the calling thread).
    """

    def __init__(
        self,
        files: list[Path],
        spec: DatasetSpec,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int = 0,
        shuffle_files: bool = False,
        shuffle_buffer_rows: int = 0,
        prefetch: int = 2,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.spec = spec
        self.groups = row_groups(files)
        self.num_rows = sum(g.num_rows for g in self.groups)
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seed, self.shuffle_files, self.prefetch = seed, shuffle_files, prefetch
        self.window = -(-shuffle_buffer_rows // batch_size) * batch_size if shuffle_buffer_rows else 0
        self.columns = batch_columns(spec)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per rank per epoch (the same on every rank)."""
        return (self.num_rows // self.world_size) // self.batch_size

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Batches ``skip .. steps_per_epoch - 1`` of this rank for ``epoch``."""
        return _prefetched(map(self._collate, self._train_tables(epoch, skip)), self.prefetch)

    def _train_tables(self, epoch: int, skip: int) -> Iterator[pa.Table]:
        groups = self.groups
        if self.shuffle_files:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(groups))
            groups = [groups[i] for i in order]
        stream = _RowStream(groups, self.columns)
        per_rank = self.num_rows // self.world_size
        begin = self.rank * per_rank
        steps, b = self.steps_per_epoch, self.batch_size
        if not self.window:
            start = begin + skip * b
            yield from _rebatch(stream.tables(start, begin + steps * b), b)
            return
        per_window = self.window // b
        for w in range(skip // per_window, -(-steps // per_window)):
            lo = begin + w * self.window
            hi = min(lo + self.window, begin + steps * b)
            window = pa.concat_tables(list(stream.tables(lo, hi)))
            perm = np.random.default_rng([self.seed, epoch, self.rank, w]).permutation(window.num_rows)
            window = window.take(pa.array(perm))
            first = skip - w * per_window if w == skip // per_window else 0
            for k in range(max(first, 0), window.num_rows // b):
                yield window.slice(k * b, b)

    def eval_batches(self) -> Iterator[tuple[Batch, int]]:
        """``(batch, real_rows)``: this rank's rows in file order, padded to the common batch size."""
        return _prefetched(self._eval_items(), self.prefetch)

    def _eval_items(self) -> Iterator[tuple[Batch, int]]:
        start, stop = rank_rows(self.num_rows, self.rank, self.world_size)
        most = rank_rows(self.num_rows, 0, self.world_size)[1]  # rank 0 holds the most rows
        if stop <= start:
            raise ValueError(f"rank {self.rank} has no rows of a {self.num_rows}-row split over {self.world_size} ranks")
        stream = _RowStream(self.groups, self.columns)
        b = self.batch_size
        own = _rebatch(stream.tables(start, stop), b)
        first_row = next(stream.tables(start, start + 1))
        for k in range(-(-most // b)):
            size = min(b, most - k * b)  # every rank's k-th batch has rank 0's k-th size
            table = next(own, None)
            real = 0 if table is None else table.num_rows
            if real < size:
                pad = [first_row] * (size - real)
                table = pa.concat_tables(([table] if table is not None else []) + pad)
            yield self._collate(table), real

    def _collate(self, table: pa.Table) -> Batch:
        return collate(table, self.spec)


def _prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``items`` ``depth`` ahead in a daemon thread (pyarrow and numpy release the GIL)."""
    if depth <= 0:
        yield from items
        return
    import queue
    import threading

    q: "queue.Queue[tuple[str, Any]]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # surfaced in the consumer's thread
            q.put(("error", exc))

    thread = threading.Thread(target=work, name="recsys-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
