"""collate / ParquetBatchReader: batches equal a naive row-by-row construction; edge checks.

Reference data used throughout (B = 6; M1 multi-valued, null = empty list)::

    #        i = 0   i = 1    i = 2  i = 3     i = 4  i = 5
    # "C1"   [3]     [0]      [9]    [1]       [4]    [2]
    # "C2"   [1]     [1]      [0]    [2]       [0]    [3]
    # "M1"   [5, 1]  []       [7]    [2, 2, 6] None   [4]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data import layout
from recsys.data.batch import Batch, check_ranges, collate, validate_columns
from recsys.data.loader import ParquetBatchReader
from recsys.data.writer import DatasetWriter
from recsys.features.spec import DatasetSpec, spec_from_dict

SPEC = spec_from_dict(
    {
        "name": "t",
        "features": [
            {"name": "label", "kind": "label"},
            {"name": "I1", "kind": "dense"},
            {"name": "I2", "kind": "dense"},
            {"name": "C1", "kind": "sparse", "cardinality": 10},
            {"name": "M1", "kind": "sparse", "cardinality": 8, "max_length": 4},
            {"name": "C2", "kind": "sparse", "cardinality": 4},
        ],
    }
)


def _table(rows: int = 6, seed: int = 0) -> pa.Table:
    if rows == 6 and seed == 0:
        m1 = [[5, 1], [], [7], [2, 2, 6], None, [4]]
        c1, c2 = [3, 0, 9, 1, 4, 2], [1, 1, 0, 2, 0, 3]
    else:
        rng = np.random.default_rng(seed)
        c1, c2 = rng.integers(0, 10, rows).tolist(), rng.integers(0, 4, rows).tolist()
        m1 = [None if rng.random() < 0.1 else rng.integers(0, 8, rng.integers(0, 5)).tolist() for _ in range(rows)]
    rng = np.random.default_rng(seed + 1)
    return pa.table(
        {
            "label": pa.array(rng.integers(0, 2, rows), pa.float32()),
            "I1": pa.array(rng.normal(size=rows), pa.float32()),
            "I2": pa.array(rng.normal(size=rows), pa.float32()),
            "C1": pa.array(c1, pa.int64()),
            "M1": pa.array(m1, pa.list_(pa.int64())),
            "C2": pa.array(c2, pa.int64()),
        }
    )


def _assert_matches_naive(batch: Batch, table: pa.Table | pa.RecordBatch, spec: DatasetSpec = SPEC) -> None:
    """The reference: a Python loop over ``to_pylist()`` rows, key-major."""
    rows = table.to_pylist()
    values, lengths = [], []
    for f in spec.sparse:
        for row in rows:
            v = row[f.name]
            v = [] if v is None else v if isinstance(v, list) else [v]
            values += v
            lengths.append(len(v))
    kjt = batch.sparse
    assert kjt.keys() == [f.name for f in spec.sparse]
    assert kjt.values().dtype == torch.int64
    assert kjt.values().tolist() == values
    assert kjt.lengths().tolist() == lengths
    assert kjt.offsets().tolist() == np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).tolist()
    assert kjt.stride() == len(rows)
    assert kjt.length_per_key() == [sum(lengths[k * len(rows) : (k + 1) * len(rows)]) for k in range(len(spec.sparse))]
    # torchrec's own per-key split must agree with our cached numbers (it cannot split B = 0).
    per_key = kjt.to_dict() if rows else {}
    for f in spec.sparse if rows else []:
        expect = [[] if r[f.name] is None else r[f.name] if isinstance(r[f.name], list) else [r[f.name]] for r in rows]
        assert [t.tolist() for t in per_key[f.name].to_dense()] == expect
    dense = [[row[f.name] for f in spec.dense] for row in rows]
    assert batch.dense.dtype == torch.float32 and batch.dense.shape == (len(rows), len(spec.dense))
    np.testing.assert_array_equal(batch.dense.numpy(), np.array(dense, np.float32).reshape(len(rows), len(spec.dense)))
    assert batch.labels.dtype == torch.float32 and batch.labels.shape == (len(rows),)
    np.testing.assert_array_equal(batch.labels.numpy(), np.array([r["label"] for r in rows], np.float32))
    assert batch.batch_size == len(rows)


def test_collate_draws_the_docstring_batch():
    batch = collate(_table(), SPEC)
    _assert_matches_naive(batch, _table())
    #        C1 x 6               M1: [5,1] [] [7] [2,2,6] None [4]   C2 x 6
    assert batch.sparse.values().tolist() == [3, 0, 9, 1, 4, 2, 5, 1, 7, 2, 2, 6, 4, 1, 1, 0, 2, 0, 3]
    assert batch.sparse.lengths().tolist() == [1] * 6 + [2, 0, 1, 3, 0, 1] + [1] * 6


def test_sliced_table_offsets_not_at_zero():
    table = _table(40, seed=3)
    for start, length in [(3, 7), (1, 0), (17, 23), (39, 1)]:
        part = table.slice(start, length)
        _assert_matches_naive(collate(part, SPEC), part)


def test_chunked_columns_and_record_batches():
    table = _table(30, seed=4)
    chunked = pa.concat_tables([table.slice(0, 4), table.slice(4, 11), table.slice(15, 0), table.slice(15)])
    assert chunked.column("M1").num_chunks == 4
    _assert_matches_naive(collate(chunked, SPEC), chunked)
    rb = table.slice(5, 20).to_batches()[0]
    _assert_matches_naive(collate(rb, SPEC), rb)


def test_null_list_with_a_nonempty_segment_is_empty():
    # Arrow allows a null list slot to cover child values; they must not leak into the bag.
    offsets = pa.array([0, 2, 4, 5], pa.int32())
    m1 = pa.ListArray.from_arrays(offsets, pa.array([1, 2, 3, 4, 5], pa.int64()), mask=pa.array([False, True, False]))
    table = _table(3, seed=5).set_column(4, "M1", m1)
    batch = collate(table, SPEC)
    assert batch.sparse["M1"].to_dense()[1].tolist() == []
    _assert_matches_naive(batch, table)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(0, 50), seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 50), max_size=4))
def test_collate_equals_naive_for_any_slicing_and_chunking(rows: int, seed: int, cuts: list[int]):
    table = _table(rows, seed=seed + 7)
    bounds = sorted({0, rows, *(min(c, rows) for c in cuts)})
    pieces = pa.concat_tables([table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])] or [table])
    _assert_matches_naive(collate(pieces, SPEC), pieces)


def test_batch_plugs_into_torchrec_ebc():
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    tables = [
        EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=4, num_embeddings=int(f.cardinality), feature_names=[f.name])
        for f in SPEC.sparse
    ]
    ebc = EmbeddingBagCollection(tables=tables)
    batch = collate(_table(), SPEC).to("cpu")
    kt = ebc(batch.sparse)
    assert kt.values().shape == (6, 4 * len(SPEC.sparse))  # (B, sum(D_f))
    m1 = kt["M1"]  # row 3 = sum of the rows 2, 2, 6 of M1's table
    weight = ebc.embedding_bags["t_M1"].weight
    torch.testing.assert_close(m1[3], weight[2] * 2 + weight[6])
    torch.testing.assert_close(m1[1], torch.zeros(4))


# -- edge checks ------------------------------------------------------------------------------


def test_validate_columns_names_missing_unexpected_and_types():
    table = _table().drop_columns(["C2"]).append_column("extra", pa.array(range(6)))
    with pytest.raises(ValueError, match=r"missing columns \['C2'\]; unexpected columns \['extra'\]"):
        validate_columns(table.schema, SPEC, source="part-0.parquet")
    wrong = _table().set_column(3, "C1", pa.array([1.0] * 6, pa.float64())).set_column(4, "M1", pa.array(range(6)))
    with pytest.raises(ValueError, match=r"part-0.parquet: .*'C1' \(sparse\) has type double; expected int64") as err:
        validate_columns(wrong.schema, SPEC, source="part-0.parquet")
    assert "'M1' (multi-valued, max_length 4) has type int64; expected list<int64>" in str(err.value)
    validate_columns(_table().schema, SPEC)  # the layout passes


def test_reader_rejects_a_bad_file(tmp_path: Path):
    (tmp_path / "train").mkdir()
    pq.write_table(_table().drop_columns(["I2"]), tmp_path / "train" / "part-00000.parquet")
    with pytest.raises(ValueError, match=r"part-00000.parquet: columns do not match .*missing columns \['I2'\]"):
        ParquetBatchReader(tmp_path, "train", SPEC, batch_size=4)
    with pytest.raises(FileNotFoundError, match="no validation/part-"):
        ParquetBatchReader(tmp_path, "validation", SPEC, batch_size=4)


@pytest.mark.parametrize("column, bad, row", [("C2", 4, 2), ("M1", 9, 3), ("C1", -1, 5)])
def test_check_ranges_names_feature_value_file_and_range(tmp_path: Path, column: str, bad: int, row: int):
    table = _table()
    path = tmp_path / "part-00001.parquet"
    pq.write_table(_table(), tmp_path / "part-00000.parquet")
    values = table.column(column).to_pylist()
    values[row] = [0, bad] if column == "M1" else bad
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)), path)
    card = SPEC.feature(column).cardinality
    with pytest.raises(ValueError, match=rf"feature '{column}': id {bad} in .*part-00001.parquet \(row {row}\) is outside \[0, {card}\)"):
        check_ranges([tmp_path / "part-00000.parquet", path], SPEC)


def test_check_ranges_reports_seen_ranges(tmp_path: Path):
    pq.write_table(_table(), tmp_path / "part-00000.parquet")
    assert check_ranges([tmp_path / "part-00000.parquet"], SPEC) == {"C1": (0, 9), "M1": (1, 7), "C2": (0, 3)}


def test_null_single_valued_ids_are_rejected():
    table = _table().set_column(3, "C1", pa.array([1, None, 2, 3, 4, 5], pa.int64()))
    with pytest.raises(ValueError, match=r"'C1' \(sparse ids\) has 1 null values"):
        collate(table, SPEC)


# -- ParquetBatchReader -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """103 training rows in files of 10 rows (11 files), so batches span files."""
    root = tmp_path_factory.mktemp("ds")
    writer = DatasetWriter(root, SPEC, rows_per_file=10)
    table = _table(103, seed=11)
    writer.add("train", table.slice(0, 50))
    writer.add("train", table.slice(50))
    writer.add("validation", _table(5, seed=12))
    writer.finish(source={"kind": "test"}, split={"method": "given"})
    return root


@pytest.mark.parametrize("batch_size, drop_last", [(7, False), (7, True), (10, False), (64, False), (200, False), (1, False)])
def test_reader_exact_batches_every_row_once_in_order(dataset: Path, batch_size: int, drop_last: bool):
    files = layout.split_files(dataset, "train")
    assert len(files) == 11
    truth = pa.concat_tables([pq.read_table(p) for p in files])
    reader = ParquetBatchReader(dataset, "train", batch_size=batch_size, drop_last=drop_last)
    spec = layout.dataset_spec(dataset)
    sizes, start = [], 0
    for batch in reader:
        _assert_matches_naive(batch, truth.slice(start, batch.batch_size), spec)
        sizes.append(batch.batch_size)
        start += batch.batch_size
    full, rest = divmod(103, batch_size)
    assert sizes == [batch_size] * full + ([rest] if rest and not drop_last else [])
    assert len(reader) == len(sizes) and reader.num_rows == 103
    assert [b.batch_size for b in reader] == sizes  # iterating again starts over


def test_batch_to_and_pin_memory():
    batch = collate(_table(), SPEC)
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    assert torch.equal(moved.sparse.values(), batch.sparse.values()) and moved.batch_size == 6
    if torch.cuda.is_available():
        assert batch.pin_memory().dense.is_pinned()
