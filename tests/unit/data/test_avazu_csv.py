"""`recsys ingest avazu` and `recsys ingest csv` on fixtures in the real layouts.

    .venv/bin/python -m pytest tests/unit/data/test_avazu_csv.py -q
"""

from __future__ import annotations

import datetime
import gzip
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import ingest
from recsys.data import layout
from recsys.data.avazu import AVAZU_HEADER
from recsys.data.csv_source import bytes_id
from recsys.data.movielens import string_id
from recsys.data.parquet_source import MISSING_ID

HEADER = "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"


def avazu_lines(n: int, seed: int = 0) -> list[str]:
    """``n`` rows in the Kaggle train.csv format, in time order (2014-10-21 00h onwards, 30 rows an hour)."""
    rng = np.random.default_rng(seed)
    hexes = [f"{x:08x}" for x in rng.integers(0, 2**32, 40)]
    start = datetime.datetime(2014, 10, 21)
    lines = []
    for i in range(n):
        t = start + datetime.timedelta(hours=i // 30)
        pick = lambda k: hexes[int(rng.integers(0, k))]  # noqa: E731
        fields = [
            str(10000000000000000000 + i * 7919), str(int(rng.random() < 0.17)), t.strftime("%y%m%d%H"), "1005",
            str(int(rng.integers(0, 2))), pick(10), pick(10), pick(5), "ecad2386", "7801e8d9", "07d7df22",
            "a99f214a" if rng.random() < 0.8 else pick(40), pick(40), pick(20), "1", str(int(rng.integers(0, 3))),
            str(15700 + int(rng.integers(0, 20))), "320", "50", str(1700 + int(rng.integers(0, 5))), "0", "35",
            "-1" if rng.random() < 0.5 else "100084", str(int(rng.integers(0, 100)))
        ]
        lines.append(",".join(fields))
    return lines


def write(path: Path, lines: list[str], header: str = HEADER, gz: bool = False, bom: bool = False) -> Path:
    data = ((b"\xef\xbb\xbf" if bom else b"") + (header + "\n" + "\n".join(lines) + "\n").encode())
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_header_is_the_kaggle_one():
    assert ",".join(AVAZU_HEADER) == HEADER


def test_avazu_ingest_splits_hour_and_keeps_time_order(tmp_path):
    lines = avazu_lines(300)
    src = write(tmp_path / "train.gz", lines, gz=True, bom=True)  # gzip by bytes, a BOM after it
    out = tmp_path / "avazu"
    assert ingest.main(["avazu", str(src), "--out", str(out)]) == 0
    manifest = layout.read_manifest(out)
    assert manifest["rows"] == {"train": 240, "validation": 30, "test": 30, "total": 300}
    assert manifest["source"]["kind"] == "avazu" and manifest["split"]["method"] == "row_order"
    spec = layout.dataset_spec(out)
    assert "hour" not in [f.name for f in spec.features] and "id" not in [f.name for f in spec.features]
    # 2014-10-21 was a Tuesday (1); rows 0-29 at 00h, 30-59 at 01h, ...
    train = pq.read_table(layout.split_files(out, "train")).to_pydict()
    assert len(train["click"]) == 240
    test = pq.read_table(layout.split_files(out, "test")).to_pydict()
    assert len(test["click"]) == 30
    # labels kept in row order: the test split is the file's last 30 rows
    assert test["click"] == [float(line.split(",")[1]) for line in lines[-30:]]
    assert manifest["vocab"]["hour_of_day"]["size"] >= 2 and manifest["vocab"]["day_of_week"]["size"] >= 2


def test_avazu_day_of_week_and_hour_values(tmp_path):
    from recsys.data.avazu import days_from_civil

    for d in (datetime.date(2014, 10, 21), datetime.date(2000, 2, 29), datetime.date(1970, 1, 1), datetime.date(2099, 12, 31)):
        days = int(days_from_civil(np.array([d.year]), np.array([d.month]), np.array([d.day]))[0])
        assert days == (d - datetime.date(1970, 1, 1)).days
        assert (days + 3) % 7 == d.weekday()


def test_strings_hash_like_movielens():
    assert bytes_id("1fbe01fe".encode()) == string_id("1fbe01fe")
    assert bytes_id("é".encode()) == string_id("é")


@pytest.mark.parametrize(
    "row, field, shown",
    [
        (lambda f: f.__setitem__(2, "14103124"), "hour", "'14103124'"),  # hour 24
        (lambda f: f.__setitem__(2, "14023100"), "hour", "'14023100'"),  # 31 February
        (lambda f: f.__setitem__(2, "1410210"), "hour", "'1410210'"),  # 7 digits
        (lambda f: f.__setitem__(1, "yes"), "click", "'yes'"),
        # Labels outside 0 / 1 are refused as Criteo's are (BCE on them trains nonsense silently).
        (lambda f: f.__setitem__(1, "2"), "click", r"'2'; expected 0 or 1 \(the click label; Avazu's click column holds 0 or 1\)"),
        (lambda f: f.__setitem__(1, "-1"), "click", "'-1'; expected 0 or 1"),
        (lambda f: f.__setitem__(1, "0.5"), "click", "'0.5'; expected 0 or 1"),
    ],
)
def test_avazu_bad_values_name_file_line_and_field(tmp_path, row, field, shown):
    lines = avazu_lines(50)
    fields = lines[9].split(",")
    row(fields)
    lines[9] = ",".join(fields)
    src = write(tmp_path / "train.csv", lines)
    with pytest.raises(ValueError, match=rf"train.csv, line 11: field {field}: got {shown}"):
        ingest.main(["avazu", str(src), "--out", str(tmp_path / "out")])
    # --skip-bad-rows: skipped and counted
    assert ingest.main(["avazu", str(src), "--out", str(tmp_path / "skip"), "--skip-bad-rows"]) == 0
    manifest = layout.read_manifest(tmp_path / "skip")
    assert manifest["skipped_rows"] == 1 and manifest["rows"]["total"] == 49
    assert manifest["skipped_examples"][0]["line"] == 11


def test_avazu_wrong_field_count_and_headers(tmp_path):
    lines = avazu_lines(40)
    lines[4] = lines[4] + ",extra"
    with pytest.raises(ValueError, match=r"train.csv, line 6: expected 24 ','-separated fields"):
        ingest.main(["avazu", str(write(tmp_path / "train.csv", lines)), "--out", str(tmp_path / "o1")])
    test_header = HEADER.replace("click,", "")
    test_lines = [",".join(x for i, x in enumerate(line.split(",")) if i != 1) for line in avazu_lines(40)]
    with pytest.raises(ValueError, match="line 1: no 'click' column: this is the Kaggle test.csv"):
        ingest.main(["avazu", str(write(tmp_path / "test.csv", test_lines, header=test_header)), "--out", str(tmp_path / "o2")])
    with pytest.raises(ValueError, match="line 1: got header .*expected the Avazu header"):
        ingest.main(["avazu", str(write(tmp_path / "x.csv", avazu_lines(40), header=HEADER.upper())), "--out", str(tmp_path / "o3")])


CSV_SPEC = """
name: clicks
features:
  - {name: clicked, kind: label}
  - {name: price, kind: dense, transform: log1p}
  - {name: user, kind: sparse, cardinality: 1000, embedding_dim: 8}
  - {name: item, kind: sparse, cardinality: 1000, embedding_dim: 8}
"""


def csv_rows(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    return [f"{i};u{int(rng.integers(0, 30))};{'' if i % 7 == 0 else round(float(rng.random()) * 9, 2)};"
            f"{int(rng.random() < 0.3)};item-{int(rng.integers(0, 50))};unused" for i in range(n)]


def test_csv_ingest_with_delimiter_label_and_extra_columns(tmp_path):
    spec = tmp_path / "clicks.yaml"
    spec.write_text(CSV_SPEC)
    src = write(tmp_path / "clicks.csv", csv_rows(200), header="row;user;price;y;item;note")
    out = tmp_path / "clicks"
    assert ingest.main(["csv", str(src), "--spec", str(spec), "--out", str(out), "--delimiter", ";", "--label", "y"]) == 0
    manifest = layout.read_manifest(out)
    assert manifest["rows"]["total"] == 200 and manifest["source"]["kind"] == "csv"
    assert manifest["source"]["header"] == ["row", "user", "price", "y", "item", "note"]
    resolved = layout.dataset_spec(out)
    assert resolved.label.name == "clicked"
    assert int(resolved.feature("user").cardinality) <= 31


def test_csv_empty_sparse_value_is_the_missing_id():
    from recsys.data.criteo import split_fields
    from recsys.data.csv_source import parse_tokens

    f, bad, _ = split_fields(b"a,,b\n,x,\n", 1, b",", 3)
    assert bad.size == 0
    assert parse_tokens(f, 1).tolist() == [MISSING_ID, bytes_id(b"x")]
    assert parse_tokens(f, 0).tolist() == [bytes_id(b"a"), MISSING_ID]


def test_csv_bad_inputs_name_file_line_and_field(tmp_path):
    spec = tmp_path / "clicks.yaml"
    spec.write_text(CSV_SPEC)
    rows = csv_rows(60)
    rows[20] = "20;u1;cheap;0;item-1;x"
    src = write(tmp_path / "clicks.csv", rows, header="row;user;price;y;item;note")
    with pytest.raises(ValueError, match=r"clicks.csv, line 22: field price: got 'cheap'; expected a number"):
        ingest.main(["csv", str(src), "--spec", str(spec), "--out", str(tmp_path / "o"), "--delimiter", ";", "--label", "y"])
    with pytest.raises(ValueError, match=r"columns \['clicked'\] named by the spec are not in the header"):
        ingest.main(["csv", str(src), "--spec", str(spec), "--out", str(tmp_path / "o"), "--delimiter", ";"])
    with pytest.raises(ValueError, match="--delimiter"):
        ingest.main(["csv", str(src), "--spec", str(spec), "--out", str(tmp_path / "o"), "--delimiter", ""])
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.csv: empty file"):
        ingest.main(["csv", str(empty), "--spec", str(spec), "--out", str(tmp_path / "o")])
    nul = write(tmp_path / "nul.csv", ["1;u1;1.0;0;item\x00;x"] + csv_rows(10), header="row;user;price;y;item;note")
    with pytest.raises(ValueError, match=r"nul.csv, line 2: NUL byte"):
        ingest.main(["csv", str(nul), "--spec", str(spec), "--out", str(tmp_path / "o"), "--delimiter", ";", "--label", "y"])


def test_csv_labels_are_0_or_1_unless_the_label_is_a_rating(tmp_path):
    spec = tmp_path / "clicks.yaml"
    spec.write_text(CSV_SPEC)
    rows = csv_rows(60)
    rows[30] = "30;u1;1.0;4;item-1;x"  # a 4-star rating where a click was expected
    src = write(tmp_path / "clicks.csv", rows, header="row;user;price;y;item;note")
    argv = ["csv", str(src), "--spec", str(spec), "--delimiter", ";", "--label", "y"]
    with pytest.raises(ValueError, match=r"clicks.csv, line 32: field y: got '4'; expected 0 or 1 \(the click label; "
                                         r"--rating-label for a rating or other numeric label\)"):
        ingest.main([*argv, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    assert ingest.main([*argv, "--out", str(tmp_path / "ratings"), "--rating-label"]) == 0
    manifest = layout.read_manifest(tmp_path / "ratings")
    assert manifest["source"]["label"] == "rating" and manifest["rows"]["total"] == 60
    labels = np.concatenate([pq.read_table(layout.split_files(tmp_path / "ratings", s)).column("clicked").to_numpy() for s in layout.SPLITS])
    assert labels[30] == 4.0 and set(np.unique(labels)) == {0.0, 1.0, 4.0}
    rows[30] = "30;u1;1.0;good;item-1;x"  # a rating label must still be a number
    src = write(tmp_path / "words.csv", rows, header="row;user;price;y;item;note")
    with pytest.raises(ValueError, match=r"words.csv, line 32: field y: got 'good'; expected a number \(the label, a rating\)"):
        ingest.main(["csv", str(src), "--spec", str(spec), "--delimiter", ";", "--label", "y", "--out", str(tmp_path / "w"), "--rating-label"])


@pytest.mark.parametrize(("delimiter", "said"), [
    ("", "empty"), ("a", "'a' cannot separate fields"), ("1", "'1' cannot separate fields"), (".", "'.' cannot separate fields"),
    ("-", "'-' cannot separate fields"), ('"', "'\"' cannot separate fields"), ("\\|", r"'\\\\' cannot separate fields"),
    ("\n", r"'\\n' cannot separate fields"), ("tabs", "'a', 'b', 's', 't' cannot separate fields"),
])
def test_an_invalid_delimiter_is_refused_as_such_before_any_data_is_read(delimiter, said, tmp_path):
    spec = tmp_path / "clicks.yaml"
    spec.write_text(CSV_SPEC)
    with pytest.raises(ValueError, match=rf"^--delimiter .*: {said}.*give one or more punctuation characters, a tab or a space"):
        ingest.main(["csv", str(tmp_path / "absent.csv"), "--spec", str(spec), "--out", str(tmp_path / "o"), "--delimiter", delimiter])


@pytest.mark.parametrize("delimiter", [",", ";", "|", "::", "tab", "\\t", "\t", "space", "pipe"])
def test_valid_delimiters(delimiter):
    from recsys.data.csv_source import parse_delimiter

    assert parse_delimiter(delimiter) in (b",", b";", b"|", b"::", b"\t", b" ")


def test_a_header_that_does_not_split_on_the_delimiter_names_the_likely_one(tmp_path):
    spec = tmp_path / "clicks.yaml"
    spec.write_text(CSV_SPEC)
    src = write(tmp_path / "clicks.csv", [r.replace(";", ",") for r in csv_rows(20)], header="row,user,price,clicked,item,note")
    with pytest.raises(ValueError, match=r"the header did not split on --delimiter ';' but holds ',': is the delimiter ','\?"):
        ingest.main(["csv", str(src), "--spec", str(spec), "--out", str(tmp_path / "o"), "--delimiter", ";"])
