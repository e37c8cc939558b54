"""Data never replaced by mistake: the one folder rule of every command that writes a folder.

    .venv/bin/python -m pytest tests/unit/test_folders.py -q

`recsys ingest *` and `recsys synth *` write a data set only into a new or empty folder, or over a
data set of the same kind with --overwrite; `recsys train` never writes a run into a data set or a
sweep; `recsys bench compression` never writes a sweep beside a run's or a data set's files.
Each refusal names what is there, before any data is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import bench_compression, cli, ingest, synth
from jobs import train as train_job
from recsys.folders import FolderError, check_dataset_out, check_run_dir, check_sweep_dir, inspect_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROWS = "300"


@pytest.fixture(scope="module")
def ctr_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("folders") / "ctr"
    assert synth.main(["ctr", "--out", str(out), "--rows", ROWS, "--seed", "1"]) == 0
    return out


def folder(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    path = tmp_path / name
    path.mkdir()
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def others(tmp_path) -> dict[str, Path]:
    """One folder of each other kind."""
    return {
        "run": folder(tmp_path, "run", {"results.json": "{}", "ray/checkpoint_000001/x": ""}),
        "failed_run": folder(tmp_path, "failed_run", {"ray/x": ""}),
        "sweep": folder(tmp_path, "sweep", {"sweep.json": "{}", "trials/a/results.json": "{}"}),
        "bundle": folder(tmp_path, "bundle", {"manifest.json": json.dumps({"format_version": 1, "bundle_id": "b1"})}),
        "other": folder(tmp_path, "other", {"notes.txt": "mine"}),
        "file": (tmp_path / "a_file").resolve(),
    }


def test_inspect_names_what_a_folder_holds(ctr_set, others, tmp_path):
    assert inspect_folder(tmp_path / "missing").kind == "missing"
    assert inspect_folder(folder(tmp_path, "trials_only", {"trials/a/faults.json": "{}"})).describe() == "a sweep (trials/)"
    assert inspect_folder(folder(tmp_path, "empty", {})).kind == "empty"
    found = inspect_folder(ctr_set)
    assert (found.kind, found.dataset_kind) == ("dataset", "synthetic ctr")
    assert found.describe() == "a synthetic ctr data set (synthetic, 300 rows)"
    others["file"].write_text("x")
    assert [inspect_folder(others[k]).describe() for k in ("run", "failed_run", "sweep", "bundle", "other", "file")] == [
        "a training run (results.json, ray)", "a training run (ray)", "a sweep (sweep.json)", "a serving bundle (bundle b1)",
        "a non-empty folder (notes.txt)", "a file, not a folder",
    ]


def test_synth_again_needs_overwrite_and_replaces_only_its_own_kind(ctr_set, capsys):
    before = json.loads((ctr_set / "manifest.json").read_text())["created_at"]
    with pytest.raises(FolderError, match=r"--out .*ctr: holds a synthetic ctr data set \(synthetic, 300 rows\); pass --overwrite"):
        synth.main(["ctr", "--out", str(ctr_set), "--rows", ROWS, "--seed", "1"])
    # Another kind is never replaced, not even with --overwrite; nothing was read or written.
    with pytest.raises(FolderError, match=r"holds a synthetic ctr data set .*; this command writes a synthetic interactions data set "
                                          r"and never replaces a data set of another kind \(not even with --overwrite\)"):
        synth.main(["interactions", "--out", str(ctr_set), "--rows", "500", "--overwrite"])
    assert json.loads((ctr_set / "manifest.json").read_text())["created_at"] == before
    assert synth.main(["ctr", "--out", str(ctr_set), "--rows", "400", "--seed", "2", "--overwrite"]) == 0
    assert json.loads((ctr_set / "manifest.json").read_text())["rows"]["total"] == 400


@pytest.mark.parametrize("source", ["criteo", "movielens", "parquet", "avazu", "csv", "interactions"])
def test_every_ingest_subcommand_refuses_another_kind_before_reading_its_input(source, ctr_set, tmp_path):
    # The input does not exist: the folder rule comes first, so the message is about --out.
    argv = [source, str(tmp_path / "no_such_input"), "--out", str(ctr_set), "--overwrite"]
    if source in ("csv", "parquet"):
        argv += ["--spec", str(tmp_path / "no_spec.yaml")]
    if source == "interactions":
        argv += ["--user", "u", "--item", "i"]
    with pytest.raises(FolderError, match=rf"holds a synthetic ctr data set .*; this command writes an? {source} data set and never replaces"):
        ingest.main(argv)


def test_every_ingest_subcommand_has_overwrite():
    parser = ingest.build_parser()
    sub = next(a for a in parser._actions if a.dest == "source")
    assert set(sub.choices) >= {"criteo", "movielens", "parquet", "avazu", "csv", "interactions"}
    for name, p in sub.choices.items():
        assert any("--overwrite" in a.option_strings for a in p._actions), name


@pytest.mark.parametrize(("kind", "said"), [
    ("run", r"a training run \(results.json, ray\)"), ("sweep", r"a sweep \(sweep.json\)"),
    ("bundle", r"a serving bundle \(bundle b1\)"), ("other", r"a non-empty folder \(notes.txt\)"),
])
def test_a_data_set_is_never_written_beside_other_files(kind, said, others, tmp_path):
    with pytest.raises(FolderError, match=rf"--out .*{kind}: holds {said}; a data set is written only into a new or empty folder"):
        check_dataset_out(others[kind], writes="csv", overwrite=True)
    with pytest.raises(FolderError, match=rf"holds {said}"):
        ingest.main(["criteo", str(tmp_path / "x.tsv"), "--out", str(others[kind]), "--overwrite"])


def test_the_cli_says_it_in_one_line_with_exit_1(ctr_set, capsys):
    assert cli.main(["synth", "ctr", "--out", str(ctr_set), "--rows", ROWS]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recsys synth: error: --out" in err and "pass --overwrite" in err


def test_train_run_dir_refuses_a_data_set_or_a_sweep_but_keeps_resume(ctr_set, others, tmp_path):
    config = str(CONFIGS / "ctr_synthetic_full.yaml")
    no_data = f"data.path={tmp_path / 'no_data'}"
    with pytest.raises(FolderError, match=r"run_dir .*ctr: holds a synthetic ctr data set .*; a training run writes its checkpoints"):
        train_job.main([config, no_data, f"run_dir={ctr_set}"])
    for kind in ("sweep", "bundle"):
        with pytest.raises(FolderError, match=rf"run_dir .*{kind}: holds a"):
            train_job.main([config, no_data, f"run_dir={others[kind]}"])
    # An earlier run (resume decides) and a folder of other files pass the rule: the data is what fails here.
    for kind in ("run", "other"):
        assert check_run_dir(others[kind]).kind in ("training run", "other")
        with pytest.raises(FileNotFoundError, match="no_data"):
            train_job.main([config, no_data, f"run_dir={others[kind]}", "resume=true"])


def test_prepare_refuses_a_sweep_as_run_dir_for_every_caller(ctr_set, others):
    """The Python API and sweep trials call prepare() without jobs/train.py: the rule holds there too."""
    from recsys.train.config import load_config
    from recsys.train.run import prepare

    config = load_config(str(CONFIGS / "ctr_synthetic_full.yaml"), [f"data.path={ctr_set}", f"run_dir={others['sweep']}"])
    with pytest.raises(FolderError, match=r"run_dir .*sweep: holds a"):
        prepare(config)


@pytest.mark.parametrize(("kind", "said"), [
    ("run", "a training run"), ("other", "a non-empty folder"), ("bundle", "a serving bundle"), ("file", "a file, not a folder"),
])
def test_a_sweep_is_never_written_into_a_run_or_other_files(kind, said, others, ctr_set, capsys):
    others["file"].write_text("x")
    with pytest.raises(FolderError, match=rf"--out .*: holds {said}.*; a sweep writes its trials"):
        bench_compression.main(["compression", str(CONFIGS / "bench_quick.yaml"), "--out", str(others[kind]), "--dry-run"])
    with pytest.raises(FolderError, match=r"holds a synthetic ctr data set"):
        check_sweep_dir(ctr_set)
    assert check_sweep_dir(others["sweep"]).kind == "sweep"  # an earlier sweep is continued
