"""Ingest edges shared by every source: non-finite dense values, split fractions and empty
splits, and text files recognised by their bytes (UTF-8 BOM, gzip without a ``.gz`` name)."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import cli
from recsys.data.criteo import UTF8_BOM, ingest_criteo
from recsys.data.movielens import ingest_movielens
from recsys.data.parquet_source import ingest_parquet
from recsys.features.spec import builtin_spec, spec_from_dict

SPEC = spec_from_dict({
    "name": "t",
    "features": [
        {"name": "y", "kind": "label"},
        {"name": "d", "kind": "dense"},
        {"name": "g", "kind": "dense", "transform": "log1p"},
        {"name": "s", "kind": "sparse", "cardinality": 10},
    ],
})


def _table(d: list, g: list) -> pa.Table:
    n = len(d)
    return pa.table({
        "y": pa.array(np.arange(n) % 2, pa.float64()),
        "d": pa.array(d, pa.float64()),
        "g": pa.array(g, pa.float64()),
        "s": pa.array(np.arange(n) % 3, pa.int64()),
    })


# -- non-finite dense values ------------------------------------------------------------------------
def test_parquet_nonfinite_dense_is_missing_and_counted(tmp_path, raw):
    inf = math.inf
    d = [inf, -inf, math.nan, None, 2.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    g = [1.0, inf, 3.0, -inf, math.nan, math.nan, None, 0.0, 7.0, -2.0]
    pq.write_table(_table(d, g), tmp_path / "a.parquet")
    m = ingest_parquet(tmp_path / "a.parquet", tmp_path / "out", SPEC)
    assert m["nonfinite_dense"] == {"d": 3, "g": 4}  # NaN, +inf, -inf values present in the file
    assert m["missing_dense"] == {"d": 1, "g": 1}  # nulls
    frame = __import__("pandas").concat([raw.read_split(tmp_path / "out", s) for s in ("train", "validation", "test")])
    assert np.isfinite(frame[["d", "g"]].to_numpy()).all()
    # rows stay in file order: one rule, non-finite -> 0 before the transform (log1p(0) = 0)
    assert frame["d"].tolist()[:5] == [0.0, 0.0, 0.0, 0.0, 2.5]
    expected_g = [math.log1p(1), 0, math.log1p(3), 0, 0, 0, 0, 0, math.log1p(7), 0]
    np.testing.assert_allclose(frame["g"].to_numpy(), expected_g, rtol=1e-6)


def test_criteo_empty_counters_are_missing_not_nonfinite(tmp_path, raw):
    lines = [raw.criteo_line(dense=[1, "", 3, *range(10)])] * 10
    m = ingest_criteo(raw.write_lines(tmp_path / "train.txt", lines), tmp_path / "out", builtin_spec("criteo"))
    assert m["missing_dense"]["I2"] == 10 and m["missing_dense"]["I1"] == 0
    assert set(m["nonfinite_dense"].values()) == {0}  # integers only: nothing can be inf or NaN


# -- split fractions ------------------------------------------------------------------------------
@pytest.mark.parametrize("split, reason", [
    ("1,0,0", "validation fraction 0 is not > 0"),
    ("0.9,0.1,0", "test fraction 0 is not > 0"),
    ("1.2,-0.1,-0.1", "validation fraction -0.1 is not > 0"),
    ("0.5,0.3,0.1", "fractions sum to 0.9"),
    ("0.8,0.2", "got 2 fraction"),
    ("a,b,c", "not comma-separated numbers"),
])
def test_cli_refuses_bad_split_before_reading(tmp_path, capsys, split, reason):
    # PATH does not exist: the --split error comes first, so nothing was read
    for source in ("criteo", "movielens", "parquet"):
        args = ["ingest", source, str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--split", split]
        if source == "parquet":
            args += ["--spec", str(tmp_path / "missing.yaml")]
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert f"--split {split!r}: {reason}" in err, err
        assert "expected 3 fractions > 0 (train, validation, test) that sum to 1" in err
    assert not (tmp_path / "out").exists()


def test_library_refuses_zero_fraction_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"--split 1,0,0: validation fraction 0 is not > 0"):
        ingest_parquet(tmp_path / "missing", tmp_path / "out", SPEC, fractions=(1, 0, 0))
    with pytest.raises(ValueError, match=r"--split 0.5,0.5,0: test fraction 0"):
        ingest_criteo(tmp_path / "missing", tmp_path / "out", builtin_spec("criteo"), fractions=(0.5, 0.5, 0))


def test_split_left_empty_by_a_tiny_input_is_named(tmp_path, raw):
    pq.write_table(_table([1.0, 2.0], [1.0, 2.0]), tmp_path / "a.parquet")
    # 2 rows, 0.8 / 0.1 / 0.1: boundaries round(1.6) = 2, round(1.8) = 2 -> validation and test empty
    with pytest.raises(ValueError, match=r"split 'validation' has 0 rows after splitting \(2 train, 0 validation, 0 test"):
        ingest_parquet(tmp_path / "a.parquet", tmp_path / "out", SPEC)
    assert not (tmp_path / "out").exists()  # nothing written
    src = raw.write_lines(tmp_path / "train.txt", [raw.CRITEO_LINE] * 3)
    with pytest.raises(ValueError, match=r"split 'test' has 0 rows after splitting \(2 train, 1 validation, 0 test; --split 0.8,0.1,0.1 by line position"):
        ingest_criteo(src, tmp_path / "out", builtin_spec("criteo"))


# -- text files recognised by their bytes ------------------------------------------------------------
def _criteo_lines(raw) -> list[str]:
    return [raw.CRITEO_LINE] + [raw.criteo_line(label=i % 2, ids=[f"{i:08x}"] * 26) for i in range(1, 10)]


def _criteo_bytes(raw) -> bytes:
    return ("\n".join(_criteo_lines(raw)) + "\n").encode("latin-1")


def test_criteo_utf8_bom_is_skipped(tmp_path, raw):
    plain = tmp_path / "plain" / "train.txt"
    plain.parent.mkdir()
    plain.write_bytes(_criteo_bytes(raw))
    bommed = tmp_path / "bom" / "train.txt"
    bommed.parent.mkdir()
    bommed.write_bytes(b"\xef\xbb\xbf" + _criteo_bytes(raw))
    assert bommed.read_bytes()[:4] == UTF8_BOM + b"0"
    a = ingest_criteo(plain, tmp_path / "a", builtin_spec("criteo"))
    b = ingest_criteo(bommed, tmp_path / "b", builtin_spec("criteo"))  # not "field label: got '\xef\xbb\xbf0'"
    assert a["rows"] == b["rows"] and b["skipped_rows"] == 0
    for split in ("train", "validation", "test"):
        assert raw.read_split(tmp_path / "a", split).equals(raw.read_split(tmp_path / "b", split))
    assert raw.read_split(tmp_path / "b", "train")["label"][0] == 0.0


def test_gzip_without_gz_name_is_decompressed(tmp_path, raw):
    src = tmp_path / "train.txt"
    src.write_bytes(gzip.compress(UTF8_BOM + _criteo_bytes(raw)))  # gzip, and a BOM inside it
    assert src.read_bytes()[:2] == b"\x1f\x8b"
    m = ingest_criteo(src, tmp_path / "out", builtin_spec("criteo"))
    assert m["rows"] == {"train": 8, "validation": 1, "test": 1, "total": 10} and m["skipped_rows"] == 0
    train = raw.read_split(tmp_path / "out", "train")
    assert raw.raw_of(tmp_path / "out", "C26", train["C26"][0]) == 0x9727DD16
    src.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(ValueError, match=r"train\.txt: starts like gzip data \(bytes 1f 8b\) but cannot be decompressed"):
        ingest_criteo(src, tmp_path / "out", builtin_spec("criteo"))


def test_utf16_still_named_with_a_bom(tmp_path, raw):
    src = tmp_path / "train.txt"
    src.write_bytes(("\n".join(_criteo_lines(raw)) + "\n").encode("utf-16"))  # BOM ff fe + NULs
    with pytest.raises(ValueError, match=r"train\.txt, line 1: NUL byte: binary or UTF-16"):
        ingest_criteo(src, tmp_path / "out", builtin_spec("criteo"))


def test_movielens_ml1m_with_utf8_boms(tmp_path, raw):
    plain, bommed = tmp_path / "plain", tmp_path / "bom"
    for d, prefix in ((plain, b""), (bommed, UTF8_BOM)):
        d.mkdir()
        for name, lines in (("ratings.dat", raw.ML1M_RATINGS), ("users.dat", raw.ML1M_USERS), ("movies.dat", raw.ML1M_MOVIES)):
            (d / name).write_bytes(prefix + ("\n".join(lines) + "\n").encode("latin-1"))
    assert (bommed / "ratings.dat").read_bytes()[:5] == b"\xef\xbb\xbf1:"
    spec = builtin_spec("movielens")
    a = ingest_movielens(plain, tmp_path / "a", spec, fractions=(0.7, 0.1, 0.2))
    b = ingest_movielens(bommed, tmp_path / "b", spec, fractions=(0.7, 0.1, 0.2))
    assert a["rows"] == b["rows"] and b["skipped_rows"] == 0
    for split in ("train", "validation", "test"):
        assert raw.read_split(tmp_path / "a", split).equals(raw.read_split(tmp_path / "b", split))
    # the first user (1, line 1 of users.dat after the BOM) and movie keep their ids and tokens
    train = raw.read_split(tmp_path / "b", "train")
    assert 1 in {raw.raw_of(tmp_path / "b", "user_id", i) for i in train["user_id"]}
    assert "Toy Story (1995)" in {raw.token_of(tmp_path / "b", "item_id", i) for i in train["item_id"]}
