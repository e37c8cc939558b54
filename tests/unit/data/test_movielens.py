"""MovieLens ingest (ml-1m, ml-100k): joins, string ids and tokens, time split, bad lines, CLI."""

from __future__ import annotations

import pandas as pd
import pytest

from jobs import cli
from recsys.data.movielens import ML1M_OCCUPATIONS, ingest_movielens, string_id
from recsys.features.spec import builtin_spec

SPEC = builtin_spec("movielens")


def _row(frame, **where):
    mask = True
    for k, v in where.items():
        mask = mask & (frame[k] == v)
    assert mask.sum() == 1
    return frame[mask].iloc[0]


def test_string_id_is_stable_and_non_negative():
    assert string_id("F") == string_id("F") != string_id("M")
    assert 0 <= string_id("T8H1N") < 2**63
    assert string_id("Drama") == 0x7FFF_FFFF_FFFF_FFFF & int.from_bytes(
        __import__("hashlib").blake2b(b"Drama", digest_size=8).digest(), "little")


def test_ml1m_end_to_end(ml1m, tmp_path, raw):
    out = tmp_path / "out"
    m = ingest_movielens(ml1m / "ratings.dat", out, SPEC)  # a file: its folder is used
    assert m["source"]["variant"] == "ml-1m"
    # 10 timestamps; boundary 0.8 -> sorted[8] = 978300767, 0.9 -> sorted[9] = 978300768
    assert m["split"]["method"] == "timestamp" and m["split"]["boundaries"] == [978300767, 978300768]
    assert m["rows"] == {"train": 8, "validation": 1, "test": 1, "total": 10}
    train = raw.read_split(out, "train")
    uid_index = {raw.raw_of(out, "user_id", i): i for i in train["user_id"].unique()}
    mid_index = {raw.raw_of(out, "item_id", i): i for i in train["item_id"].unique()}
    row = _row(train, user_id=uid_index[1], item_id=mid_index[1193])  # 1::1193::5::978300760
    assert row["rating"] == 5.0 and row["timestamp"] == 978300760
    assert raw.token_of(out, "gender", row["gender"]) == "F"
    assert raw.raw_of(out, "age", row["age"]) == 1 and raw.token_of(out, "age", row["age"]) == "Under 18"
    assert raw.raw_of(out, "occupation", row["occupation"]) == 10
    assert raw.token_of(out, "occupation", row["occupation"]) == ML1M_OCCUPATIONS[10] == "K-12 student"
    assert raw.token_of(out, "zip", row["zip"]) == "48067"
    assert raw.raw_of(out, "year", row["year"]) == 1975
    assert [raw.token_of(out, "genres", g) for g in row["genres"]] == ["Drama"]
    assert raw.token_of(out, "item_id", row["item_id"]) == "One Flew Over the Cuckoo's Nest (1975)"
    toy = _row(train, user_id=uid_index[1], item_id=mid_index[1])
    assert [raw.token_of(out, "genres", g) for g in toy["genres"]] == ["Animation", "Children's", "Comedy"]
    star = _row(train, user_id=uid_index[2], item_id=mid_index[3])  # title with ':' in it
    assert raw.raw_of(out, "year", star["year"]) == 1977 and len(star["genres"]) == 4
    untitled = _row(train, item_id=mid_index[5])
    assert raw.raw_of(out, "year", untitled["year"]) == -1  # no "(year)" in the title
    assert raw.token_of(out, "zip", _row(train, item_id=mid_index[5])["zip"]) == "T8H1N"
    test = raw.read_split(out, "test")
    assert test["timestamp"].tolist() == [978300768]


def test_timestamp_ties_stay_in_one_split(ml1m, tmp_path, raw):
    lines = list(raw.ML1M_RATINGS)
    lines[8] = lines[8].replace("978300767", "978300768")  # the two newest now tie
    raw.write_lines(ml1m / "ratings.dat", lines)
    # the 0.8 quantile lands on the tied instant: both rows go to the later split, leaving
    # validation empty, which ingest refuses by name
    with pytest.raises(ValueError, match=r"split 'validation' has 0 rows after splitting \(8 train, 0 validation, 2 test"):
        ingest_movielens(ml1m, tmp_path / "out", SPEC)
    m = ingest_movielens(ml1m, tmp_path / "out", SPEC, fractions=(0.7, 0.1, 0.2))
    # boundaries sorted[7] = 978300766, sorted[8] = 978300768 (the tied pair): both in test
    assert m["rows"] == {"train": 7, "validation": 1, "test": 2, "total": 10}
    assert sorted(raw.read_split(tmp_path / "out", "test")["timestamp"]) == [978300768, 978300768]


def test_ml100k_end_to_end(ml100k, tmp_path, raw):
    out = tmp_path / "out"
    m = ingest_movielens(ml100k, out, SPEC, fractions=(0.6, 0.2, 0.2))
    assert m["source"]["variant"] == "ml-100k" and m["rows"]["total"] == 5
    frame = pd.concat([raw.read_split(out, s) for s in ("train", "validation", "test")], ignore_index=True)
    uid = {raw.raw_of(out, "user_id", i): i for i in frame["user_id"].unique()}
    mid = {raw.raw_of(out, "item_id", i): i for i in frame["item_id"].unique()}
    row = _row(frame, user_id=uid[196], item_id=mid[242])  # 196\t242\t3\t881250949
    assert row["rating"] == 3.0 and row["timestamp"] == 881250949
    assert raw.raw_of(out, "age", row["age"]) == 49  # ml-100k: the age itself is the id
    assert raw.token_of(out, "occupation", row["occupation"]) == "writer"
    assert raw.token_of(out, "gender", row["gender"]) == "M"
    assert raw.raw_of(out, "year", row["year"]) == 1996
    assert [raw.token_of(out, "genres", g) for g in row["genres"]] == ["Comedy"]
    toy = _row(frame, user_id=uid[1], item_id=mid[1])
    assert [raw.token_of(out, "genres", g) for g in toy["genres"]] == ["Animation", "Children's", "Comedy"]
    unknown = _row(frame, item_id=mid[267])
    assert [raw.token_of(out, "genres", g) for g in unknown["genres"]] == ["unknown"]
    assert raw.raw_of(out, "year", unknown["year"]) == -1


def test_unknown_user_is_named_or_skipped(ml1m, tmp_path, raw):
    lines = list(raw.ML1M_RATINGS)
    lines[3] = "99::1::5::978300762"
    raw.write_lines(ml1m / "ratings.dat", lines)
    with pytest.raises(ValueError, match=r"ratings\.dat, line 4: field UserID: got '99'; expected a user id listed in users\.dat"):
        ingest_movielens(ml1m, tmp_path / "out", SPEC)
    m = ingest_movielens(ml1m, tmp_path / "out", SPEC, skip_bad_rows=True)
    assert m["skipped_rows"] == 1 and m["rows"]["total"] == 9
    assert m["skipped_examples"] == [{"file": str(ml1m / "ratings.dat"), "line": 4, "reason": m["skipped_examples"][0]["reason"]}]


@pytest.mark.parametrize(
    "line, message",
    [
        ("1::1193::5", r"line 2: expected 4 '::'-separated fields \(UserID::MovieID::Rating::Timestamp\), got 3"),
        ("1::1193::five::978300760", r"line 2: field Rating: got 'five'; expected a number from 0.5 to 5"),
        ("1::1193::9::978300760", r"line 2: field Rating: got '9'"),
        ("1::11x3::5::978300760", r"line 2: field MovieID: got '11x3'; expected an integer"),
        ("1::1193::5::", r"line 2: field Timestamp: got ''; expected an integer"),
    ],
)
def test_bad_rating_lines(ml1m, tmp_path, raw, line, message):
    raw.write_lines(ml1m / "ratings.dat", [raw.ML1M_RATINGS[0], line])
    with pytest.raises(ValueError, match=r"ratings\.dat, " + message):
        ingest_movielens(ml1m, tmp_path / "out", SPEC)


def test_bad_side_lines(ml1m, tmp_path, raw):
    raw.write_lines(ml1m / "users.dat", raw.ML1M_USERS[:2] + ["3::M::old::15::55117"] + raw.ML1M_USERS[3:])
    with pytest.raises(ValueError, match=r"users\.dat, line 3: field Age: got 'old'; expected an integer"):
        ingest_movielens(ml1m, tmp_path / "out", SPEC)
    m = ingest_movielens(ml1m, tmp_path / "out", SPEC, skip_bad_rows=True)
    # the bad user line, then the 2 ratings of user 3 (now unknown)
    assert m["skipped_rows"] == 3 and m["skipped_side_rows"] == 1 and m["rows"]["total"] == 8


def test_utf16_and_missing_files(ml1m, tmp_path, raw):
    (ml1m / "ratings.dat").write_bytes(("\n".join(raw.ML1M_RATINGS) + "\n").encode("utf-16"))
    with pytest.raises(ValueError, match=r"ratings\.dat, line 1: NUL byte: binary or UTF-16"):
        ingest_movielens(ml1m, tmp_path / "out", SPEC)
    (ml1m / "movies.dat").write_bytes("1::Toy Story (1995)::Comedy\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"movies\.dat, line 1: NUL byte"):
        ingest_movielens(ml1m, tmp_path / "out", SPEC)
    (ml1m / "users.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"\['users\.dat'\] not found"):
        ingest_movielens(ml1m, tmp_path / "out", SPEC)
    with pytest.raises(ValueError, match="not a MovieLens folder"):
        ingest_movielens(tmp_path, tmp_path / "out", SPEC)


def test_cli(ml100k, tmp_path, capsys):
    assert cli.main(["ingest", "movielens", str(ml100k), "--out", str(tmp_path / "out"), "--split", "0.6,0.2,0.2"]) == 0
    assert "split by timestamp" in capsys.readouterr().out
    (ml100k / "u.data").write_text("196\t242\t3\n")
    assert cli.main(["ingest", "movielens", str(ml100k), "--out", str(tmp_path / "out"), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "u.data, line 1: expected 4" in err
