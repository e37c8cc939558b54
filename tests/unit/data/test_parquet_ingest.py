"""Generic parquet ingest: row-order and timestamp splits, missing values, bad rows, schema errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import cli
from recsys.data.parquet_source import ingest_parquet, timestamp_boundaries
from recsys.features.spec import spec_from_dict

SPEC = spec_from_dict({
    "name": "t", "timestamp": "ts",
    "features": [
        {"name": "y", "kind": "label"},
        {"name": "d", "kind": "dense"},
        {"name": "s", "kind": "sparse", "cardinality": 10},
        {"name": "tags", "kind": "sparse", "cardinality": 10, "max_length": 2},
    ],
})


def _table(n: int = 10, **override) -> pa.Table:
    cols = {
        "y": pa.array(np.arange(n) % 2, pa.float64()),
        "d": pa.array([float(i) for i in range(n)]),
        "s": pa.array([100 + i % 3 for i in range(n)], pa.int64()),
        "tags": pa.array([[7, 8, 9]] * n, pa.list_(pa.int64())),
        "ts": pa.array(list(range(n, 0, -1)), pa.int64()),  # newest first
        "other": pa.array(["x"] * n),
    }
    cols.update(override)
    return pa.table(cols)


def test_row_order_split_and_values(tmp_path, raw):
    pq.write_table(_table(), tmp_path / "a.parquet")
    m = ingest_parquet(tmp_path / "a.parquet", tmp_path / "out", SPEC)
    assert m["split"]["method"] == "row_order" and m["split"]["boundaries"] == [8, 9]
    assert m["rows"] == {"train": 8, "validation": 1, "test": 1, "total": 10}
    assert m["ignored_columns"] == ["other"] and m["truncated_values"] == {"tags": 10}
    train = raw.read_split(tmp_path / "out", "train")
    assert train["ts"].tolist() == list(range(10, 2, -1))
    assert raw.raw_of(tmp_path / "out", "s", train["s"][0]) == 100
    assert [raw.raw_of(tmp_path / "out", "tags", t) for t in train["tags"][0]] == [7, 8]


def test_timestamp_split_over_a_folder(tmp_path, raw):
    (tmp_path / "in").mkdir()
    t = _table()
    pq.write_table(t.slice(0, 5), tmp_path / "in" / "part-1.parquet")
    pq.write_table(t.slice(5), tmp_path / "in" / "part-2.parquet")
    m = ingest_parquet(tmp_path / "in", tmp_path / "out", SPEC, timestamp_split=True)
    assert m["split"]["boundaries"] == timestamp_boundaries(np.arange(1, 11), (0.8, 0.1, 0.1)) == [9, 10]
    assert sorted(raw.read_split(tmp_path / "out", "test")["ts"]) == [10]
    assert sorted(raw.read_split(tmp_path / "out", "train")["ts"]) == list(range(1, 9))


def test_missing_values_and_bad_rows(tmp_path, raw):
    t = _table(s=pa.array([None, 1, 1, 1, 1, 1, 1, 1, 1, 1], pa.int64()),
               d=pa.array([None] + [1.0] * 9),
               y=pa.array([0.0, 1.0, None, 0, 0, 0, 0, 0, 0, 0]))
    pq.write_table(t, tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet, row 3: field y: got None; expected a finite number"):
        ingest_parquet(tmp_path / "a.parquet", tmp_path / "out", SPEC)
    m = ingest_parquet(tmp_path / "a.parquet", tmp_path / "out", SPEC, skip_bad_rows=True)
    assert m["skipped_rows"] == 1 and m["skipped_examples"][0]["row"] == 3
    assert m["rows"]["total"] == 9 and m["split"]["boundaries"] == [8, 9]  # positions count the bad row
    train = raw.read_split(tmp_path / "out", "train")
    assert raw.raw_of(tmp_path / "out", "s", train["s"][0]) == -1 and train["d"][0] == 0.0


def test_schema_errors(tmp_path):
    pq.write_table(_table().drop_columns(["s"]), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet: columns do not match feature spec 't': column 's' is missing"):
        ingest_parquet(tmp_path / "a.parquet", tmp_path / "out", SPEC)
    pq.write_table(_table(s=pa.array(["a"] * 10)), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"column 's' has type string; expected integer raw ids"):
        ingest_parquet(tmp_path / "a.parquet", tmp_path / "out", SPEC)
    (tmp_path / "b.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"b\.parquet: not a readable parquet file"):
        ingest_parquet(tmp_path / "b.parquet", tmp_path / "out", SPEC)


def test_cli_requires_timestamp_for_timestamp_split(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\nfeatures:\n  - {name: y, kind: label}\n  - {name: s, kind: sparse, cardinality: 10}\n")
    pq.write_table(_table().select(["y", "s"]), tmp_path / "a.parquet")
    args = ["ingest", "parquet", str(tmp_path / "a.parquet"), "--spec", str(spec), "--out", str(tmp_path / "out")]
    assert cli.main(args + ["--timestamp-split"]) == 1
    assert "--timestamp-split: feature spec 't' has no 'timestamp'" in capsys.readouterr().err
    assert cli.main(args) == 0
    assert "train 8, validation 1, test 1" in capsys.readouterr().out
