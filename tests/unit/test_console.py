"""recsys.console (noise filters, progress), recsys.tensorboard, and the `recsys` command's help and exit codes."""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from recsys import console
from recsys.tensorboard import Curves, read_scalars

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quiet(monkeypatch):
    """console.setup() with the logging and warnings state restored afterwards."""
    monkeypatch.delenv(console.ENV, raising=False)
    names = [n or None for n in console.LOGGER_LEVELS] + [f.logger or None for f in console.LOG_FILTERS]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    installed = dict(console._installed)  # what an earlier set-up in this process put on the loggers
    with warnings.catch_warnings():
        console.setup()
        yield
    for n, (level, filters) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.filters[:] = filters
    console._installed.clear()
    console._installed.update(installed)


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def recorded():
    """Every record that reaches the root logger's handlers (or this torch logger's: it does not propagate)."""
    handler = Recorder()
    loggers = [logging.getLogger(), logging.getLogger("torch._export.serde.serialize")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


# -- the noise ------------------------------------------------------------------------------------


def test_library_noise_is_dropped_and_library_errors_get_through(quiet, recorded):
    root = logging.getLogger()
    root.setLevel(logging.INFO)  # what Ray Train's worker logging set-up does after our hook ran
    root.info("Successfully loaded: 'fbgemm_gpu_py.so'")  # FBGEMM logs on the root logger
    root.warning("Sharding spec not found for model.sparse.embedding_bags.C6__full")
    root.warning("Trying to non-strict torch.export KJT to_dict, which is extremely slow and not recommended!")
    partitioner = logging.getLogger("torchrec.distributed.planner.partitioners")
    partitioner.info("GreedyPerfPartitioner - sort_by: SortBy.STORAGE, balance_modules: False")
    logging.getLogger("torchrec.distributed.planner.types").warning("The topology was constructed directly ...")
    logging.getLogger("torch._export.serde.serialize").warning("Symbol %s did not appear in the graph that was deserialized", "u4")
    assert recorded == []
    # What still gets through: errors, other warnings, and recsys's own loggers.
    partitioner.error("planner failed: no plan fits")
    root.warning("FBGEMM_GPU version is 1.8, which is not guaranteed to be compatible")
    logging.getLogger("torch._export.serde.serialize").warning("something else about the program")
    logging.getLogger("recsys.data").info("wrote 4,000 rows")
    assert recorded == [
        "planner failed: no plan fits",
        "FBGEMM_GPU version is 1.8, which is not guaranteed to be compatible",
        "something else about the program",
        "wrote 4,000 rows",
    ]


@pytest.mark.parametrize("noise", console.WARNING_FILTERS, ids=lambda f: f.category.__name__ + ":" + f.message[:30])
def test_each_known_warning_is_filtered_by_message_and_category(quiet, noise):
    text = noise.message.replace("\\", "").replace("^", "") + " (rest of the message)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.install_warning_filters()  # in front of "always"
        warnings.warn(text, noise.category)
        other = DeprecationWarning if noise.category is not DeprecationWarning else UserWarning
        warnings.warn(text, other)  # the same text in another category still shows
        warnings.warn("a warning recsys never saw", noise.category)
    assert [(w.category, str(w.message)) for w in caught] == [(other, text), (noise.category, "a warning recsys never saw")]


def test_verbose_shows_everything(monkeypatch, recorded):
    monkeypatch.setenv(console.ENV, "debug")
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)
        console.setup()  # verbose: touches nothing
        root.info("Successfully loaded: 'fbgemm_gpu_py.so'")
    finally:
        root.setLevel(level)
    assert recorded == ["Successfully loaded: 'fbgemm_gpu_py.so'"]
    assert console.is_verbose()
    monkeypatch.setenv(console.ENV, "")
    assert not console.is_verbose()


def test_dense_fbgemm_table_gradients_are_right_despite_the_autograd_warning():
    """The warning console silences ("may lead to silently incorrect behavior") comes from the
    data_parallel tables' FBGEMM kernel; its gradients equal a plain nn.EmbeddingBag's."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    torch.manual_seed(0)
    rows, dim = (10, 7), 4
    tbe = DenseTableBatchedEmbeddingBagsCodegen([(r, dim) for r in rows], pooling_mode=PoolingMode.SUM, use_cpu=True)
    #         b = 0        b = 1     <-- batch index
    # table0  [1, 2, 2]    [9]
    # table1  []           [0, 3, 6, 6, 1]
    indices = torch.tensor([1, 2, 2, 9, 0, 3, 6, 6, 1])
    offsets = torch.tensor([0, 3, 4, 4, 9])
    upstream = torch.randn(2, len(rows) * dim)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (tbe(indices, offsets) * upstream).sum().backward()
    messages = [str(w.message) for w in caught]
    assert any("dense_embedding_codegen_lookup_function: an autograd kernel was not registered" in m for m in messages)
    noise = next(f for f in console.WARNING_FILTERS if "dense_embedding" in f.message)
    assert any(w.category is noise.category and __import__("re").match(noise.message, str(w.message)) for w in caught)

    weights = tbe.weights.detach().split([r * dim for r in rows])
    grads = tbe.weights.grad.split([r * dim for r in rows])
    bags = [([1, 2, 2], [9]), ([], [0, 3, 6, 6, 1])]
    for t, (n, weight, grad) in enumerate(zip(rows, weights, grads)):
        reference = torch.nn.EmbeddingBag(n, dim, mode="sum")
        reference.weight.data.copy_(weight.view(n, dim))
        ids = torch.tensor([i for bag in bags[t] for i in bag], dtype=torch.long)
        starts = torch.tensor([0, len(bags[t][0])])
        (reference(ids, starts) * upstream[:, t * dim : (t + 1) * dim]).sum().backward()
        torch.testing.assert_close(grad.view(n, dim), reference.weight.grad)


# -- progress -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_have_rate_and_eta_at_most_every_interval():
    clock, out = Clock(), io.StringIO()
    bar = console.Progress(1000, "rows", "ingest", every_s=10, stream=out, bar=False, clock=clock)
    for _ in range(10):
        clock.now += 2.5  # 100 rows every 2.5 s: 40 rows/s
        bar.update(100)
    bar.close()
    assert out.getvalue().splitlines() == [
        "ingest: 400/1,000 rows (40%), 40 rows/s, ETA 0:15",
        "ingest: 800/1,000 rows (80%), 40 rows/s, ETA 0:05",
        "ingest: 1,000/1,000 rows (100%), 40 rows/s, ETA 0:00",
    ]


def test_progress_without_total_and_short_work_print_nothing_extra():
    clock, out = Clock(), io.StringIO()
    with console.Progress(None, "items", "export", every_s=10, stream=out, bar=False, clock=clock) as bar:
        clock.now = 1.0
        bar.update(5, extra="index build")
    assert out.getvalue() == ""  # done before the first interval: no line at all
    clock.now = 20.0
    assert bar.line() == "export: 5 items, 0 items/s; index build"


def test_the_bar_is_tqdm_on_a_terminal():
    out = io.StringIO()
    with console.Progress(10, "steps", "training", stream=out, bar=True) as bar:
        bar.update(10, extra="val AUC 0.71")
    text = out.getvalue()
    assert "training" in text and "10/10" in text and "val AUC 0.71" in text


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (75, "1:15"), (3725, "1:02:05"), (float("inf"), "?"), (-1, "?")])
def test_format_duration(seconds, text):
    assert console.format_duration(seconds) == text


def test_file_progress_follows_the_file(tmp_path):
    path, out = tmp_path / "progress.json", io.StringIO()
    with console.FileProgress(path, "training", every_s=0.01, stream=out) as watcher:
        path.write_text('{"step": 3, "total": 12, "samples_per_s": 2048.0, "loss": 0.5, "validation": "AUC 0.7"}')
        watcher._poll()
        path.write_text('{"step": 12, "total": 12, "samples_per_s": null, "loss": null, "validation": "AUC 0.8"}')
    assert watcher.bar is not None and watcher.bar.done == 12
    assert "12/12" in out.getvalue() and "AUC 0.8" in out.getvalue()


# -- TensorBoard ----------------------------------------------------------------------------------


def test_curves_round_trip_and_other_ranks_write_nothing(tmp_path):
    curves = Curves(tmp_path)
    curves.scalars(4, {"train/loss": 0.6314, "train/samples_per_s": 8245.0, "note": "text", "nan": float("nan")})
    curves.scalars(8, {"train/loss": 0.5655, "validation/auc": 0.71})
    curves.close()
    Curves(tmp_path / "rank1", enabled=False).scalars(4, {"train/loss": 1.0})
    assert not (tmp_path / "rank1").exists()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars.keys() == {"train/loss", "train/samples_per_s", "validation/auc"}
    assert [s for s, _ in scalars["train/loss"]] == [4, 8]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([0.6314, 0.5655])
    assert scalars["validation/auc"] == [(8, pytest.approx(0.71))]


# -- the command line -----------------------------------------------------------------------------


def job_parsers() -> dict[str, argparse.ArgumentParser]:
    from jobs import bench, bench_compression, bench_serve, export, ingest, plan, serve, synth, train

    parsers = {name: module.build_parser() for name, module in
               (("ingest", ingest), ("synth", synth), ("train", train), ("export", export), ("serve", serve), ("plan", plan), ("bench", bench))}
    for name, parser in bench_compression.build_parsers().items():
        parsers[f"bench {name}"] = parser
    parsers["bench serve"] = bench_serve.build_parser()
    return parsers


def test_help_names_every_command_and_subcommand_of_the_parsers():
    from jobs import cli

    parsers = job_parsers()
    assert {name for name in parsers if " " not in name} == set(cli.COMMANDS)
    text = cli.usage()
    for name, parser in parsers.items():
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if " " in name or not subs:
            continue
        assert list(subs[0].choices) == list(cli.SUBCOMMANDS[name]), name
        for sub in subs[0].choices:
            assert f"    {sub} " in text, (name, sub)
    assert set(cli.SUBCOMMANDS) == {n for n, p in parsers.items()
                                    if any(isinstance(a, argparse._SubParsersAction) for a in p._actions)}


def test_every_parser_ends_its_help_with_an_example():
    from jobs.cli import all_parsers

    for name, top in job_parsers().items():
        for parser in all_parsers(top):
            assert parser.epilog and "recsys " in parser.epilog, parser.prog
            assert parser.format_help().rstrip().splitlines()[-1].strip().startswith(("recsys ", "plan ")), parser.prog


def test_exit_codes(tmp_path, capsys):
    from jobs import cli

    assert cli.main(["--help"]) == 0 and "bench" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert cli.main(["trian"]) == 2 and "unknown command 'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: --out missing
        cli.main(["synth", "ctr"])
    assert usage.value.code == 2 and "--out" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "nope.yaml")]) == 1
    out = capsys.readouterr()
    assert out.err.startswith("recsys train: error: invalid training config") and "nope.yaml" in out.err
    assert "Traceback" not in out.err and out.out == ""
    # A failure that is not bad input: one line naming it, the traceback only with --verbose.
    assert cli.main(["bench", "report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsys bench") and len(err.splitlines()) == 1, err


def test_import_recsys_is_cheap():
    code = "import sys, recsys; print(sorted(m for m in ('torch', 'torchrec', 'ray', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_python_api_checks_its_input_before_any_work(tmp_path):
    import recsys

    with pytest.raises(TypeError, match="overrides: got the string 'train.epochs=1'"):
        recsys.train(ROOT / "configs" / "ctr_synthetic_full.yaml", "train.epochs=1")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        recsys.export(tmp_path / "no_run", tmp_path / "bundle")
    with pytest.raises(ValueError, match="seedz: unknown key"):
        recsys.bench_compression(ROOT / "configs" / "bench_tiny.yaml", {"seedz": [0]}, out=tmp_path / "sweep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a training run"):
        recsys.bench_compression(ROOT / "configs" / "bench_tiny.yaml", out=tmp_path / "run")
    assert not (tmp_path / "sweep").exists()
    from recsys.api import _override_list

    assert _override_list({"train.epochs": 2, "model.dense_layers": [64, 16], "run_dir": "runs/a"}) == [
        "train.epochs=2", "model.dense_layers=[64, 16]", 'run_dir="runs/a"']


def _thread_error(exc: BaseException, filename: str):
    """A threading.excepthook argument for ``exc`` raised in a function compiled from ``filename``."""
    import threading
    import types

    code = compile("def fail(exc):\n    raise exc\n", filename, "exec")
    namespace: dict = {}
    exec(code, namespace)
    try:
        namespace["fail"](exc)
    except BaseException as e:  # noqa: BLE001 - the traceback is the point
        return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__, thread=threading.current_thread())


def test_thread_hook_drops_only_the_cleaners_lost_ray_traceback(monkeypatch):
    import threading

    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    console.install_thread_excepthook()
    cleaner = ".../ray/train/v2/_internal/execution/controller/placement_group_cleaner.py"
    threading.excepthook(_thread_error(ConnectionError("Could not find any running Ray instance"), cleaner))
    assert seen == []  # the run is over; Ray is gone
    threading.excepthook(_thread_error(ValueError("a real bug"), cleaner))
    threading.excepthook(_thread_error(ConnectionError("elsewhere"), "/app/other.py"))
    assert seen == [ValueError, ConnectionError]


def test_verbose_after_a_quiet_setup_takes_the_filters_back_off(monkeypatch, recorded):
    monkeypatch.setenv(console.ENV, "")
    console.setup()  # quiet first, as any earlier command of the same process does
    monkeypatch.setenv(console.ENV, "debug")
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.INFO)
        console.setup()
        root.info("Successfully loaded: 'fbgemm_gpu_py.so'")
    finally:
        root.setLevel(level)
    assert recorded == ["Successfully loaded: 'fbgemm_gpu_py.so'"]
