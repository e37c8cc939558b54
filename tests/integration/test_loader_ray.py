"""Ray Data loader: the same rows as the local reader, as Batches, on a Dataset and on Train-style shards.

Order: Ray Data streams blocks as read tasks finish, so batches may come in another order than
the files' (unless ``preserve_order``, which training does not need). The tests therefore compare
the *multiset* of rows with :class:`ParquetBatchReader`'s, and check batch sizes.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recsys.data import layout
from recsys.data.batch import Batch
from recsys.data.loader import ParquetBatchReader, iter_batches, ray_dataset
from recsys.data.writer import DatasetWriter
from recsys.features.spec import spec_from_dict

pytestmark = pytest.mark.integration

SPEC = spec_from_dict(
    {
        "name": "t",
        "features": [
            {"name": "label", "kind": "label"},
            {"name": "I1", "kind": "dense"},
            {"name": "C1", "kind": "sparse", "cardinality": 1000},
            {"name": "M1", "kind": "sparse", "cardinality": 50, "max_length": 5},
        ],
    }
)
ROWS = 1000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("ray_ds")
    writer = DatasetWriter(root, SPEC, rows_per_file=150)  # 7 files, blocks of uneven size
    writer.add(
        "train",
        pa.table(
            {
                "label": pa.array(rng.integers(0, 2, ROWS), pa.float32()),
                "I1": pa.array(rng.normal(size=ROWS), pa.float32()),
                "C1": pa.array(np.arange(ROWS), pa.int64()),  # unique per row: duplicates would hide loss
                "M1": pa.array([rng.integers(0, 49, rng.integers(0, 6)).tolist() for _ in range(ROWS)], pa.list_(pa.int64())),
            }
        ),
    )
    writer.finish(source={"kind": "test"}, split={"method": "given"})
    return root


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def _rows(batches) -> tuple[Counter, list[int]]:
    """Multiset of rows (label, dense..., one tuple of ids per key) and the batch sizes."""
    rows: Counter = Counter()
    sizes = []
    for batch in batches:
        assert isinstance(batch, Batch)
        sizes.append(batch.batch_size)
        per_key = batch.sparse.to_dict()
        bags = [[tuple(t.tolist()) for t in per_key[k].to_dense()] for k in batch.sparse.keys()]
        for i in range(batch.batch_size):
            rows[(batch.labels[i].item(), *batch.dense[i].tolist(), *(b[i] for b in bags))] += 1
    return rows, sizes


def test_ray_rows_equal_local_reader(ray_local, dataset: Path):
    """V1 reader, collate in the calling thread; the shard test below: V2, collate in Ray's threads."""
    spec = layout.dataset_spec(dataset)
    local, _ = _rows(ParquetBatchReader(dataset, "train", spec, batch_size=128))
    assert sum(local.values()) == ROWS
    ds = ray_dataset(dataset, "train", spec)
    got, sizes = _rows(iter_batches(ds.iterator(), spec, batch_size=128, collate_in_ray=False))
    assert got == local
    assert sizes[:-1] == [128] * (len(sizes) - 1) and sum(sizes) == ROWS


def test_streaming_split_shards_cover_every_row_once(ray_local, dataset: Path):
    """What Ray Train hands each worker: ``streaming_split`` DataIterators, consumed concurrently."""
    spec = layout.dataset_spec(dataset)
    local, _ = _rows(ParquetBatchReader(dataset, "train", spec, batch_size=100))
    shards = ray_dataset(dataset, "train", spec, datasource_v2=True).streaming_split(2)
    results: list = [None, None]

    def consume(i: int) -> None:
        results[i] = _rows(iter_batches(shards[i], spec, batch_size=64, collate_in_ray=True))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a shard iterator did not finish"
    assert results[0][0] + results[1][0] == local
