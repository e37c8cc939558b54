"""Interaction data sets from MovieLens (ml-100k, ml-1m, ml-latest CSV) and the synthetic
generator: leave-last-out split, history features against a naive per-row reference, the item /
user catalogues, --min-rating and the ml-latest format."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import cli
from recsys.data import layout
from recsys.data.interactions import UserHistory, history_features, leave_last_out_codes
from recsys.data.movielens import ML100K_GENRES, USER_SIDE, ingest_movielens
from recsys.features.spec import builtin_spec, spec_from_dict

GENRES = ML100K_GENRES[1:7]  # Action .. Crime: names valid in every release
SPLITS = ("train", "validation", "test")


def _spec(history_length: int = 3, user_side: bool = True):
    raw = builtin_spec("movielens").to_dict()
    for f in raw["features"]:
        if f["name"] == "history_item_id":
            f["max_length"] = history_length
    if not user_side:
        raw["features"] = [f for f in raw["features"] if f["name"] not in USER_SIDE]
    return spec_from_dict(raw)


# -- fixtures in the real layouts ----------------------------------------------------------------
def _movies(n_movies: int) -> list[tuple[int, str, list[str]]]:
    """(movie id, title, genres); the last movie is never rated, one title has commas and quotes."""
    out = []
    for m in range(1, n_movies + 1):
        title = f"Movie {m} ({1950 + m})"
        if m == 2:
            title = 'Good, the Bad and the "Ugly", The (1966)'
        if m == 3:
            title = "No Year"
        genres = sorted({GENRES[(m + k) % len(GENRES)] for k in range(m % 3)}, key=ML100K_GENRES.index)  # u.item's order
        out.append((m * 10, title, genres))
    return out


def _users(n_users: int) -> list[tuple[int, str, int, int, str]]:
    return [(u, "MF"[u % 2], [1, 18, 25, 35][u % 4], u % 21, f"{10000 + u}") for u in range(1, n_users + 1)]


def random_ratings(seed: int = 0, n_users: int = 12, n_movies: int = 15) -> list[tuple[int, int, float, int]]:
    """(user, movie, rating, timestamp) in file order (not time order), distinct (user, movie),
    many timestamp ties within a user; users with 1 and 2 ratings; movie n_movies never rated."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        k = {1: 1, 2: 2, 3: 3}.get(u, int(rng.integers(4, n_movies - 1)))
        for j, m in enumerate(rng.choice(np.arange(1, n_movies), size=k, replace=False)):
            # each user's first draw at the earliest instant: every user has a train row in a time split
            t = 1_000_000 + (int(rng.integers(0, 6)) if j else 0)
            rows.append((u, int(m) * 10, float(rng.integers(1, 6)), t))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def write_release(root: Path, variant: str, ratings, n_users: int = 12, n_movies: int = 15) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    movies, users = _movies(n_movies), _users(n_users)
    enc = "utf-8" if variant == "ml-latest" else "latin-1"

    def write(name: str, lines: list[str]) -> None:
        (root / name).write_bytes(("\n".join(lines) + "\n").encode(enc))

    if variant == "ml-1m":
        write("ratings.dat", [f"{u}::{m}::{int(r)}::{t}" for u, m, r, t in ratings])
        write("users.dat", [f"{u}::{g}::{a}::{o}::{z}" for u, g, a, o, z in users])
        write("movies.dat", [f"{m}::{title}::{'|'.join(gs)}" for m, title, gs in movies])
    elif variant == "ml-100k":
        write("u.data", [f"{u}\t{m}\t{int(r)}\t{t}" for u, m, r, t in ratings])
        write("u.user", [f"{u}|{20 + a}|{g}|occ{o}|{z}" for u, g, a, o, z in users])
        flags = lambda gs: "|".join("1" if g in gs else "0" for g in ML100K_GENRES)  # noqa: E731
        write("u.item", [f"{m}|{title}|01-Jan-1995||http://x|{flags(gs)}" for m, title, gs in movies])
    else:
        def quote(text: str) -> str:
            return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text

        write("ratings.csv", ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r:g},{t}" for u, m, r, t in ratings])
        write("movies.csv", ["movieId,title,genres"]
              + [f"{m},{quote(title)},{'|'.join(gs) or '(no genres listed)'}" for m, title, gs in movies])
    return root


# -- naive per-row reference ---------------------------------------------------------------------
def naive(ratings, method: str, max_length: int) -> tuple[dict, dict]:
    """Per file row: split code (leave_last_out; None for time) and history (raw movie ids)."""
    events = defaultdict(list)
    for row, (u, m, _, t) in enumerate(ratings):
        events[u].append((t, row, m))
    code = {row: 0 for row in range(len(ratings))}
    for evs in events.values():
        evs.sort()  # by timestamp, then file row: the documented tie rule
        if method == "leave_last_out" and len(evs) >= 3:
            code[evs[-1][1]], code[evs[-2][1]] = 2, 1
    history = {}
    for row, (u, m, _, t) in enumerate(ratings):
        if method == "leave_last_out" and code[row] > 0:
            before = [mm for tt, rr, mm in events[u] if code[rr] == 0]  # the user's training items
        else:
            before = [mm for tt, rr, mm in events[u] if tt < t]  # strictly earlier instants
        history[row] = before[-max_length:]
    return code, history


def written(out: Path) -> pd.DataFrame:
    """Every written row with raw user / movie ids, raw history ids and its split."""
    frames = []
    for s in SPLITS:
        f = pd.concat([pq.read_table(p).to_pandas() for p in layout.split_files(out, s)], ignore_index=True)
        f["split"] = s
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    items = pq.read_table(layout.vocab_path(out, "item_id")).to_pandas()["raw_id"].to_numpy()
    users = pq.read_table(layout.vocab_path(out, "user_id")).to_pandas()["raw_id"].to_numpy()
    frame["user"] = users[frame["user_id"].to_numpy()].astype(np.int64)
    frame["movie"] = items[frame["item_id"].to_numpy()].astype(np.int64)
    frame["history"] = [[int(items[i]) for i in h] for h in frame["history_item_id"]]
    return frame


VARIANTS = ("ml-100k", "ml-1m", "ml-latest")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("method", ["leave_last_out", "time"])
def test_split_and_history_match_the_naive_reference(tmp_path, variant, method):
    ratings = random_ratings(seed=VARIANTS.index(variant))
    src = write_release(tmp_path / variant, variant, ratings)
    spec = _spec(history_length=3, user_side=variant != "ml-latest")
    kw = {"split": "leave_last_out"} if method == "leave_last_out" else {"fractions": (0.6, 0.2, 0.2)}
    m = ingest_movielens(src, tmp_path / "out", spec, **kw)
    frame = written(tmp_path / "out").set_index(["user", "movie"])
    code, history = naive(ratings, method, 3)
    assert len(frame) == len(ratings) and m["rows"]["total"] == len(ratings)
    for row, (u, mv, r, t) in enumerate(ratings):
        got = frame.loc[(u, mv)]
        assert got["timestamp"] == t and got["rating"] == r
        assert got["history"] == history[row], (row, u, mv)
        if method == "leave_last_out":
            assert SPLITS.index(got["split"]) == code[row], (row, u, mv)
        if got["split"] == "train":
            # no row sees its own target or anything at or after its instant
            own = [mm for uu, mm, _, tt in ratings if uu == u and tt >= t]
            assert not set(got["history"]) & set(own)
    if method == "leave_last_out":
        assert m["split"]["method"] == "leave_last_out" and m["split"]["users_train_only"] == 2  # users 1 and 2
        per_user = frame.reset_index().groupby("user")["split"].agg(list)
        assert per_user[1] == ["train"] and sorted(per_user[2]) == ["train", "train"]
        assert all(s.count("test") == 1 and s.count("validation") == 1 for u, s in per_user.items() if u >= 3)
        assert m["history"]["history_item_id"]["of"] == "item_id"
        assert m["vocab"]["history_item_id"]["shares_vocab_of"] == "item_id"
        assert m["feature_spec"]["features"][[f["name"] for f in m["feature_spec"]["features"]].index("history_item_id")][
            "cardinality"] == m["vocab"]["item_id"]["size"]


def test_leave_last_out_tie_rule_and_test_history_is_train_items(tmp_path):
    # user 1: five ratings; the last three share one second -> file order decides
    ratings = [(1, 10, 5, 100), (1, 20, 4, 200), (1, 50, 3, 300), (1, 30, 2, 300), (1, 40, 1, 300),
               (2, 10, 3, 100), (2, 20, 3, 100), (2, 30, 3, 100), (3, 10, 1, 50), (3, 20, 1, 60), (3, 30, 2, 70)]
    src = write_release(tmp_path / "ml", "ml-1m", ratings)
    ingest_movielens(src, tmp_path / "out", _spec(history_length=50), split="leave_last_out")
    frame = written(tmp_path / "out").set_index(["user", "movie"])
    assert frame.loc[(1, 40), "split"] == "test" and frame.loc[(1, 30), "split"] == "validation"
    assert frame.loc[(1, 50), "split"] == "train"
    # train row at t=300: only strictly earlier instants; validation and test: the training items
    assert frame.loc[(1, 50), "history"] == [10, 20]
    assert frame.loc[(1, 30), "history"] == [10, 20, 50]
    assert frame.loc[(1, 40), "history"] == [10, 20, 50]  # not the validation item 30
    # user 2: all at one instant: file order makes 30 test, 20 validation; no train row is "before"
    assert [frame.loc[(2, mv), "split"] for mv in (10, 20, 30)] == ["train", "validation", "test"]
    assert frame.loc[(2, 10), "history"] == [] and frame.loc[(2, 30), "history"] == [10]
    assert frame.loc[(3, 30), "history"] == [10] and frame.loc[(3, 10), "history"] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_items_parquet_covers_every_item_with_its_side_features(tmp_path, variant, raw):
    ratings = random_ratings(seed=3)
    src = write_release(tmp_path / variant, variant, ratings)
    out = tmp_path / "out"
    m = ingest_movielens(src, out, _spec(user_side=variant != "ml-latest"), split="leave_last_out")
    items = pq.read_table(layout.catalogue_path(out, "items")).to_pandas()
    vocab = raw.read_vocab(out, "item_id")
    assert items.columns.tolist() == ["item_id", "genres", "year"]
    assert items["item_id"].tolist() == list(range(len(vocab))) == list(range(m["vocab"]["item_id"]["size"]))
    assert m["catalogue"]["items"]["rows"] == len(items) and m["catalogue"]["items"]["path"] == "items.parquet"
    movies = {mid: (title, gs) for mid, title, gs in _movies(15)}
    assert len(items) == len(movies) + 1  # every movie, the never-rated 150 too, plus the OOV row
    assert m["catalogue"]["items"]["not_in_train"] >= 1
    assert items.iloc[0]["year"] == 0 and list(items.iloc[0]["genres"]) == []  # the OOV row
    train_years = {raw.raw_of(out, "year", y) for y in written(out).query("split == 'train'")["year"]}
    for i in range(1, len(items)):
        mid = raw.raw_of(out, "item_id", i)
        title, gs = movies[mid]
        assert raw.token_of(out, "item_id", i) == title
        assert [raw.token_of(out, "genres", g) for g in items.iloc[i]["genres"]] == gs
        year = int(title[-5:-1]) if title.endswith(")") else -1
        if items.iloc[i]["year"]:
            assert raw.raw_of(out, "year", items.iloc[i]["year"]) == year
        else:  # a year no training row has is OOV, in the catalogue as in the splits
            assert year not in train_years
    assert raw.raw_of(out, "item_id", len(items) - 1) == 150  # unseen items come after the seen ones
    train_items = set(written(out).query("split == 'train'")["item_id"])
    counts = vocab.set_index("index")["count"]
    assert all(counts[i] > 0 for i in train_items) and counts[len(items) - 1] == 0
    # the splits use the same encoding: a row's genres equal its item's catalogue row
    rows = written(out)
    for _, r in rows.head(20).iterrows():
        assert list(r["genres"]) == list(items.iloc[r["item_id"]]["genres"])


@pytest.mark.parametrize("variant", ["ml-100k", "ml-1m"])
def test_users_parquet_has_user_side_features(tmp_path, variant, raw):
    src = write_release(tmp_path / variant, variant, random_ratings(seed=4))
    out = tmp_path / "out"
    m = ingest_movielens(src, out, _spec(), fractions=(0.6, 0.2, 0.2))
    users = pq.read_table(layout.catalogue_path(out, "users")).to_pandas()
    assert users.columns.tolist() == ["user_id", "gender", "age", "occupation", "zip"]
    assert users["user_id"].tolist() == list(range(m["vocab"]["user_id"]["size"]))
    side = {u: (g, z) for u, g, _, _, z in _users(12)}
    for i in range(1, len(users)):
        g, z = side[raw.raw_of(out, "user_id", i)]
        assert raw.token_of(out, "gender", users.iloc[i]["gender"]) == g
        assert raw.token_of(out, "zip", users.iloc[i]["zip"]) == z
    frame = written(out)
    for _, r in frame.iterrows():  # the splits agree with the catalogue row of their user
        if r["user_id"]:
            assert (r["gender"], r["zip"]) == tuple(users.iloc[r["user_id"]][["gender", "zip"]])


def test_min_rating_drops_and_counts(tmp_path):
    ratings = random_ratings(seed=5)
    src = write_release(tmp_path / "ml", "ml-latest", ratings)
    m = ingest_movielens(src, tmp_path / "out", _spec(user_side=False), split="leave_last_out", min_rating=4)
    kept = [r for r in ratings if r[2] >= 4]
    assert m["min_rating"]["dropped"] == len(ratings) - len(kept) > 0 and m["min_rating"]["kept"] == len(kept)
    frame = written(tmp_path / "out")
    assert len(frame) == m["rows"]["total"] == len(kept) and (frame["rating"] == 1.0).all()
    # histories only hold positives, as the naive reference over the kept rows says
    _, history = naive(kept, "leave_last_out", 3)
    got = frame.set_index(["user", "movie"])
    assert all(got.loc[(u, mv), "history"] == history[row] for row, (u, mv, _, _) in enumerate(kept))
    with pytest.raises(ValueError, match=r"--min-rating 6: expected a number from 0.5 to 5"):
        ingest_movielens(tmp_path / "missing", tmp_path / "o", _spec(), min_rating=6)


def test_ml_latest_csv_format(tmp_path, raw):
    ratings = [(1, 20, 4.5, 100), (1, 30, 0.5, 101), (2, 20, 3.0, 102), (2, 10, 5.0, 103), (3, 10, 2.5, 104),
               (1, 10, 1.0, 105), (2, 30, 3.5, 106), (3, 20, 4.0, 107), (3, 30, 4.0, 108), (1, 40, 4.0, 109)]
    src = write_release(tmp_path / "ml-latest-small", "ml-latest", ratings)
    (src / "ratings.csv").write_bytes(b"\xef\xbb\xbf" + (src / "ratings.csv").read_bytes())  # a BOM before the header
    out = tmp_path / "out"
    m = ingest_movielens(src / "ratings.csv", out, _spec(user_side=False), split="leave_last_out")
    assert m["source"]["variant"] == "ml-latest" and m["rows"]["total"] == 10
    frame = written(out).set_index(["user", "movie"])
    assert frame.loc[(1, 30), "rating"] == 0.5 and frame.loc[(1, 20), "rating"] == 4.5  # half stars
    good = frame.loc[(1, 20)]
    assert raw.token_of(out, "item_id", good["item_id"]) == 'Good, the Bad and the "Ugly", The (1966)'
    assert raw.raw_of(out, "year", good["year"]) == 1966
    assert [raw.token_of(out, "genres", g) for g in good["genres"]] == ["Animation", "Children's"]
    assert list(frame.loc[(1, 30), "genres"]) == []  # "(no genres listed)"
    (src / "ratings.csv").write_text("user,movie,rating,time\n1,10,4,100\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 1: got header 'user,movie,rating,time'; expected userId,movieId"):
        ingest_movielens(src, out, _spec(user_side=False))
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4,100\n1,10x,4,100\n")
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3: field movieId: got '10x'; expected an integer"):
        ingest_movielens(src, out, _spec(user_side=False))
    with pytest.raises(ValueError, match=r"asks for user side features \['gender', 'age', 'occupation', 'zip'\].*no users file"):
        ingest_movielens(src, out, _spec())


def test_ml100k_and_ml1m_fixtures_of_the_conftest_keep_working(ml1m, ml100k, tmp_path):
    m = ingest_movielens(ml1m, tmp_path / "a", builtin_spec("movielens"), fractions=(0.7, 0.1, 0.2))
    assert m["catalogue"]["items"]["rows"] == 6 and m["catalogue"]["users"]["rows"] == m["vocab"]["user_id"]["size"]
    m = ingest_movielens(ml100k, tmp_path / "b", builtin_spec("movielens"), fractions=(0.6, 0.2, 0.2))
    assert m["catalogue"]["items"]["rows"] == 4  # 3 movies + OOV


def test_cli_leave_last_out_min_rating_and_ml_latest_default_spec(tmp_path, capsys):
    src = write_release(tmp_path / "ml-25m", "ml-latest", random_ratings(seed=6))
    args = ["ingest", "movielens", str(src), "--out", str(tmp_path / "out"), "--split", "leave_last_out", "--min-rating", "2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "split by leave_last_out" in out and "items: items.parquet" in out and "--min-rating 2: dropped" in out
    names = [f.name for f in layout.dataset_spec(tmp_path / "out").features]
    assert "gender" not in names and "history_item_id" in names  # the default spec, without user side features
    assert cli.main(["ingest", "criteo", str(tmp_path / "x"), "--out", str(tmp_path / "o"), "--split", "leave_last_out"]) == 1
    assert "--split 'leave_last_out': the per-user split needs users and items" in capsys.readouterr().err
    assert cli.main(["ingest", "movielens", str(src), "--out", str(tmp_path / "o"), "--min-rating", "9"]) == 1
    assert "--min-rating 9.0: expected a number from 0.5 to 5" in capsys.readouterr().err


def test_history_feature_rules_are_validated():
    base = {"name": "t", "timestamp": "ts", "features": [{"name": "y", "kind": "label"},
            {"name": "item_id", "kind": "sparse", "cardinality": 10, "tower": "item"}]}
    ok = {**base, "features": base["features"] + [{"name": "history_item_id", "kind": "sparse", "cardinality": 10, "max_length": 4}]}
    assert history_features(spec_from_dict(ok)) == {"history_item_id": "item_id"}
    single = {**base, "features": base["features"] + [{"name": "history_item_id", "kind": "sparse", "cardinality": 10}]}
    with pytest.raises(ValueError, match=r"features\[history_item_id\]\.max_length: got 1"):
        history_features(spec_from_dict(single))
    other = {**base, "features": base["features"] + [{"name": "history_other", "kind": "sparse", "cardinality": 10, "max_length": 4}]}
    assert history_features(spec_from_dict(other)) == {}  # no feature 'other': an ordinary feature


def test_user_history_window_unit():
    user = np.array([1, 1, 2, 1, 1, 2])
    item = np.array([10, 11, 20, 12, 13, 21])
    ts = np.array([5, 1, 3, 5, 9, 3])
    h = UserHistory.build(user, item, ts)
    assert h.lists(np.arange(6), 2).to_pylist() == [[11], [], [], [11], [10, 12], []]
    codes = leave_last_out_codes(user, ts)
    assert codes.tolist() == [0, 0, 0, 1, 2, 0]  # user 1 by (ts, row): 11, 10, 12, 13; user 2 has 2 rows
    h = UserHistory.build(user, item, ts, codes)
    assert h.lists(np.arange(6), 5).to_pylist() == [[11], [], [], [11, 10], [11, 10], []]


# -- synthetic interactions -----------------------------------------------------------------------
def _synth_spec(history_length: int = 4):
    raw = builtin_spec("synthetic_interactions").to_dict()
    raw["features"].append({"name": "history_item_id", "kind": "sparse", "cardinality": 10001, "max_length": history_length,
                            "pooling": "mean", "tower": "user", "embedding_dim": 32})
    return spec_from_dict(raw)


@pytest.mark.parametrize("split", ["leave_last_out", "time"])
def test_synth_catalogues_history_and_split(tmp_path, raw, split):
    from recsys.data.synthetic_interactions import InteractionModel, InteractionSettings, generate_interactions

    settings = InteractionSettings(block_users=64)
    out = tmp_path / "ia"
    m = generate_interactions(out, rows=3000, users=200, items=400, seed=4, split=split, spec=_synth_spec(), settings=settings)
    model = InteractionModel(4, 200, 400, 16, 50, 500, settings)
    # items.parquet: every planted item (also those no training row has), its category and tags
    items = pq.read_table(layout.catalogue_path(out, "items")).to_pandas()
    assert items["item_id"].tolist() == list(range(401)) and m["catalogue"]["items"]["rows"] == 401
    cat_raw = raw.read_vocab(out, "item_category").set_index("index")["raw_id"]
    tag_raw = raw.read_vocab(out, "item_tags").set_index("index")["raw_id"]
    for i in range(1, 401):
        planted = raw.raw_of(out, "item_id", i)
        assert cat_raw[items.iloc[i]["item_category"]] == model.item_category[planted]
        tags = model.item_tags(np.array([planted])).to_pylist()[0]
        got = [tag_raw[t] if t else None for t in items.iloc[i]["item_tags"]]
        assert got == [t if t in set(tag_raw.dropna().astype(int)) else None for t in tags]
    users = pq.read_table(layout.catalogue_path(out, "users")).to_pandas()
    seg_raw = raw.read_vocab(out, "user_segment").set_index("index")["raw_id"]
    for i in range(1, len(users)):
        assert seg_raw[users.iloc[i]["user_segment"]] == model.user_segment[raw.raw_of(out, "user_id", i)]
    # the rows against the naive reference (timestamps strictly increase: they give the row order)
    frame = written(out).sort_values("timestamp")
    events = list(zip(frame["user"], frame["movie"], frame["label"], frame["timestamp"]))
    code, history = naive(events, split, 4)
    assert frame["history"].tolist() == [history[r] for r in range(len(events))]
    if split == "leave_last_out":
        assert [SPLITS.index(s) for s in frame["split"]] == [code[r] for r in range(len(events))]
        assert m["oracle"]["rows"] == m["rows"]["test"] == frame.query("split == 'test'")["user"].nunique()
    else:
        assert m["split"]["rows"]["test"] == [2700, 3000] and m["oracle"]["rows"] == 300
    assert m["vocab"]["history_item_id"]["shares_vocab_of"] == "item_id"


def test_synth_default_spec_has_catalogues_and_cli_split(tmp_path, capsys):
    args = ["synth", "interactions", "--out", str(tmp_path / "d"), "--rows", "2000", "--users", "100", "--items", "150"]
    assert cli.main(args + ["--split", "leave_last_out"]) == 0
    out = capsys.readouterr().out
    assert "split by leave_last_out" in out and "items: items.parquet, 151 rows" in out
    with pytest.raises(SystemExit):  # argparse: invalid choice, usage on stderr
        cli.main(args + ["--split", "random"])
    assert "invalid choice: 'random'" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("method", ["leave_last_out", "time"])
def test_user_history_matches_naive_on_random_events(seed, method):
    rng = np.random.default_rng(seed)
    n = 400
    user = rng.integers(0, 30, n)
    item = rng.integers(0, 50, n)  # repeats allowed: a user may take the same item again
    ts = rng.integers(0, 20, n)  # many ties
    events = list(zip(user.tolist(), item.tolist(), [0.0] * n, ts.tolist()))
    code, history = naive(events, method, 4)
    codes = leave_last_out_codes(user, ts) if method == "leave_last_out" else None
    if codes is not None:
        assert codes.tolist() == [code[r] for r in range(n)]
    got = UserHistory.build(user, item, ts, codes).lists(np.arange(n), 4).to_pylist()
    assert got == [history[r] for r in range(n)]
    # chunks (slices) give the same lists as the whole
    h = UserHistory.build(user, item, ts, codes)
    assert h.lists(slice(100, 250), 4).to_pylist() == got[100:250]


def test_leave_last_out_with_no_user_of_three_ratings_names_the_empty_split(tmp_path):
    ratings = [(1, 10, 4, 100), (1, 20, 4, 101), (2, 10, 4, 102)]
    src = write_release(tmp_path / "ml", "ml-1m", ratings)
    with pytest.raises(ValueError, match=r"split 'validation' has 0 rows after splitting \(3 train, 0 validation, 0 test; "
                                         r"--split leave_last_out \(users with fewer than 3 ratings are train only\)"):
        ingest_movielens(src, tmp_path / "out", _spec(), split="leave_last_out")
    assert not (tmp_path / "out").exists()


def test_item_catalogue_refuses_min_count_above_one(tmp_path):
    raw_spec = _spec().to_dict()
    for f in raw_spec["features"]:
        if f["name"] == "item_id":
            f["min_count"] = 2
    # refused before anything is read: the folder does not even exist
    with pytest.raises(ValueError, match=r"features\[item_id\]\.min_count: got 2; items\.parquet gives every item_id its own index"):
        ingest_movielens(tmp_path / "missing", tmp_path / "out", spec_from_dict(raw_spec), split="leave_last_out")


def test_synth_spec_mismatches_are_named(tmp_path):
    from recsys.data.synthetic_interactions import generate_interactions

    raw_spec = _synth_spec().to_dict()
    for f in raw_spec["features"]:
        if f["name"] == "user_segment":
            f["tower"] = "item"
    raw_spec["features"].append({"name": "price", "kind": "sparse", "cardinality": 10})
    with pytest.raises(ValueError, match=r"features \['price'\] are not generated.*features\[user_segment\]\.tower: got 'item'"):
        generate_interactions(tmp_path / "x", rows=100, users=10, items=10, spec=spec_from_dict(raw_spec))
