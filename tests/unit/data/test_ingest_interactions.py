"""`recsys ingest interactions`: every input format round-trips from files written byte for byte,
every split rule against a naive reference, the duplicate / tie / history rules, bad input by name,
and the result passes the two-tower task's pre-flight checks.

    .venv/bin/python -m pytest tests/unit/data/test_ingest_interactions.py -q
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import ingest
from recsys.data import layout
from recsys.data.interaction_formats import Columns
from recsys.data.interaction_splits import duplicate_mask, random_codes, random_split_counts
from recsys.data.interactions_ingest import IngestSettings, check_settings
from recsys.features.spec import load_spec

SPLITS = ("train", "validation", "test")
MLLS = Path("/work/shared/data/ml-latest-small")


def write(path: Path, text: str, *, gz: bool = False) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def vocab(root: Path, feature: str) -> dict[int, object]:
    """index -> the original id: the token for hashed text, else the integer raw id."""
    t = pq.read_table(layout.vocab_path(root, feature)).to_pylist()
    return {r["index"]: (r["token"] if r["token"] is not None else r["raw_id"]) for r in t}


def rows_of(root: Path, split: str, *cols: str) -> list[tuple]:
    """A split's rows as tuples of original ids (user, item) and the other columns as stored."""
    table = pa.concat_tables([pq.read_table(p) for p in layout.split_files(root, split)])
    maps = {c: vocab(root, c) for c in ("user_id", "item_id")}
    out = []
    for r in table.to_pylist():
        out.append(tuple(maps[c][r[c]] if c in maps else r[c] for c in cols))
    return out


def run(argv: list[str]) -> dict:
    assert ingest.main(["interactions", *argv]) == 0
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / layout.MANIFEST).read_text())


LOG = """user,item,ts,rating
u1,a,10,5
u1,b,11,3
u1,c,12,4
u1,a,13,5
u2,a,10,4
u2,c,10,2
u2,d,12,5
u3,b,5,4
u3,d,6,4
u3,e,7,1
"""
ITEMS = '''item,title,genres,price,studio
a,"Alpha, The",Comedy|Drama,1.5,"Works, Inc."
b,Beta,Drama,2,Acme
c,Gamma,,3.25,Acme
d,Delta,Action|Comedy,,
e,Eps,Action,4,Acme
f,Phi,Drama,5,"Works, Inc."
'''


# -- formats: round trips ----------------------------------------------------------------------------
def test_csv_with_header_leave_last_out_side_features_round_trip(tmp_path):
    log, items = write(tmp_path / "log.csv", LOG), write(tmp_path / "items.csv", ITEMS)
    out = tmp_path / "out"
    m = run([str(log), "--user", "user", "--item", "item", "--timestamp", "ts", "--split", "leave_last_out",
             "--item-features", str(items), "--item-key", "item", "--list-sep", "|", "--out", str(out)])
    # u1's repeat of a (ts 13) is dropped (the first is kept); u2's a and c tie at ts 10: the later line (c) is later
    assert m["duplicates"]["dropped"] == 1
    assert sorted(rows_of(out, "test", "user_id", "item_id", "timestamp")) == [("u1", "c", 12), ("u2", "d", 12), ("u3", "e", 7)]
    assert sorted(rows_of(out, "validation", "user_id", "item_id")) == [("u1", "b"), ("u2", "c"), ("u3", "d")]
    assert sorted(rows_of(out, "train", "user_id", "item_id")) == [("u1", "a"), ("u2", "a"), ("u3", "b")]
    assert m["split"]["method"] == "leave_last_out" and "later in the input" in m["split"]["tie_rule"]
    # side features: genres multi-valued, studio categorical (quoted comma kept), price numeric (dense),
    # title (a different text on every line) left out
    spec = load_spec(out / "features.yaml")
    assert spec.feature("genres").max_length == 2 and spec.feature("genres").tower == "item"
    assert spec.feature("price").kind == "dense" and spec.feature("studio").kind == "sparse"
    assert "title" not in [f.name for f in spec.features] and "item:title" in m["side_features"]["ignored_columns"]
    assert m["side_features"]["price"] == {**m["side_features"]["price"], "tower": "item", "kind": "numeric"}
    assert m["missing_dense"]["price"] == 2  # item d (empty price) in validation and test
    train = pq.read_table(layout.split_files(out, "train")[0]).to_pylist()
    prices = {vocab(out, "item_id")[r["item_id"]]: r["price"] for r in train}
    assert prices == {"a": 1.5, "b": 2.0}
    studios = {vocab(out, "item_id")[r["item_id"]]: vocab(out, "studio")[r["studio"]] for r in train}
    assert studios == {"a": "Works, Inc.", "b": "Acme"}
    genres = vocab(out, "genres")
    by_item = {vocab(out, "item_id")[r["item_id"]]: sorted(genres[g] for g in r["genres"]) for r in train}
    assert by_item == {"a": ["Comedy", "Drama"], "b": ["Drama"]}
    # the catalogue holds every item of the item file, also f that nobody rated
    cat = pq.read_table(layout.catalogue_path(out, "items")).to_pylist()
    assert sorted(vocab(out, "item_id")[r["item_id"]] for r in cat[1:]) == list("abcdef")
    assert m["no_training_rows"]["items"]["count"] == 3 and m["no_training_rows"]["items"]["examples"] == ["c", "d", "e"]


def test_headerless_gzip_tsv_by_position_round_trip(tmp_path):
    lines = ["7\t100\t3\t1700000000", "7\t101\t4\t1700000005", "7\t102\t5\t1700000009",
             "8\t100\t1\t1700000001", "8\t103\t5\t1700000002", "8\t101\t4\t1700000003"]
    log = write(tmp_path / "log.txt", "\n".join(lines) + "\n", gz=True)  # gzip by its bytes, not its name
    out = tmp_path / "out"
    m = run([str(log), "--user", "0", "--item", "1", "--rating", "2", "--min-rating", "3", "--timestamp", "3",
             "--split", "leave_last_out", "--history-length", "0", "--out", str(out)])
    assert m["min_rating"]["dropped"] == 1 and m["source"]["ids"]["user_id"] == "integer"
    got = {s: sorted(rows_of(out, s, "user_id", "item_id", "timestamp", "label")) for s in SPLITS}
    # user 8's rating 1 is dropped; it keeps 2 ratings >= 3: train only
    assert got == {"train": [(7, 100, 1700000000, 1.0), (8, 101, 1700000003, 1.0), (8, 103, 1700000002, 1.0)],
                   "validation": [(7, 101, 1700000005, 1.0)], "test": [(7, 102, 1700000009, 1.0)]}
    assert m["split"]["users_train_only"] == 1


def test_parquet_log_with_split_column_kept_as_given(tmp_path):
    table = pa.table({"uid": pa.array([1, 1, 1, 2, 2, 2], pa.int64()), "iid": ["x", "y", "x", "x", "z", "y"],
                      "when": pa.array([1, 2, 3, 1, 2, 3], pa.int64()),
                      "fold": ["train", "train", "test", "train", "validation", "test"]})
    log = tmp_path / "log.bin"  # parquet recognised by its magic bytes
    pq.write_table(table, log)
    out = tmp_path / "out"
    m = run([str(log), "--user", "uid", "--item", "iid", "--timestamp", "when", "--split", "column", "--split-column", "fold",
             "--out", str(out)])
    assert rows_of(out, "test", "user_id", "item_id") == [(1, "x"), (2, "y")]
    assert rows_of(out, "validation", "user_id", "item_id") == [(2, "z")]
    # (1, x) in train and in test: kept as given, counted
    assert m["duplicates"]["test_pairs_also_in_train"] == 1 and "dropped" not in m["duplicates"]


def test_parquet_null_and_split_column_value_are_bad_rows(tmp_path):
    table = pa.table({"uid": pa.array([1, None, 1, 2, 2, 2], pa.int64()), "iid": ["x", "y", "z", "x", "z", "y"],
                      "fold": ["train", "train", "dev", "train", "validation", "test"]})
    pq.write_table(table, tmp_path / "log.parquet")
    argv = [str(tmp_path / "log.parquet"), "--user", "uid", "--item", "iid", "--split", "column", "--split-column", "fold"]
    with pytest.raises(ValueError, match=r"log.parquet, row 2: field uid: got None \(null\); expected a value"):
        ingest.main(["interactions", *argv, "--out", str(tmp_path / "out")])
    pq.write_table(table.filter(pa.array([True, False, True, True, True, True])), tmp_path / "log.parquet")
    with pytest.raises(ValueError, match=r"log.parquet, row 2: field fold: got 'dev'; expected one of train, validation, test"):
        ingest.main(["interactions", *argv, "--out", str(tmp_path / "out")])
    pq.write_table(table, tmp_path / "log.parquet")
    m = run([*argv, "--skip-bad-rows", "--out", str(tmp_path / "out")])
    assert m["skipped_rows"] == 2 and [e["row"] for e in m["skipped_examples"]] == [2, 3]


def test_recbole_given_splits_with_user_file(tmp_path):
    head = "user_id:token\titem_id:token\ttimestamp:float\n"
    for name, body in (("train", "1\t10\t1\n1\t11\t2\n2\t10\t1\n"), ("valid", "1\t12\t3\n"), ("test", "2\t12\t5\n")):
        write(tmp_path / f"toy.{name}.inter", head + body)
    write(tmp_path / "toy.user", "user_id:token\tage:float\tgender:token\n1\t24\tF\n2\t53\tM\n3\t40\tF\n")
    out = tmp_path / "out"
    m = run(["--format", "recbole", "--train", str(tmp_path / "toy.train.inter"), "--validation", str(tmp_path / "toy.valid.inter"),
             "--test", str(tmp_path / "toy.test.inter"), "--out", str(out)])
    assert m["source"]["side_files"] == {"user": str(tmp_path / "toy.user")}
    assert rows_of(out, "test", "user_id", "item_id") == [(2, 12)]
    assert m["side_features"]["age"]["kind"] == "numeric" and m["side_features"]["gender"]["tower"] == "user"
    users = pq.read_table(layout.catalogue_path(out, "users")).to_pylist()
    assert len(users) == 3 and set(users[0]) == {"user_id", "gender"}  # sparse side features; age is dense


def test_user_features_infer_codes_numbers_and_text(tmp_path):
    users = ["id\tage\toccupation\tcity\ttags"] + [
        f"u{k}\t{18 + k}\t{k % 3}\t{['Paris', 'Rome'][k % 2]}\t{'a,b' if k % 2 else ''}" for k in range(40)]
    write(tmp_path / "users.tsv", "\n".join(users) + "\n")
    log = write(tmp_path / "log.csv", "u,i\n" + "".join(f"u{k % 40},{k % 7}\n" for k in range(200)))
    out = tmp_path / "out"
    m = run([str(log), "--user", "u", "--item", "i", "--user-features", str(tmp_path / "users.tsv"), "--user-key", "id",
             "--list-sep", ",", "--out", str(out)])
    kinds = {k: v["kind"] for k, v in m["side_features"].items()}
    # age: 40 distinct integers -> numeric; occupation: 3 codes -> categorical; city: text; tags: lists
    assert kinds == {"age": "numeric", "occupation": "categorical", "city": "categorical", "tags": "multi_valued"}
    assert all(v["tower"] == "user" for v in m["side_features"].values())
    cat = pq.read_table(layout.catalogue_path(out, "users")).to_pylist()
    assert len(cat) == 41 and {"user_id", "occupation", "city", "tags"} == set(cat[0])
    tags = vocab(out, "tags")
    by_user = {vocab(out, "user_id")[r["user_id"]]: sorted(tags[t] for t in r["tags"]) for r in cat[1:]}
    assert by_user["u1"] == ["a", "b"] and by_user["u2"] == []


def test_parquet_item_features_with_list_column(tmp_path):
    pq.write_table(pa.table({"iid": ["x", "y", "z", "w"], "tags": [["red", "big"], [], None, ["red"]],
                             "weight": [1.5, 2.5, None, 4.0]}), tmp_path / "items.parquet")
    log = write(tmp_path / "log.csv", "u,i\n" + "".join(f"{k % 5},{'xyz'[k % 3]}\n" for k in range(30)))
    out = tmp_path / "out"
    m = run([str(log), "--user", "u", "--item", "i", "--item-features", str(tmp_path / "items.parquet"), "--item-key", "iid",
             "--out", str(out)])
    assert m["side_features"]["tags"]["kind"] == "multi_valued" and m["side_features"]["weight"]["kind"] == "numeric"
    cat = pq.read_table(layout.catalogue_path(out, "items")).to_pylist()
    tags, items = vocab(out, "tags"), vocab(out, "item_id")
    assert {items[r["item_id"]]: sorted(tags[t] for t in r["tags"]) for r in cat[1:]} == {
        "x": ["big", "red"], "y": [], "z": [], "w": ["red"]}


def test_given_splits_kept_exactly(tmp_path):
    header = "u;i;t\n"
    train = write(tmp_path / "train.csv", header + "a;1;5\na;2;6\nb;1;7\nb;3;8\n")
    valid = write(tmp_path / "valid.csv", header + "a;3;9\n")
    test = write(tmp_path / "test.csv", header + "b;2;1\na;1;10\n")  # test earlier than train, a repeat: as given
    out = tmp_path / "out"
    m = run(["--train", str(train), "--validation", str(valid), "--test", str(test), "--user", "u", "--item", "i",
             "--timestamp", "t", "--out", str(out)])
    assert rows_of(out, "train", "user_id", "item_id", "timestamp") == [("a", 1, 5), ("a", 2, 6), ("b", 1, 7), ("b", 3, 8)]
    assert rows_of(out, "test", "user_id", "item_id", "timestamp") == [("b", 2, 1), ("a", 1, 10)]
    assert m["split"]["method"] == "given" and m["duplicates"]["test_pairs_also_in_train"] == 1
    # held-out histories hold the user's training items only
    hist = pa.concat_tables([pq.read_table(p) for p in layout.split_files(out, "test")]).to_pylist()
    items = vocab(out, "item_id")
    assert [[items[x] for x in r["history_item_id"]] for r in hist] == [[1, 3], [1, 2]]


def test_recbole_inter_item_pair(tmp_path):
    inter = write(tmp_path / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                  "1\t10\t4\t100\n1\t11\t5\t101\n1\t12\t3\t102\n2\t10\t5\t100\n2\t12\t4\t103\n2\t13\t2\t104\n")
    write(tmp_path / "toy.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tprice:float\n"
          "10\tToy Story\t1995\t1.5\n11\tHeat\t1995\t2\n12\tCasino\t1995\t\n13\tBabe\t1995\t3\n14\tNixon\t1995\t4\n")
    out = tmp_path / "out"
    m = run([str(inter), "--format", "recbole", "--split", "time", "--ratios", "0.5,0.25,0.25", "--out", str(out)])
    assert m["source"]["side_files"] == {"item": str(tmp_path / "toy.item")}
    assert m["source"]["columns"] == {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"}
    spec = load_spec(out / "features.yaml")
    assert spec.feature("movie_title").max_length == 2 and spec.feature("price").kind == "dense"
    assert spec.feature("release_year").kind == "sparse"
    # time quantiles of [100,100,101,102,103,104]: boundary 0.5 -> 102, 0.75 -> 103 (ties to the later split)
    assert sorted(rows_of(out, "train", "user_id", "item_id")) == [(1, 10), (1, 11), (2, 10)]
    assert rows_of(out, "validation", "user_id", "item_id") == [(1, 12)]
    assert sorted(rows_of(out, "test", "user_id", "item_id")) == [(2, 12), (2, 13)]
    cat = pq.read_table(layout.catalogue_path(out, "items")).to_pylist()
    assert sorted(vocab(out, "item_id")[r["item_id"]] for r in cat[1:]) == [10, 11, 12, 13, 14]


def test_lightgcn_lists_without_validation(tmp_path):
    train = write(tmp_path / "train.txt", "0 0 1 2 3 4 5 6 7 8 9\n1 3 4 5 6 7 8 9 10 11 12\n2 0\n")
    test = write(tmp_path / "test.txt", "0 10 11\n1 0\n2\n")
    out = tmp_path / "out"
    m = run(["--format", "lightgcn", "--train", str(train), "--test", str(test), "--ratios", "0.7,0.2,0.1",
             "--seed", "3", "--out", str(out)])
    assert sorted(rows_of(out, "test", "user_id", "item_id")) == [(0, 10), (0, 11), (1, 0)]
    train_rows = rows_of(out, "train", "user_id", "item_id")
    valid_rows = rows_of(out, "validation", "user_id", "item_id")
    # validation: 20% of each user's given train rows (RecBole counts: 10 rows -> 2), the rest stays in train
    assert sorted(train_rows + valid_rows) == sorted([(0, i) for i in range(10)] + [(1, i) for i in range(3, 13)] + [(2, 0)])
    assert sorted(u for u, _ in valid_rows) == [0, 0, 1, 1]
    assert m["split"]["validation"]["fraction"] == 0.2 and "timestamp" not in load_spec(out / "features.yaml").to_dict()["features"]


def test_iso_and_decimal_times_order_exactly(tmp_path):
    # decimals a fraction of a second apart keep their order (stored floored); ISO dates become seconds;
    # --header with positions reads the first line as a header
    log = write(tmp_path / "log.csv", "who,what,when\n"
                "u,a,2024-01-31T12:00:00\nu,b,2024-01-31 12:00:01+00:00\nu,c,1706702401.5\nu,d,1706702401.25\n")
    out = tmp_path / "out"
    run([str(log), "--user", "0", "--item", "1", "--timestamp", "2", "--header", "--split", "leave_last_out", "--out", str(out)])
    assert rows_of(out, "test", "item_id", "timestamp") == [("c", 1706702401)]  # 401.5 is after 401.25
    assert rows_of(out, "validation", "item_id", "timestamp") == [("d", 1706702401)]
    assert sorted(rows_of(out, "train", "item_id", "timestamp")) == [("a", 1706702400), ("b", 1706702401)]


# -- splits -------------------------------------------------------------------------------------------
def test_random_split_counts_follow_recbole():
    def recbole(tot, ratios):  # RecBole Dataset._calcu_split_ids, verbatim logic
        cnt = [int(ratios[i] * tot) for i in range(len(ratios))]
        cnt[0] = tot - sum(cnt[1:])
        for i in range(1, len(ratios)):
            if cnt[0] <= 1:
                break
            if 0 < ratios[-i] * tot < 1:
                cnt[-i] += 1
                cnt[0] -= 1
        return cnt

    n = np.arange(1, 60)
    for ratios in ((0.8, 0.1, 0.1), (0.7, 0.1, 0.2), (0.6, 0.2, 0.2)):
        assert random_split_counts(n, ratios).tolist() == [recbole(int(k), ratios) for k in n]
    assert random_split_counts(np.array([1, 2, 3]), (0.8, 0.1, 0.1)).tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 1]]


def test_random_split_is_seeded_per_user():
    user = np.repeat(np.arange(50), 20)
    a, b, c = (random_codes(user, (0.8, 0.1, 0.1), seed) for seed in (0, 0, 1))
    assert (a == b).all() and (a != c).any()
    per_user = np.stack([np.bincount(a[user == u], minlength=3) for u in range(50)])
    assert (per_user == [16, 2, 2]).all()


def test_duplicate_rule_keeps_the_first_in_time_then_input_order():
    user = np.array([1, 1, 1, 2, 1, 2])
    item = np.array([5, 5, 6, 5, 5, 5])
    key = np.array([3, 2, 1, 0, 2, 0])  # (1, 5) at times 3, 2, 2: the first of the tied time-2 rows (row 1) is kept
    assert duplicate_mask(user, item, key).tolist() == [True, False, False, False, True, True]


def test_time_split_without_timestamp_is_input_order(tmp_path):
    log = write(tmp_path / "log.csv", "u,i\n" + "".join(f"{k % 3},{k}\n" for k in range(10)))
    out = tmp_path / "out"
    m = run([str(log), "--user", "u", "--item", "i", "--split", "time", "--out", str(out)])
    assert m["split"]["boundaries_rows"] == [8, 9]
    assert [i for _, i in rows_of(out, "test", "user_id", "item_id")] == [9]


def test_random_split_of_a_log_is_deterministic(tmp_path):
    log = write(tmp_path / "log.csv", "u,i,t\n" + "".join(f"{k % 4},{k},{k}\n" for k in range(40)))
    runs = []
    for seed in ("5", "5", "6"):
        out = tmp_path / f"out{len(runs)}"
        run([str(log), "--user", "u", "--item", "i", "--timestamp", "t", "--seed", seed, "--out", str(out)])
        runs.append(sorted(rows_of(out, "test", "user_id", "item_id")))
    assert runs[0] == runs[1] != runs[2] and len(runs[0]) == 4  # 10 rows per user -> 1 test row each


def test_history_never_holds_held_out_items(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{rng.integers(5)},{rng.integers(30)},{rng.integers(20)}" for _ in range(200)]
    log = write(tmp_path / "log.csv", "u,i,t\n" + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    run([str(log), "--user", "u", "--item", "i", "--timestamp", "t", "--history-length", "5", "--out", str(out)])
    rows = {s: rows_of(out, s, "user_id", "item_id", "timestamp") for s in SPLITS}
    train = defaultdict(list)
    for u, i, t in rows["train"]:
        train[u].append((t, i))
    items = vocab(out, "item_id")
    for s in SPLITS:
        table = pa.concat_tables([pq.read_table(p) for p in layout.split_files(out, s)]).to_pylist()
        for r in table:
            u, t = vocab(out, "user_id")[r["user_id"]], r["timestamp"]
            mine = sorted(train[u], key=lambda x: x[0])  # stable: input order among ties, as ingest orders them
            expected = [i for ti, i in mine if ti < t] if s == "train" else [i for _, i in mine]
            got = [items[x] for x in r["history_item_id"]]
            assert got == expected[-5:], (s, u, t)


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["--min-rating", "4"], r"--min-rating 4 needs --rating COL"),
    (["--rating", "r"], r"--rating 'r' is read for --min-rating only"),
    (["--train", "x.csv"], r"give either one LOG .* or --train/--validation/--test files"),
    (["--split", "column"], r"--split column needs --split-column COL"),
    (["--format", "lightgcn"], r"--format lightgcn reads given splits"),
    (["--ratios", "0.8,0.3,0.1"], r"--ratios 0.8,0.3,0.1: fractions sum to 1.2"),
    (["--history-length", "1"], r"--history-length 1: expected 0 .* or an integer >= 2"),
])
def test_flag_errors_before_reading(tmp_path, argv, match):
    log = write(tmp_path / "log.csv", LOG)
    with pytest.raises(ValueError, match=match):
        ingest.main(["interactions", str(log), "--user", "user", "--item", "item", *argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body, extra, match", [
    ("u1,a,10,5\nu1,b\n", [], r"log.csv, line 3: expected 4 ','-separated fields \(user, item, ts, rating\), got 2"),
    ("u1,a,10,5\n,b,11,3\n", [], r"log.csv, line 3: field user: got ''; expected a user id \(not empty\)"),
    ("u1,a,10,5\nu1,b,yesterday,3\n", [], r"log.csv, line 3: field ts: got 'yesterday'; expected an integer, a number, or an ISO 8601"),
    ("u1,a,10,5\nu1,b,11,five\n", ["--rating", "rating", "--min-rating", "3"], r"line 3: field rating: got 'five'; expected a number"),
    ("u1,a,10,5\nu1,z,11,3\n", ["--item-features", "ITEMS", "--item-key", "item"],
     r"log.csv, line 3: field item: got 'z'; expected an item listed in .*items.csv"),
    ("u1,a,10,5\nu1,b,11,\x00\n", [], r"line 3: NUL byte"),
])
def test_bad_rows_name_file_line_field_value(tmp_path, body, extra, match):
    log = write(tmp_path / "log.csv", "user,item,ts,rating\n" + body + "u2,a,12,4\nu3,c,13,4\nu4,d,14,4\n")
    items = write(tmp_path / "items.csv", ITEMS)
    extra = [str(items) if a == "ITEMS" else a for a in extra]
    argv = ["interactions", str(log), "--user", "user", "--item", "item", "--timestamp", "ts", "--split", "time",
            "--ratios", "0.5,0.25,0.25", *extra]
    with pytest.raises(ValueError, match=match):
        ingest.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    m = run([*argv[1:], "--skip-bad-rows", "--out", str(tmp_path / "skipped")])
    assert m["skipped_rows"] == 1 and m["rows"] == {"train": 2, "validation": 1, "test": 1, "total": 4}
    assert m["skipped_examples"][0]["line"] == 3


@pytest.mark.parametrize("make, argv, match", [
    (lambda p: write(p / "log.csv", "user,item\nu,a\n"), ["--user", "userId"], r"--user 'userId': not a column of the header \['user', 'item'\]"),
    (lambda p: write(p / "log.csv", "1,2\n"), ["--user", "0", "--item", "2"], r"--item 2: the file has 2 fields per line"),
    (lambda p: write(p / "log.csv", ""), [], r"log.csv: empty file"),
    (lambda p: write(p / "x.inter", "user_id:token\titem_id:tok\n1\t2\n"), ["--format", "recbole"],
     r"x.inter, line 1: not a RecBole atomic file header .* type 'tok' is not one of"),
    (lambda p: write(p / "x.inter", "user_id:token\titem_id:token\tr:float\n1\t2\t3\n"), ["--format", "recbole", "--timestamp", "r", "--item", "r"],
     r"field r: type 'float'; expected token"),
])
def test_bad_files_and_columns(tmp_path, make, argv, match):
    path = make(tmp_path)
    defaults = [] if "--format" in argv else ["--user", "user", "--item", "item"]
    with pytest.raises(ValueError, match=match):
        ingest.main(["interactions", str(path), *defaults, *argv, "--out", str(tmp_path / "out")])


def test_lightgcn_bad_id_and_side_file_duplicate_key(tmp_path):
    train = write(tmp_path / "train.txt", "0 1 2\n1 x 3\n")
    test = write(tmp_path / "test.txt", "0 3\n1 1\n")
    with pytest.raises(ValueError, match=r"train.txt, line 2: field item: got 'x'; expected a 0-based integer id"):
        ingest.main(["interactions", "--format", "lightgcn", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "o")])
    log = write(tmp_path / "log.csv", LOG)
    argv = ["interactions", str(log), "--user", "user", "--item", "item", "--item-features", str(tmp_path / "items.csv"),
            "--item-key", "item", "--out", str(tmp_path / "o")]
    write(tmp_path / "items.csv", ITEMS + "b,Again,Drama,1,Acme\n")
    with pytest.raises(ValueError, match=r"items.csv, line 8: field item: got 'b', a duplicate key; one line per key"):
        ingest.main(argv)
    write(tmp_path / "items.csv", ITEMS + "g,Again,Drama,1\n")
    with pytest.raises(ValueError, match=r"items.csv, line 8: expected 5 ','-separated fields \(item, title, genres, price, studio; quote"):
        ingest.main(argv)


def test_spec_override(tmp_path):
    log, items = write(tmp_path / "log.csv", LOG), write(tmp_path / "items.csv", ITEMS)
    base = [str(log), "--user", "user", "--item", "item", "--timestamp", "ts", "--split", "leave_last_out",
            "--item-features", str(items), "--item-key", "item", "--list-sep", "|"]
    run([*base, "--out", str(tmp_path / "first")])
    raw = yaml.safe_load((tmp_path / "first" / "features.yaml").read_text())
    raw["features"] = [f for f in raw["features"] if f["name"] not in ("studio", "history_item_id")]
    for f in raw["features"]:
        if f["name"] == "genres":
            f["embedding_dim"] = 4
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    run([*base, "--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "second")])
    spec = load_spec(tmp_path / "second" / "features.yaml")
    assert spec.feature("genres").embedding_dim == 4 and "studio" not in [f.name for f in spec.features]
    # a history named history_<target> without history_of (the older spelling) is built all the same
    raw["features"].insert(2, {"name": "history_item_id", "kind": "sparse", "cardinality": 10, "max_length": 3, "tower": "user"})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    run([*base, "--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "second"), "--overwrite"])
    test = pa.concat_tables([pq.read_table(p) for p in layout.split_files(tmp_path / "second", "test")]).to_pylist()
    items = vocab(tmp_path / "second", "item_id")
    assert sorted(items[r["history_item_id"][0]] for r in test) == ["a", "a", "b"]  # each test row: the user's one train item
    raw["features"].append({"name": "director", "kind": "sparse", "cardinality": 10, "tower": "item"})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"features\[director\]: not a side column; side features: \['genres', 'price', 'studio'\]"):
        run([*base, "--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "third")])


def test_given_splits_refuse_a_split_rule(tmp_path):
    log = write(tmp_path / "log.csv", LOG)
    with pytest.raises(ValueError, match=r"--split time: given --train/--validation/--test files are kept as given; drop --split"):
        ingest.main(["interactions", "--train", str(log), "--test", str(log), "--split", "time", "--out", str(tmp_path / "o")])


def test_settings_check_needs_existing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.csv: no such file"):
        check_settings(IngestSettings(log=tmp_path / "nope.csv", columns=Columns("u", "i")))


# -- the result trains ------------------------------------------------------------------------------
def test_ingested_data_passes_the_two_tower_preflight(tmp_path):
    from recsys.train.config import config_from_dict
    from recsys.train.run import prepare

    rng = np.random.default_rng(1)
    lines = [f"user{rng.integers(40)}\t{rng.integers(60)}\t{k}" for k in range(1500)]
    log = write(tmp_path / "log.tsv", "\n".join(lines) + "\n")
    items = write(tmp_path / "items.tsv", "id\tkind\tsize\n" + "".join(f"{i}\tk{i % 4}\t{i * 0.5}\n" for i in range(70)))
    out = tmp_path / "data"
    run([str(log), "--user", "0", "--item", "1", "--timestamp", "2", "--split", "leave_last_out", "--item-features",
         str(items), "--item-key", "id", "--out", str(out)])
    prepared = prepare(config_from_dict({"data": {"path": str(out), "batch_size": 64}, "run_dir": str(tmp_path / "run"),
                                         "model": {"arch": "two_tower", "user_layers": [16], "item_layers": [16]}}))
    assert prepared.rows["test"] == 40 and prepared.rows["validation"] == 40
    assert pq.ParquetFile(layout.catalogue_path(out, "items")).metadata.num_rows == 71  # every listed item + OOV


@pytest.mark.skipif(not (MLLS / "ratings.csv").exists(), reason="ml-latest-small not in ../shared/data")
def test_ml_latest_small_random_split(tmp_path):
    out = tmp_path / "mlls"
    m = run([str(MLLS / "ratings.csv"), "--user", "userId", "--item", "movieId", "--timestamp", "timestamp", "--split", "random",
             "--ratios", "0.8,0.1,0.1", "--item-features", str(MLLS / "movies.csv"), "--item-key", "movieId", "--list-sep", "|",
             "--out", str(out)])
    assert m["rows"]["total"] == 100_836 and m["duplicates"]["dropped"] == 0
    assert m["catalogue"]["items"]["source_rows"] == 9742 and m["catalogue"]["items"]["rows"] == 9743
    assert m["side_features"]["genres"]["kind"] == "multi_valued"
    assert m["split"] == {**m["split"], "method": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0}


@pytest.mark.slow  # a Ray training (~1-4 min on the shared 2-core machine)
@pytest.mark.integration
def test_ingested_log_trains_two_tower(tmp_path):
    from jobs import train

    rng = np.random.default_rng(2)
    users, items = rng.integers(200, size=6000), rng.integers(150, size=6000)
    items = np.where(rng.random(6000) < 0.7, (users * 7 + rng.integers(5, size=6000)) % 150, items)  # a learnable pattern
    log = write(tmp_path / "log.csv", "u,i,t\n" + "".join(f"{u},{i},{k}\n" for k, (u, i) in enumerate(zip(users, items))))
    out = tmp_path / "data"
    run([str(log), "--user", "u", "--item", "i", "--timestamp", "t", "--split", "leave_last_out", "--out", str(out)])
    config = Path(__file__).resolve().parents[3] / "configs" / "two_tower_movielens.yaml"
    assert train.main([str(config), f"data.path={out}", f"run_dir={tmp_path / 'run'}", "train.epochs=3", "data.batch_size=256",
                       "data.eval_batch_size=512"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_rows"] == 200 and results["recall@10"] > results["popularity_recall@10"]
