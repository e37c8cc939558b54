"""Every flag of recsys serve / export / bench serve refused before any work: one line naming the flag,
the value and what is allowed, exit code 2. The tables must cover every option of each parser, so a new
flag without a check fails here. Also: the exit code and message of a port in use, export's messages."""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest

from jobs import bench_serve, export, serve


def option_flags(parser) -> set[str]:
    flags = {a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != "help"}
    return flags | {a.dest.upper() for a in parser._actions if not a.option_strings}


SERVE_CASES = [  # (flag, argv after BUNDLE, message)
    ("BUNDLE", ["/no/such/bundle"], r"argument BUNDLE: /no/such/bundle: no such folder"),
    ("--host", ["--host", "no.such.host.invalid"], r"argument --host: got 'no.such.host.invalid', which does not resolve"),
    ("--port", ["--port", "99999"], r"argument --port: got 99999; give an integer in \[0, 65,535\]"),
    ("--port", ["--port", "-1"], r"argument --port: got -1; give an integer in \[0, 65,535\]"),
    ("--port", ["--port", "http"], r"argument --port: got 'http'; give an integer"),
    ("--threads", ["--threads", "0"], r"argument --threads: got 0; give an integer in \[1, 256\]"),
    ("--max-batch", ["--max-batch", "0"], r"argument --max-batch: got 0; give an integer in \[1, 4,096\]"),
    ("--max-wait-ms", ["--max-wait-ms", "-1"], r"argument --max-wait-ms: got -1; give a number in \[0, 1000\]"),
    ("--max-wait-ms", ["--max-wait-ms", "nan"], r"argument --max-wait-ms: got nan; give a number in \[0, 1000\]"),
    ("--batch-thread", ["--batch-thread=yes"], r"argument --batch-thread: ignored explicit argument 'yes'"),
    ("--max-k", ["--max-k", "-1"], r"argument --max-k: got -1; give an integer in \[1, 100,000\]"),
    ("--max-batch-requests", ["--max-batch-requests", "0"], r"argument --max-batch-requests: got 0; give an integer in \[1, 10,000\]"),
    ("--max-body-bytes", ["--max-body-bytes", "10"], r"argument --max-body-bytes: got 10; give an integer in \[1,024, "),
    ("--admin-anywhere", ["--admin-anywhere=1"], r"argument --admin-anywhere: ignored explicit argument '1'"),
    ("--require-all-features", ["--require-all-features=no"], r"argument --require-all-features: ignored explicit argument"),
    ("--index-setting", ["--index-setting", "nprobe=4"], r"argument --index-setting: got nprobe=4; the bundle's exact index takes no serve-time"),
    ("--index-setting", ["--index-setting", "nlist=4"], r"argument --index-setting: got 'nlist=4'; give KEY=N with KEY one of \['nprobe'"),
    ("--index-setting", ["--index-setting", "nprobe=0"], r"argument --index-setting: got 'nprobe=0'; nprobe takes an integer in \[1, "),
    ("--http", ["--http", "spdy"], r"argument --http: invalid choice: 'spdy' \(choose from 'httptools', 'h11'\)"),
    ("--loop", ["--loop", "trio"], r"argument --loop: invalid choice: 'trio'"),
    ("--log-level", ["--log-level", "loud"], r"argument --log-level: invalid choice: 'loud'"),
    ("--access-log", ["--access-log=yes"], r"argument --access-log: ignored explicit argument"),
]

EXPORT_CASES = [  # (flag, argv, message); {run}, {bundle}, {file} are filled in
    ("RUN_DIR", ["/no/such/run", "--out", "{new}"], r"argument RUN_DIR: /no/such/run: no such folder"),
    ("--out", ["{run}"], r"the following arguments are required: --out"),
    ("--out", ["{run}", "--out", "{bundle}"], r"argument --out: .* exists \(a folder\); give a new folder"),
    ("--out", ["{run}", "--out", "{file}"], r"argument --out: .* exists \(a file\); give a new folder"),
    ("--out", ["{run}", "--out", "{file}/bundle"], r"argument --out: .* is a file; the bundle folder cannot be created under it"),
    ("--precision", ["{run}", "--out", "{new}", "--precision", "fp8"], r"argument --precision: invalid choice: 'fp8'"),
    ("--index", ["{run}", "--out", "{new}", "--index", "lsh"], r"argument --index: invalid choice: 'lsh'"),
    ("--index-setting", ["{run}", "--out", "{new}", "--index", "hnsw", "--index-setting", "nlist=4"],
     r"argument --index-setting: got nlist=4; the hnsw index takes \['m', 'ef_construction', 'ef_search'\]"),
    ("--index-setting", ["{run}", "--out", "{new}", "--index-setting", "nlist=-3"], r"argument --index-setting: got 'nlist=-3'; nlist takes an integer"),
    ("--index-setting", ["{run}", "--out", "{new}", "--index", "ivf", "--index-setting", "nlist=2000000"],
     r"argument --index-setting: index setting nlist: got 2000000; the ivf index takes nlist in \[1, 1,048,576\]"),
    ("--checkpoint", ["{run}", "--out", "{new}", "--checkpoint", "/no/such/ckpt"], r"argument --checkpoint: /no/such/ckpt: no such folder"),
    ("--require-all-features", ["{run}", "--out", "{new}", "--require-all-features=1"], r"argument --require-all-features: ignored explicit"),
]

BENCH_CASES = [  # (flag, argv, message)
    ("BUNDLE", ["/no/such/bundle"], r"argument BUNDLE: /no/such/bundle: no such folder"),
    ("BUNDLE", [], r"give a BUNDLE folder or --synthetic-items N \(one of them\)"),
    ("--synthetic-items", ["--synthetic-items", "1"], r"argument --synthetic-items: got 1; give an integer in \[2, 100,000,000\]"),
    ("--index", ["--synthetic-items", "100", "--index", "lsh"], r"argument --index: invalid choice: 'lsh'"),
    ("--index-setting", ["--synthetic-items", "100", "--index", "hnsw", "--index-setting", "nprobe=2"],
     r"argument --index-setting: got nprobe=2; the hnsw index takes"),
    ("--index-setting", ["{bundle}", "--index-setting", "nprobe=2"], r"argument --index-setting: applies to --synthetic-items bundles only"),
    ("--catalogue", ["--synthetic-items", "100", "--catalogue", "zipf"], r"argument --catalogue: invalid choice: 'zipf'"),
    ("--precision", ["--synthetic-items", "100", "--precision", "fp8"], r"argument --precision: invalid choice: 'fp8'"),
    ("--bundle-out", ["--synthetic-items", "100", "--bundle-out", "{bundle}"], r"argument --bundle-out: .* exists; give a new folder"),
    ("--concurrency", ["{bundle}", "--concurrency", "1,0"], r"argument --concurrency: levels must lie in \[1, 256\]; got '1,0'"),
    ("--seconds", ["{bundle}", "--seconds", "0"], r"argument --seconds: got 0; give a number in \(0, 3600\]"),
    ("--max-requests", ["{bundle}", "--max-requests", "0"], r"argument --max-requests: got 0; give an integer in \[1, "),
    ("--k", ["{bundle}", "--k", "0"], r"argument --k: got 0; give an integer in \[1, 100,000\]"),
    ("--k", ["{bundle}", "--k", "2000"], r"argument --k: got 2000; the service answers k up to its --max-k 1000"),
    ("--threads", ["{bundle}", "--threads", "0"], r"argument --threads: got 0; give an integer in \[1, 256\]"),
    ("--build-threads", ["--synthetic-items", "100", "--build-threads", "0"], r"argument --build-threads: got 0; give an integer in \[1, 1,024\]"),
    ("--serve-arg", ["{bundle}", "--serve-arg=--max-k=-1"], r"argument --serve-arg: --max-k: got -1; give an integer in \[1, 100,000\]"),
    ("--serve-arg", ["{bundle}", "--serve-arg=--port=9000"], r"argument --serve-arg: got '--port=9000'; recsys bench serve sets"),
    ("--serve-arg", ["{bundle}", "--serve-arg=--index-setting=nprobe=8"], r"argument --serve-arg: --index-setting nprobe=8; the bundle's exact index"),
    ("--serve-arg", ["{bundle}", "--serve-arg=--bogus"], r"argument --serve-arg: unrecognized arguments: --bogus"),
    ("--out", ["{bundle}", "--out", "{bundle}"], r"argument --out: .*: give a file path in an existing folder"),
]


@pytest.mark.parametrize("job,cases", [(serve, SERVE_CASES), (export, EXPORT_CASES), (bench_serve, BENCH_CASES)],
                         ids=["serve", "export", "bench_serve"])
def test_the_tables_cover_every_flag(job, cases):
    assert option_flags(job.build_parser()) == {flag for flag, *_ in cases}


def _fill(argv, paths):
    return [a.format(**paths) for a in argv]


@pytest.fixture
def paths(trained_run, fp32_bundle, tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    return {"run": str(trained_run[1]), "bundle": str(fp32_bundle), "file": str(file), "new": str(tmp_path / "new_bundle")}


def _refused(job, argv, message, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the job started work with a bad flag")

    monkeypatch.setattr("serving.export.export_bundle", no_work)
    monkeypatch.setattr("serving.loadgen.run_benchmark", no_work)
    monkeypatch.setattr(serve, "_serve", no_work)
    with pytest.raises(SystemExit) as info:
        job.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{job.build_parser().prog}: error: "), err  # one line
    assert re.search(message, err), err


@pytest.mark.parametrize("flag,argv,message", SERVE_CASES, ids=[f"{c[0]}={' '.join(c[1])}" for c in SERVE_CASES])
def test_serve_flags(flag, argv, message, fp32_bundle, capsys, monkeypatch):
    argv = argv if flag == "BUNDLE" else [str(fp32_bundle), *argv]
    _refused(serve, argv, message, capsys, monkeypatch)


@pytest.mark.parametrize("flag,argv,message", EXPORT_CASES, ids=[f"{c[0]}={' '.join(c[1])}" for c in EXPORT_CASES])
def test_export_flags(flag, argv, message, paths, capsys, monkeypatch):
    _refused(export, _fill(argv, paths), message, capsys, monkeypatch)


@pytest.mark.parametrize("flag,argv,message", BENCH_CASES, ids=[f"{c[0]}={' '.join(c[1])}" for c in BENCH_CASES])
def test_bench_serve_flags(flag, argv, message, paths, capsys, monkeypatch):
    _refused(bench_serve, _fill(argv, paths), message, capsys, monkeypatch)


def test_a_port_in_use_exits_1_in_one_line_without_a_success_line(fp32_bundle, capsys, monkeypatch):
    from jobs.cli import main as recsys

    monkeypatch.setattr(serve, "_serve", lambda *a: pytest.fail("the bundle was loaded though the port is taken"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert recsys(["serve", str(fp32_bundle), "--port", str(port)]) == 1
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert err.count("\n") == 1 and re.search(rf"cannot listen on 127.0.0.1:{port} \(Address already in use\); choose another --port", err), err


def _export_error(argv, capsys) -> str:
    from jobs.cli import main as recsys

    assert recsys(["export", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_export_blames_checkpoint_for_a_ctr_checkpoint(trained_run, tmp_path, capsys):
    ckpt = next((trained_run[1] / "ray").glob("checkpoint_*"))
    ctr = tmp_path / "checkpoint_ctr"
    shutil.copytree(ckpt, ctr)
    resolved = json.loads((ctr / "config.json").read_text())
    resolved["config"]["model"] = {"arch": "dlrm"}
    (ctr / "config.json").write_text(json.dumps(resolved))
    err = _export_error([str(trained_run[1]), "--out", str(tmp_path / "b"), "--checkpoint", str(ctr)], capsys)
    assert re.search(rf"--checkpoint {ctr}: model.arch is 'dlrm'; recsys export serves two_tower runs only", err), err
    assert "RUN_DIR" not in err


def test_export_names_the_missing_file_of_a_moved_data_set(trained_run, tmp_path, capsys):
    data, run = trained_run
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    ckpt = next((moved / "ray").glob("checkpoint_*"))
    resolved = json.loads((ckpt / "config.json").read_text())
    resolved["config"]["data"]["path"] = str(tmp_path / "data")  # a data set with its items.parquet gone
    shutil.copytree(data, tmp_path / "data")
    (tmp_path / "data" / "items.parquet").unlink()
    (ckpt / "config.json").write_text(json.dumps(resolved))
    err = _export_error([str(moved), "--out", str(tmp_path / "b")], capsys)
    assert re.search(r"data/items.parquet: items.parquet is missing; export needs the run's data set \(data.path '.*/data' "
                     rf"in the config of RUN_DIR {moved}\)", err), err
    shutil.rmtree(tmp_path / "data")
    err = _export_error([str(moved), "--out", str(tmp_path / "b")], capsys)
    assert "the data set folder is gone; export needs the run's data set" in err
