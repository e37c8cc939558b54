"""Criteo TSV ingest: values end to end (file -> parquet -> vocab), split, bad lines, CLI."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from jobs import cli
from recsys.data.criteo import Fields, count_lines, criteo_files, ingest_criteo, parse_hex, parse_int, read_line_blocks
from recsys.features.spec import builtin_spec

SPEC = builtin_spec("criteo")


def _ten_lines(raw) -> list[str]:
    lines = [raw.CRITEO_LINE]
    for i in range(1, 10):
        lines.append(raw.criteo_line(label=i % 2, dense=[i, -3, "", *range(10)], ids=[f"{i:08x}"] + [f"{j:08x}" for j in range(2, 27)]))
    return lines


def test_real_line_end_to_end(tmp_path, raw):
    src = raw.write_lines(tmp_path / "train.txt", _ten_lines(raw))
    m = ingest_criteo(src, tmp_path / "out", SPEC)
    assert m["rows"] == {"train": 8, "validation": 1, "test": 1, "total": 10}
    assert m["split"] == {"method": "row_order", "fractions": [0.8, 0.1, 0.1], "boundaries": [8, 9],
                          "unit": "line position over all files in order (bad lines included)"}
    assert m["skipped_rows"] == 0 and m["missing_id"] == -1
    train = raw.read_split(tmp_path / "out", "train")
    row = train.iloc[0]  # 0  1 1 5 0 1382 4 15 2 181 1 2 '' 2  68fd1e64 ...
    assert row["label"] == 0.0
    assert row["I1"] == pytest.approx(math.log1p(1)) and row["I5"] == pytest.approx(math.log1p(1382))
    assert row["I12"] == 0.0  # empty -> missing -> 0
    assert raw.raw_of(tmp_path / "out", "C1", row["C1"]) == 0x68FD1E64
    assert raw.raw_of(tmp_path / "out", "C26", row["C26"]) == 0x9727DD16
    assert raw.raw_of(tmp_path / "out", "C22", row["C22"]) == -1  # empty categorical -> raw id -1
    second = train.iloc[1]  # label 1, I2 = -3 (clamped), I3 empty
    assert second["label"] == 1.0 and second["I1"] == pytest.approx(math.log1p(1))
    assert second["I2"] == 0.0 and second["I3"] == 0.0
    assert raw.raw_of(tmp_path / "out", "C1", second["C1"]) == 1
    # C2 value 00000002 appears in 9 training rows: most frequent -> index 1
    assert second["C2"] == 1 and raw.raw_of(tmp_path / "out", "C2", 1) == 2
    test = raw.read_split(tmp_path / "out", "test")
    assert test.iloc[0]["C1"] == 0  # id 9 never seen in training -> OOV
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["vocab"]["C1"]["oov_values"]["test"] == 1


def test_hex_decoder_matches_int(tmp_path):
    rng = np.random.default_rng(0)
    texts = []
    for n in rng.integers(1, 16, 500):
        texts.append("".join(rng.choice(list("0123456789abcdefABCDEF"), n)))
    block = ("\n".join(texts) + "\n").encode()
    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    f = Fields(np.frombuffer(block, np.uint8), starts[:, None], ends[:, None], np.arange(1, len(texts) + 1))
    ids, bad = parse_hex(f, [0])
    assert not bad.any()
    assert ids[:, 0].tolist() == [int(t, 16) for t in texts]


def test_chunking_does_not_change_result(tmp_path, raw):
    src = raw.write_lines(tmp_path / "train.txt", _ten_lines(raw) * 3)
    a = ingest_criteo(src, tmp_path / "a", SPEC, chunk_rows=4)
    b = ingest_criteo(src, tmp_path / "b", SPEC, chunk_rows=1000)
    assert a["rows"] == b["rows"] == {"train": 24, "validation": 3, "test": 3, "total": 30}
    for split in ("train", "validation", "test"):
        assert raw.read_split(tmp_path / "a", split).equals(raw.read_split(tmp_path / "b", split))
    assert [s for _, s in read_line_blocks(src, 7)][-1].count(b"\n") == 30 - 4 * 7


def test_terabyte_days_in_order_and_gzip(tmp_path, raw):
    d = tmp_path / "tb"
    for day in (0, 1, 2, 10):
        lines = [raw.criteo_line(label=day % 2, ids=[f"{day:08x}"] * 26)] * 5
        if day == 2:
            d.mkdir(exist_ok=True)
            with gzip.open(d / "day_2.gz", "wt") as fh:
                fh.write("\n".join(lines) + "\n")
        else:
            raw.write_lines(d / f"day_{day}", lines)
    assert [p.name for p in criteo_files(d)] == ["day_0", "day_1", "day_2.gz", "day_10"]
    assert count_lines(d / "day_2.gz") == 5
    m = ingest_criteo(d, tmp_path / "out", SPEC, fractions=(0.5, 0.25, 0.25))
    assert m["rows"] == {"train": 10, "validation": 5, "test": 5, "total": 20}
    test = raw.read_split(tmp_path / "out", "test")
    assert (test["C1"] == 0).all()  # day 10 ids never seen in training


def test_last_line_without_newline_and_crlf(tmp_path, raw):
    src = tmp_path / "train.txt"
    src.write_bytes((raw.CRITEO_LINE + "\r\n" + raw.CRITEO_LINE + "\r\n" + raw.CRITEO_LINE).encode())
    m = ingest_criteo(src, tmp_path / "out", SPEC, fractions=(0.4, 0.3, 0.3))
    assert m["rows"] == {"train": 1, "validation": 1, "test": 1, "total": 3}
    train = raw.read_split(tmp_path / "out", "train")
    assert raw.raw_of(tmp_path / "out", "C26", train["C26"][0]) == 0x9727DD16


BAD = [
    (lambda r: r.CRITEO_LINE + "\textra", r"train\.txt, line 3: expected 40 '\\t'-separated fields .*got 41"),
    (lambda r: "", r"train\.txt, line 3: expected 40 .*got 1"),
    (lambda r: r.criteo_line(ids=["68fd1e64", "zz12"] + ["1"] * 24), r"train\.txt, line 3: field C2: got 'zz12'; expected 1-15 hex digits"),
    (lambda r: r.criteo_line(dense=[1, 2, "3.5"] + [1] * 10), r"train\.txt, line 3: field I3: got '3\.5'; expected an integer"),
    (lambda r: r.criteo_line(label=2), r"train\.txt, line 3: field label: got '2'; expected 0 or 1"),
    (lambda r: r.criteo_line(ids=["1" * 16] + ["1"] * 25), r"line 3: field C1: got '1111111111111111'"),
]


@pytest.mark.parametrize("make_bad, message", BAD, ids=["columns+", "empty-line", "hex", "dense", "label", "hex-too-long"])
def test_bad_line_is_named(tmp_path, raw, make_bad, message):
    src = raw.write_lines(tmp_path / "train.txt", [raw.CRITEO_LINE, raw.CRITEO_LINE, make_bad(raw), raw.CRITEO_LINE])
    with pytest.raises(ValueError, match=message):
        ingest_criteo(src, tmp_path / "out", SPEC)


def test_skip_bad_rows_counts_and_keeps_boundaries(tmp_path, raw):
    lines = _ten_lines(raw)
    lines[2] = raw.criteo_line(label=7)
    lines[5] = "garbage"
    src = raw.write_lines(tmp_path / "train.txt", lines)
    m = ingest_criteo(src, tmp_path / "out", SPEC, skip_bad_rows=True)
    assert m["skipped_rows"] == 2
    assert [(e["line"], e["reason"][:11]) for e in m["skipped_examples"]] == [(3, "field label"), (6, "expected 40")]
    assert m["skipped_examples"][0]["file"] == str(src)
    assert m["rows"] == {"train": 6, "validation": 1, "test": 1, "total": 8}
    assert m["split"]["boundaries"] == [8, 9]


def test_empty_and_utf16_files(tmp_path, raw):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.txt: empty file"):
        ingest_criteo(tmp_path / "empty.txt", tmp_path / "out", SPEC)
    (tmp_path / "u16.txt").write_bytes((raw.CRITEO_LINE + "\n").encode("utf-16"))
    with pytest.raises(ValueError, match=r"u16\.txt, line 1: NUL byte: binary or UTF-16"):
        ingest_criteo(tmp_path / "u16.txt", tmp_path / "out", SPEC)


def test_cli_ok_and_one_line_error(tmp_path, raw, capsys):
    src = raw.write_lines(tmp_path / "train.txt", _ten_lines(raw))
    assert cli.main(["ingest", "criteo", str(src), "--out", str(tmp_path / "out"), "--split", "0.6,0.2,0.2"]) == 0
    out = capsys.readouterr().out
    assert "train 6, validation 2, test 2" in out and "C1 " in out
    raw.write_lines(src, [raw.CRITEO_LINE, raw.criteo_line(ids=["xyz"] * 26)])
    assert cli.main(["ingest", "criteo", str(src), "--out", str(tmp_path / "out"), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("recsys ingest: error: ") and "line 2: field C1: got 'xyz'" in err
    assert cli.main(["ingest", "criteo", str(src), "--out", str(tmp_path / "o"), "--split", "0.8,0.3"]) == 1
    assert "--split '0.8,0.3'" in capsys.readouterr().err
    assert cli.main(["ingest", "criteo", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_int_decoder_matches_int_up_to_18_digits():
    rng = np.random.default_rng(1)
    texts = []
    for n in rng.integers(1, 19, 2000):
        digits = "".join(rng.choice(list("0123456789"), n))
        texts.append(("-" if rng.random() < 0.3 else "") + digits)
    texts += ["978300760", "1700000000", "-123456789012345678", "0" * 18]
    block = ("\n".join(texts) + "\n").encode()
    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    f = Fields(np.frombuffer(block, np.uint8), starts[:, None], ends[:, None], np.arange(1, len(texts) + 1))
    values, bad = parse_int(f, [0])
    assert not bad.any()
    assert values[:, 0].tolist() == [float(int(t)) for t in texts]
    bad_block = b"1234567890123456789\n12345678x0\n-\n"  # 19 digits, a letter past the last 8, a lone '-'
    ends = np.flatnonzero(np.frombuffer(bad_block, np.uint8) == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    f = Fields(np.frombuffer(bad_block, np.uint8), starts[:, None], ends[:, None], np.arange(1, 4))
    assert parse_int(f, [0])[1][:, 0].tolist() == [True, True, True]
