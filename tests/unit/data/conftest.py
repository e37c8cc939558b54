"""Fixture files in the real raw formats (Criteo TSV, MovieLens ml-1m / ml-100k) and readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data import layout

# Real first line of Criteo Kaggle train.txt (label, I1..I13, C1..C26).
CRITEO_LINE = (
    "0\t1\t1\t5\t0\t1382\t4\t15\t2\t181\t1\t2\t\t2\t68fd1e64\t80e26c9b\tfb936136\t7b4723c4\t25c83c98\t"
    "7e0ccccf\tde7995b8\t1f89b562\ta73ee510\ta8cd5504\tb2cb9c98\t37c9c164\t2824a5f6\t1adce6ef\t8ba8b39a\t"
    "891b62e7\te5ba7672\tf54016b9\t21ddcdc9\tb1252a9d\t07b5194c\t\t3a171ecb\tc5c50484\te8b83407\t9727dd16"
)


def criteo_line(label: int = 1, dense: list | None = None, ids: list | None = None) -> str:
    dense = [str(i) for i in range(13)] if dense is None else [str(x) for x in dense]
    ids = [f"{i:08x}" for i in range(1, 27)] if ids is None else ids
    return "\t".join([str(label), *dense, *ids])


def write_lines(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((end.join(lines) + end).encode("latin-1"))
    return path


def read_split(root: Path, split: str):
    """A split as a pandas frame (all part files)."""
    import pandas as pd

    return pd.concat([pq.read_table(p).to_pandas() for p in layout.split_files(root, split)], ignore_index=True)


def read_vocab(root: Path, feature: str):
    return pq.read_table(layout.vocab_path(root, feature)).to_pandas()


def raw_of(root: Path, feature: str, index: int) -> int | None:
    """The raw id behind a vocabulary index (None for OOV)."""
    v = read_vocab(root, feature)
    raw = v.loc[v["index"] == index, "raw_id"].iloc[0]
    return None if raw is None or np.isnan(raw) else int(raw)


def token_of(root: Path, feature: str, index: int) -> str | None:
    v = read_vocab(root, feature)
    return v.loc[v["index"] == index, "token"].iloc[0]


ML1M_USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117", "4::M::45::7::T8H1N"]
ML1M_MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Jumanji (1995)::Adventure|Children's|Fantasy",
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
    "3::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi",
    "5::Untitled::Drama",
]
# 10 ratings; timestamps ascending except ties at 978300760.
ML1M_RATINGS = [
    "1::1193::5::978300760",
    "1::1::3::978300760",
    "2::2::4::978300761",
    "2::3::5::978300762",
    "3::1::2::978300763",
    "3::2::1::978300764",
    "4::3::4::978300765",
    "4::5::3::978300766",
    "1::2::4::978300767",
    "2::1::5::978300768",
]

ML100K_USERS = ["1|24|M|technician|85711", "2|53|F|other|94043", "196|49|M|writer|55105"]
ML100K_ITEMS = [
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
]
ML100K_RATINGS = [
    "196\t242\t3\t881250949",
    "1\t1\t5\t874965758",
    "2\t242\t4\t888550871",
    "1\t267\t2\t875692979",
    "196\t1\t4\t881251000",
]


class Raw:
    """The helpers and fixture lines above, as one object for tests (fixture ``raw``)."""

    CRITEO_LINE = CRITEO_LINE
    ML1M_USERS, ML1M_MOVIES, ML1M_RATINGS = ML1M_USERS, ML1M_MOVIES, ML1M_RATINGS
    ML100K_USERS, ML100K_ITEMS, ML100K_RATINGS = ML100K_USERS, ML100K_ITEMS, ML100K_RATINGS
    criteo_line = staticmethod(criteo_line)
    write_lines = staticmethod(write_lines)
    read_split = staticmethod(read_split)
    read_vocab = staticmethod(read_vocab)
    raw_of = staticmethod(raw_of)
    token_of = staticmethod(token_of)


@pytest.fixture
def raw() -> type[Raw]:
    return Raw


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    write_lines(d / "ratings.dat", ML1M_RATINGS)
    write_lines(d / "users.dat", ML1M_USERS)
    write_lines(d / "movies.dat", ML1M_MOVIES)
    return d


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    write_lines(d / "u.data", ML100K_RATINGS)
    write_lines(d / "u.user", ML100K_USERS)
    write_lines(d / "u.item", ML100K_ITEMS)
    return d
