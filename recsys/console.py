"""What recsys prints: its own lines, library noise silenced at the source, progress with rate and ETA.

    from recsys import console
    console.setup()                      # once per process: the driver, each Ray worker, the service
    with console.progress(total=rows, unit="rows", desc="ingest") as bar:
        bar.update(len(chunk))

By default a command prints recsys's own lines only. Libraries (TorchRec's planner, FBGEMM, Ray
Train, torch.export) log chatty INFO lines and warnings that do not apply to how recsys calls them;
:func:`setup` silences each of them where it comes from: a logger level or a message filter on the
logger that emits it, a ``warnings`` filter matched by message *and* category, each with the
reason it is safe. Anything else, and every library ERROR, still gets through.
``recsys --verbose`` or ``RECSYS_LOG=debug`` turns all of it off (everything is shown); Ray's own
log files under ``/tmp/ray/session_*/logs`` keep everything either way.

Progress: a live bar (tqdm) when the output is a terminal, otherwise a plain line at most every
``every_s`` seconds (CI logs and files stay short).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, TextIO

ENV = "RECSYS_LOG"  # "debug" (or "verbose", "all"): show every library line
VERBOSE_VALUES = ("debug", "verbose", "all")


def is_verbose() -> bool:
    """True when ``RECSYS_LOG`` asks for every line (``recsys --verbose`` sets it)."""
    return os.environ.get(ENV, "").strip().lower() in VERBOSE_VALUES


def set_verbose(verbose: bool) -> None:
    """Set ``RECSYS_LOG`` for this process and every process it starts (Ray workers inherit it)."""
    if verbose:
        os.environ[ENV] = "debug"
        # Ray's Python loggers follow RECSYS_RAY_LOG_LEVEL (recsys.train.run); show them too.
        os.environ.setdefault("RECSYS_RAY_LOG_LEVEL", "INFO")


def ray_log_level() -> str:
    """The level recsys gives Ray's loggers: ``RECSYS_RAY_LOG_LEVEL``, else INFO when verbose, else ERROR."""
    return os.environ.get("RECSYS_RAY_LOG_LEVEL") or ("INFO" if is_verbose() else "ERROR")


# -- the noise, each with why it is safe to hide ---------------------------------------------------


@dataclass(frozen=True)
class WarningFilter:
    """A ``warnings`` filter: the message (a regex matched at its start) and the category."""

    message: str
    category: type[Warning]
    reason: str


@dataclass(frozen=True)
class LogFilter:
    """Drop records of ``logger`` whose message matches ``message`` (a regex, searched)."""

    logger: str  # "" is the root logger
    message: str
    reason: str


# Loggers held at a level. Their ERRORs still print.
LOGGER_LEVELS: dict[str, tuple[int, str]] = {
    # FBGEMM and torchrec's jagged_tensor log through the ROOT logger: "Successfully loaded:
    # 'fbgemm_gpu_*.so'" (14 lines per process) and every TBE's "[TBE=uuid] ..." argument dumps at
    # INFO. Ray Train sets the worker's root logger to INFO; WARNING is Python's default.
    "": (logging.WARNING, "FBGEMM's library-load and per-table argument lines are INFO on the root logger"),
    # The planner: "GreedyPerfPartitioner - sort_by" once per proposal (1,024 lines for a two-tower
    # run), its storage / perf report (~30 '#' lines), "Sharding Type is data_parallel, caching
    # params will be ignored", and a WARNING that the Topology was built
    # directly (recsys builds it from the worker's real world size and device, on purpose).
    "torchrec": (logging.ERROR, "TorchRec's planner and sharders narrate every proposal and table"),
    "fbgemm_gpu": (logging.ERROR, "FBGEMM's TBE construction lines"),
    # "is_fx_tracing will return true for both fx.symbolic_trace and torch.export" once per process:
    # a deprecation notice to TorchRec, which calls it; nothing recsys can change.
    "torch.fx._symbolic_trace": (logging.ERROR, "a deprecation note addressed to TorchRec"),
}

LOG_FILTERS: tuple[LogFilter, ...] = (
    LogFilter(
        "",
        r"^Sharding spec not found for ",
        # torchrec/distributed/planner/planners.py (root logger, WARNING), once per data_parallel
        # table: a replicated table has no ShardingSpec by design; the planner placed it.
        "data_parallel tables are replicated and have no ShardingSpec by design",
    ),
    LogFilter(
        "",
        r"Trying to non-strict torch\.export KJT to_dict, which is extremely slow and not recommended",
        # torchrec/sparse/jagged_tensor.py logs it (root logger, WARNING) whenever a KJT is split
        # while torch.export traces. It is about the *trace* (seconds at export), not the exported
        # program: the program a bundle serves holds no KJT and no to_dict call.
        "export-time tracing speed only; the served program has no KJT",
    ),
    LogFilter(
        "torch._export.serde.serialize",
        r"Symbol \S+ did not appear in the graph that was deserialized",
        # torch.export saves the range constraint of every symbolic size it created while tracing
        # (u4: the number of ids in a request's jagged features); sizes that the traced graph
        # specialised away have no symbol to attach to on load. The program runs every batch and
        # bag length (serving's round-trip tests load int8 bundles and compare answers).
        "a dropped range constraint of a size the graph does not use",
    ),
)

WARNING_FILTERS: tuple[WarningFilter, ...] = (
    WarningFilter(
        r"HeuristicalStorageReservation is known to cause issues",
        FutureWarning,
        # The planner's dry-run over-estimate of dense tensors: recsys plans with real tables on
        # meta and a real batch size, and its plan is checked against planned bytes in tests.
        "TorchRec's default storage reservation; recsys's plans are checked in tests",
    ),
    WarningFilter(
        r"`broadcast_buffers` is deprecated",
        FutureWarning,
        # Raised inside TorchRec's own DistributedModelParallel / sharded EBC construction.
        "a deprecation inside TorchRec's DMP, not a recsys call",
    ),
    WarningFilter(
        r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
        UserWarning,
        # The data_parallel tables' FBGEMM CPU kernel is a C++ autograd::Function registered to the
        # CPU key, not the Autograd key, so torch's fallback warns at backward. The Function does
        # record its own backward: tests/unit/test_console.py checks the gradients of a
        # data-parallel FBGEMM table against a plain nn.EmbeddingBag, so the warning does not apply.
        "the gradients are correct (tested against nn.EmbeddingBag)",
    ),
    WarningFilter(
        r"Please use DTensor instead and we are deprecating ShardedTensor",
        FutureWarning,
        # TorchRec's table-wise / column-wise sharded tables are ShardedTensors in the state dict that
        # torch.distributed.checkpoint loads on resume and when early stopping restores the best step;
        # recsys never builds one itself. The checkpoint round trips are tested bit for bit.
        "TorchRec's sharded tables, loaded by torch.distributed.checkpoint; not a recsys call",
    ),
    WarningFilter(
        r"No complete tensor found in the group! Returning the first one",
        UserWarning,
        # torch.export's weight packaging: int8 vectors and their scales are views of one storage;
        # "may cause issues when your weights are not on CPU" -- bundles are written from CPU.
        "bundle weights are always on CPU when written",
    ),
)


class _RootBelowWarning(logging.Filter):
    """Drops records below WARNING logged on the root logger itself (FBGEMM's ``logging.info``).

    A filter, not only a level: Ray Train's worker set-up (``logging.config.dictConfig``) sets the
    root logger back to INFO after :func:`setup` ran, but keeps the root logger's filters.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class _MessageFilter(logging.Filter):
    """Drops a logger's records whose message matches one of the patterns."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__("recsys.console")
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed record: let logging report it
            return True
        return not any(p.search(message) for p in self.patterns)


_installed: dict[str, logging.Filter] = {}


def _install_log_filters(filters: tuple[LogFilter, ...]) -> None:
    by_logger: dict[str, list[str]] = {}
    for f in filters:
        by_logger.setdefault(f.logger, []).append(f.message)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name or None)
        old = _installed.pop(name, None)
        if old is not None:
            logger.removeFilter(old)
        _installed[name] = _MessageFilter(patterns)
        logger.addFilter(_installed[name])


def install_warning_filters(filters: tuple[WarningFilter, ...] = WARNING_FILTERS) -> None:
    """Ignore exactly these warnings (message and category); usable inside ``warnings.catch_warnings``."""
    for f in filters:
        warnings.filterwarnings("ignore", message=f.message, category=f.category)


def setup(verbose: bool | None = None) -> None:
    """Silence the known library noise in this process (idempotent; call early, again after a
    library reconfigures logging, e.g. at the top of a Ray worker).

    Args:
        verbose: show everything; ``None`` reads ``RECSYS_LOG``.
    """
    if verbose is None:
        verbose = is_verbose()
    if verbose:
        # Verbose after a quiet set-up in the same process (a notebook, a test session): take the
        # log filters back off, so every line shows. Logger levels and warning filters stay as set.
        for name, installed in list(_installed.items()):
            logging.getLogger(None if name in ("", "<root level>") else name).removeFilter(installed)
            del _installed[name]
        return
    for name, (level, _reason) in LOGGER_LEVELS.items():
        logging.getLogger(name or None).setLevel(level)
    _install_log_filters(LOG_FILTERS)
    # Ray Tune's new console output prints "View detailed results here: <path>" and a tensorboard
    # path under /tmp/ray at every verbosity, verbose=0 included; the classic reporter honours
    # verbose=0. A sweep prints its own progress and says where its results are.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if "<root level>" not in _installed:
        _installed["<root level>"] = _RootBelowWarning("recsys.console")
        logging.getLogger().addFilter(_installed["<root level>"])
    install_warning_filters()
    # Ray Train V2 logs every report through loggers named after its files ("…/ray/train/…"),
    # outside the "ray" logger tree that ray.init's logging_config sets.
    level = ray_log_level()
    for name in list(logging.root.manager.loggerDict):
        if "ray/train" in name or name.startswith(("ray.train", "ray.tune")):
            logging.getLogger(name).setLevel(level)


def _raised_in(tb: Any, filename: str) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(filename):
            return True
        tb = tb.tb_next
    return False


def _cleaner_lost_ray(args: Any) -> bool:
    """Ray Train's placement-group cleaner actor polls the state API from a thread; when the local
    Ray shuts down at the end of a run while it polls, the lookup raises ``ConnectionError`` ("Could
    not find any running Ray instance") and the thread's traceback reaches the driver's output. The
    run is over by then and the cleaner goes with Ray, so the traceback says nothing to the user."""
    return (args.exc_type is not None and issubclass(args.exc_type, ConnectionError)
            and _raised_in(args.exc_traceback, "placement_group_cleaner.py"))


def install_thread_excepthook() -> None:
    """Drop only :func:`_cleaner_lost_ray`'s traceback; every other thread's error is printed as before."""
    import threading

    if getattr(threading.excepthook, "_recsys", False):
        return
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if not _cleaner_lost_ray(args):
            previous(args)

    hook._recsys = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: :func:`setup` in every worker process of the job before
    it imports TorchRec / FBGEMM (their import-time lines come before ``train_worker`` runs)."""
    setup()
    if not is_verbose():
        install_thread_excepthook()


def ray_runtime_env() -> dict[str, Any]:
    """The job-level ``runtime_env`` for ``ray.init``: the set-up hook (Ray runs it only for a
    job's runtime_env, not an actor's), and ``RECSYS_LOG`` when set."""
    env: dict[str, Any] = {"worker_process_setup_hook": "recsys.console.setup_worker"}
    if os.environ.get(ENV):
        env["env_vars"] = {ENV: os.environ[ENV]}
    return env


def worker_runtime_env() -> dict[str, Any] | None:
    """Ray Train's ``worker_runtime_env``: ``RECSYS_LOG`` passed on when set (a Ray instance started
    before ``--verbose`` was given does not have it in its environment)."""
    return {"env_vars": {ENV: os.environ[ENV]}} if os.environ.get(ENV) else None


def say(message: str = "", *, err: bool = False) -> None:
    """One line of recsys's own output (through tqdm when a bar is live, so the bar stays intact)."""
    stream = sys.stderr if err else sys.stdout
    if _live_bars:
        from tqdm import tqdm

        tqdm.write(message, file=stream)
    else:
        print(message, file=stream, flush=True)


# -- progress -------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``75 -> '1:15'``, ``3725 -> '1:02:05'``; ``'?'`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(done: float, total: float | None, elapsed: float) -> float:
    """Seconds left at the mean rate so far (``inf`` when nothing is done or the total is unknown)."""
    if not total or done <= 0 or elapsed <= 0:
        return math.inf
    return max(total - done, 0) * elapsed / done


def progress_line(desc: str, done: float, total: float | None, unit: str, rate: float, eta: float, extra: str = "") -> str:
    """``'ingest: 40,000/100,000 rows (40%), 8,000 rows/s, ETA 0:07'`` (+ ``; extra``)."""
    amount = f"{done:,.0f}/{total:,.0f} {unit} ({100 * done / total:.0f}%)" if total else f"{done:,.0f} {unit}"
    line = f"{desc}: {amount}, {rate:,.0f} {unit}/s"
    if total:
        line += f", ETA {format_duration(eta)}"
    return f"{line}; {extra}" if extra else line


_live_bars: list[Any] = []


class Progress:
    """Rate and ETA of long work: a tqdm bar on a terminal, a plain line every ``every_s`` otherwise.

    Args:
        total: the amount of work (``None``: unknown, no ETA).
        unit: what is counted (``rows``, ``items``, ``trials``).
        desc: what is being done (the line's prefix).
        every_s: seconds between plain lines (default 10).
        stream: where to write (default ``sys.stdout``).
        bar: force the bar on (True) or off (False); default: when ``stream`` is a terminal.
    """

    def __init__(
        self, total: float | None, unit: str, desc: str, *, every_s: float = 10.0, stream: TextIO | None = None,
        bar: bool | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.unit, self.desc, self.every_s = total, unit, desc, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.start = self.last_line = clock()
        self.done: float = 0  # an int while the counts are ints (tqdm prints 12/12, not 12.0/12)
        self.extra = ""
        self.closed = False
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)()) and not os.environ.get("CI")
        self._bar = None
        if bar:
            from tqdm import tqdm

            # 1.2M rows reads better than 1234567 rows; 12/120 steps better than 12.0/120
            scale = total is None or total >= 10_000
            self._bar = tqdm(total=total, unit=f" {unit}", desc=desc, file=self.stream, dynamic_ncols=True,
                             unit_scale=scale, leave=True)
            _live_bars.append(self._bar)

    def rate(self) -> float:
        elapsed = self.clock() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        elapsed = self.clock() - self.start
        return progress_line(self.desc, self.done, self.total, self.unit, self.rate(),
                             eta_seconds(self.done, self.total, elapsed), self.extra)

    def update(self, n: float = 1, *, extra: str | None = None) -> None:
        """Count ``n`` more; ``extra`` replaces the note after the numbers (e.g. the last metric)."""
        self.done += n
        if extra is not None:
            self.extra = extra
        if self._bar is not None:
            if extra is not None:
                self._bar.set_postfix_str(extra, refresh=False)
            self._bar.update(n)
            return
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(), file=self.stream, flush=True)

    def set(self, done: float, *, total: float | None = None, extra: str | None = None) -> None:
        """Move to an absolute count (e.g. from a file another process writes)."""
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        self.update(done - self.done, extra=extra)

    def close(self, *, final_line: bool = True) -> None:
        """End the bar; in line mode print the final line (when at least one line was due)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            _live_bars.remove(self._bar)
        elif final_line and self.clock() - self.start >= self.every_s:
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(final_line=exc[0] is None)


def progress(total: float | None, unit: str, desc: str, **kwargs: Any) -> Progress:
    """A :class:`Progress` (context manager)."""
    return Progress(total, unit, desc, **kwargs)


def use_bar(stream: TextIO | None = None) -> bool:
    """Whether progress is a live bar: the stream is a terminal, not verbose, not ``CI``."""
    stream = stream if stream is not None else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and not is_verbose() and not os.environ.get("CI")


class FileProgress:
    """A bar on the driver fed by a JSON file another process rewrites (``{"step", "total",
    "samples_per_s", "validation"}``; training's rank 0 writes ``progress.json``).

    A thread reads the file every ``every_s`` seconds; nothing is shown until it first appears.
    """

    def __init__(self, path: str | os.PathLike, desc: str, unit: str = "steps", *, every_s: float = 0.5,
                 stream: TextIO | None = None) -> None:
        import threading

        self.path, self.desc, self.unit, self.every_s, self.stream = path, desc, unit, every_s, stream
        self.bar: Progress | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recsys-progress", daemon=True)

    def _poll(self) -> None:
        import json

        try:
            with open(self.path) as f:
                row = json.load(f)
        except (OSError, ValueError):  # not written yet, or being replaced
            return
        if self.bar is None:
            self.bar = Progress(row.get("total"), self.unit, self.desc, stream=self.stream, bar=True)
        parts = []
        if row.get("samples_per_s"):
            parts.append(f"{row['samples_per_s']:,.0f} samples/s")
        if row.get("loss") is not None:
            parts.append(f"loss {row['loss']:.4f}")
        if row.get("validation"):
            parts.append(f"val {row['validation']}")
        self.bar.set(row.get("step", 0), total=row.get("total"), extra=", ".join(parts))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._poll()

    def __enter__(self) -> "FileProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        if self.bar is not None:
            self.bar.close()
