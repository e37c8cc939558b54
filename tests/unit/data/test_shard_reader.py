"""ShardReader: every row read by exactly one rank, seeded order, exact skip, padded evaluation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.loader import ShardReader, rank_rows
from recsys.features.spec import DatasetSpec

SPEC = DatasetSpec.model_validate(
    {
        "name": "tiny",
        "features": [
            {"name": "label", "kind": "label"},
            {"name": "x", "kind": "dense"},
            {"name": "c", "kind": "sparse", "cardinality": 1000},
            {"name": "m", "kind": "sparse", "cardinality": 1000, "max_length": 3},
        ],
    }
)


@pytest.fixture
def files(tmp_path):
    """3 files, 7 row groups of uneven size, 1003 rows; row i has dense x = i and id c = i."""
    sizes = [[100, 250], [3, 400, 50], [150, 50]]
    out, row = [], 0
    for f, groups in enumerate(sizes):
        path = tmp_path / f"part-{f:05d}.parquet"
        schema = pa.schema([("label", pa.float32()), ("x", pa.float32()), ("c", pa.int64()), ("m", pa.list_(pa.int64()))])
        with pq.ParquetWriter(path, schema) as writer:
            for n in groups:
                ids = np.arange(row, row + n)
                writer.write_table(pa.table({
                    "label": pa.array((ids % 2).astype(np.float32)),
                    "x": pa.array(ids.astype(np.float32)),
                    "c": pa.array(ids % 1000, pa.int64()),
                    "m": pa.array([[int(i % 1000)] * int(i % 3) for i in ids], pa.list_(pa.int64())),
                }, schema=schema))
                row += n
        out.append(path)
    assert row == 1003
    return out


def rows_of(batch) -> list[int]:
    return batch.dense[:, 0].long().tolist()


def test_rank_rows_deal_every_row_once():
    for n in (0, 1, 5, 10, 1003):
        for w in (1, 2, 3, 7):
            spans = [rank_rows(n, r, w) for r in range(w)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("buffer", [0, 100])
def test_train_batches_partition_the_epoch(files, world, shuffle, buffer):
    b = 64
    readers = [ShardReader(files, SPEC, rank=r, world_size=world, batch_size=b, seed=7, shuffle_files=shuffle,
                           shuffle_buffer_rows=buffer, prefetch=r % 2) for r in range(world)]
    steps = readers[0].steps_per_epoch
    assert steps == (1003 // world) // b
    seen = []
    for reader in readers:
        batches = list(reader.train_batches(epoch=0))
        assert len(batches) == steps and all(x.batch_size == b for x in batches)
        for x in batches:
            assert x.sparse["c"].values().tolist() == [i % 1000 for i in rows_of(x)]  # rows stay whole
            assert x.sparse["m"].lengths().tolist() == [i % 3 for i in rows_of(x)]
            seen += rows_of(x)
    assert len(seen) == len(set(seen)) == world * steps * b  # no row twice, none invented
    if not shuffle and not buffer:
        assert seen[: steps * b] == list(range(steps * b))  # file order on rank 0


def test_seeded_order_is_reproducible_and_changes_per_epoch(files):
    def order(seed, epoch):
        reader = ShardReader(files, SPEC, rank=0, world_size=1, batch_size=50, seed=seed, shuffle_files=True, shuffle_buffer_rows=120)
        return [rows_of(x) for x in reader.train_batches(epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


@pytest.mark.parametrize("buffer", [0, 120])
def test_skip_resumes_at_the_same_rows(files, buffer):
    reader = ShardReader(files, SPEC, rank=1, world_size=2, batch_size=40, seed=3, shuffle_files=True, shuffle_buffer_rows=buffer)
    full = [rows_of(x) for x in reader.train_batches(epoch=2)]
    for skip in (0, 1, 3, 4, len(full) - 1, len(full)):
        assert [rows_of(x) for x in reader.train_batches(epoch=2, skip=skip)] == full[skip:]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_batches_score_every_row_exactly_once(files, world):
    b = 100
    per_rank = []
    for r in range(world):
        items = list(ShardReader(files, SPEC, rank=r, world_size=world, batch_size=b).eval_batches())
        per_rank.append(items)
    # Same number of forward passes with the same sizes on every rank (collectives).
    assert len({len(items) for items in per_rank}) == 1
    for k in range(len(per_rank[0])):
        assert len({items[k][0].batch_size for items in per_rank}) == 1
    gathered = [row for items in per_rank for batch, real in items for row in rows_of(batch)[:real]]
    assert gathered == list(range(1003))  # rank order = file order, each row once


def test_eval_with_more_ranks_than_rows_is_refused(files, tmp_path):
    path = tmp_path / "one.parquet"
    pq.write_table(pq.read_table(files[0]).slice(0, 1), path)
    with pytest.raises(ValueError, match="rank 1 has no rows of a 1-row split over 2 ranks"):
        list(ShardReader([path], SPEC, rank=1, world_size=2, batch_size=8, prefetch=0).eval_batches())


def test_prefetch_surfaces_errors(files):
    reader = ShardReader(files, SPEC, rank=0, world_size=1, batch_size=10, prefetch=2)

    def boom(table):
        raise RuntimeError("collate failed")

    reader._collate = boom
    with pytest.raises(RuntimeError, match="collate failed"):
        next(iter(reader.train_batches(0)))
