"""DatasetWriter and vocabularies: frequency order, ties, min_count, cap, OOV, ranges, manifest."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from recsys.data import layout
from recsys.data.writer import DatasetWriter
from recsys.features.spec import spec_from_dict


def _spec(**sparse):
    return spec_from_dict({"name": "w", "features": [
        {"name": "y", "kind": "label"},
        {"name": "x", "kind": "dense", "transform": "log1p"},
        {"name": "s", "kind": "sparse", "cardinality": 100, **sparse},
        {"name": "m", "kind": "sparse", "cardinality": 100, "max_length": 2},
    ]})


def _frame(ids, lists=None, x=None):
    n = len(ids)
    return pd.DataFrame({"y": np.ones(n), "x": x if x is not None else np.zeros(n), "s": np.array(ids, np.int64),
                         "m": lists if lists is not None else [[1]] * n})


def _finish(w):
    return w.finish(source={"kind": "test"}, split={"method": "given"})


def test_vocab_by_frequency_with_deterministic_ties(tmp_path, raw):
    w = DatasetWriter(tmp_path / "out", _spec())
    w.add("train", _frame([5, 9, 9, 3, 3, 7, 7, 7]))
    m = _finish(w)
    vocab = raw.read_vocab(tmp_path / "out", "s")
    # 7 (x3), then the ties 3 and 9 (x2) by raw id, then 5; index 0 = OOV with null raw id
    assert vocab["raw_id"].tolist()[1:] == [7, 3, 9, 5] and pd.isna(vocab["raw_id"][0])
    assert vocab["count"].tolist() == [0, 3, 2, 2, 1]
    assert m["vocab"]["s"]["size"] == 5 and m["feature_spec"]["features"][2]["cardinality"] == 5
    train = raw.read_split(tmp_path / "out", "train")
    assert train["s"].tolist() == [4, 3, 3, 2, 2, 1, 1, 1]


def test_min_count_cap_and_oov_for_unseen(tmp_path, raw):
    w = DatasetWriter(tmp_path / "out", _spec(min_count=2, cardinality=3))
    w.add("train", _frame([1, 1, 1, 2, 2, 3, 3, 4]))
    w.add("validation", _frame([1, 4, 99]))
    w.add("test", _frame([3, -1]))
    m = _finish(w)
    info = m["vocab"]["s"]
    # min_count drops 4; the cap keeps 2 ids (cardinality 3 incl. OOV): 1, then 2 over 3 (tie, lower id)
    assert info["size"] == 3 and raw.read_vocab(tmp_path / "out", "s")["raw_id"].tolist()[1:] == [1, 2]
    assert info["train_oov_count"] == 3 and info["oov_values"] == {"train": 3, "validation": 2, "test": 2}
    assert raw.read_split(tmp_path / "out", "validation")["s"].tolist() == [1, 0, 0]
    for split in layout.SPLITS:
        ids = raw.read_split(tmp_path / "out", split)["s"]
        assert ((ids >= 0) & (ids < info["size"])).all()


def test_truncation_counted_and_dense_transform(tmp_path, raw):
    w = DatasetWriter(tmp_path / "out", _spec())
    w.add("train", _frame([1, 2, 3], lists=[[1, 2, 3, 4], None, [5]], x=np.array([np.nan, -5.0, np.e - 1])))
    m = _finish(w)
    assert m["truncated_values"] == {"m": 2}
    train = raw.read_split(tmp_path / "out", "train")
    assert [len(v) for v in train["m"]] == [2, 0, 1]
    assert train["x"].tolist() == pytest.approx([0.0, 0.0, 1.0])


def test_manifest_is_written_last_and_atomically(tmp_path):
    w = DatasetWriter(tmp_path / "out", _spec())
    w.add("train", _frame([1]))
    assert not (tmp_path / "out" / layout.MANIFEST).exists()  # unfinished: no manifest
    m = _finish(w)
    assert json.loads((tmp_path / "out" / layout.MANIFEST).read_text())["rows"] == m["rows"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "features.yaml", "manifest.json", "test", "train", "validation", "vocab"]  # no temp or staging left
    assert layout.dataset_spec(tmp_path / "out").feature("s").cardinality == 2


def test_out_folder_rules(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--out .*foreign: folder holds other files \(\['notes.txt'\]\)"):
        DatasetWriter(foreign, _spec())
    assert (foreign / "notes.txt").exists()
    run = tmp_path / "run"  # a training run's folder is named as such
    (run / "ray").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    with pytest.raises(ValueError, match=r"--out .*run: holds a training run \(results.json, ray\); give an empty or new folder"):
        DatasetWriter(run, _spec())
    run.joinpath("results.json").unlink()
    run.joinpath("ray").rmdir()
    run.rmdir()
    w = DatasetWriter(tmp_path / "ds", _spec())
    w.add("train", _frame([1]))
    _finish(w)
    first = json.loads((tmp_path / "ds" / layout.MANIFEST).read_text())

    # A run that fails (here: a bad chunk) leaves the earlier data set untouched and no build folder.
    with pytest.raises(ValueError, match="columns do not match"):
        with DatasetWriter(tmp_path / "ds", _spec()) as w:
            w.add("train", _frame([2, 2]))
            w.add("train", _frame([3]).drop(columns=["x"]))
    assert json.loads((tmp_path / "ds" / layout.MANIFEST).read_text()) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "foreign"]

    # A run that succeeds replaces it as a whole.
    with DatasetWriter(tmp_path / "ds", _spec()) as w:
        w.add("train", _frame([2, 2, 4]))
        second = _finish(w)
    assert second["rows"]["train"] == 3 and second["vocab"]["s"]["size"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "foreign"]


def test_columns_must_match_spec(tmp_path):
    w = DatasetWriter(tmp_path / "out", _spec())
    with pytest.raises(ValueError, match=r"missing \['m'\], unexpected \['z'\]"):
        w.add("train", _frame([1]).drop(columns=["m"]).assign(z=1))


def test_ingest_shows_rows_with_their_rate_every_few_seconds(tmp_path, monkeypatch, capsys):
    """Every ingest stages its rows through the writer: a plain line with the rows and their rate
    when the output is not a terminal (a bar on one)."""
    from recsys import console

    clock = iter([0.0, 0.0, 4.0, 11.0, 12.0, 12.0, 12.0])
    made = []

    def progress(total, unit, desc, **kwargs):
        made.append(console.Progress(total, unit, desc, clock=lambda: next(clock), bar=False, **kwargs))
        return made[-1]

    monkeypatch.setattr(console, "progress", progress)
    w = DatasetWriter(tmp_path / "out", _spec())
    w.add("train", _frame([5, 9, 9, 3]))  # at 4 s: no line yet
    w.add("validation", _frame([7, 7]))   # at 11 s: one line
    _finish(w)
    out = capsys.readouterr().out.splitlines()
    assert made[0].desc == "ingest " + _spec().name and made[0].done == 6
    assert out and all(re.fullmatch("ingest " + _spec().name + r": 6 rows, \d+ rows/s", line) for line in out), out
