"""Loaders: a data set split -> a stream of :class:`~recsys.data.batch.Batch`.

Two ways in, the same batches out:

* **Ray Data** (training on Ray Train): :func:`ray_dataset` reads a split's parquet files into a
  ``ray.data.Dataset``; pass it to the trainer (``datasets={"train": ds}``) and, on each worker,
  :func:`iter_batches` over ``ray.train.get_dataset_shard("train")``.
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

    # on a Ray Train worker:
    for batch in iter_batches(ray.train.get_dataset_shard("train"), spec, batch_size=4096):
        ...
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data import layout
from recsys.data.batch import Batch, batch_columns, collate, validate_columns
from recsys.features.spec import DatasetSpec

if TYPE_CHECKING:  # Ray is imported lazily: the local reader must not pay for (or need) it.
    import ray.data

__all__ = ["ParquetBatchReader", "ray_dataset", "iter_batches", "validated_files"]


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

