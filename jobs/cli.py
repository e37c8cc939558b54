"""The ``recsys`` command: one entry point, one subcommand per job.

    recsys synth ctr --out data/synthetic_ctr
    recsys ingest criteo train.txt --out data/criteo
    recsys train configs/ctr_synthetic_full.yaml train.epochs=2
    recsys --verbose bench loader --data data/synthetic_ctr

Each subcommand lives in ``jobs/<name>.py`` with ``main(argv) -> int``; this module only
dispatches, sets up the console (:mod:`recsys.console`: recsys's own lines only, unless
``--verbose`` / ``RECSYS_LOG=debug``) and turns errors into one line and an exit code:
0 success, 1 bad input or a failure (one line on stderr), 2 usage error (argparse),
130 interrupted. ``recsys plan`` also returns 3 when no plan fits.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "ingest": "convert raw logs (Criteo, MovieLens, Avazu, CSV, parquet, interaction logs) into the recsys data layout",
    "synth": "generate the built-in synthetic data sets (ctr, interactions)",
    "train": "train a CTR (DLRM / DCN-v2) or two-tower retrieval model with compressed embeddings on Ray Train",
    "export": "export a trained two-tower run as a serving bundle (user tower program, item vectors, index, vocabularies)",
    "serve": "serve a bundle over HTTP: POST /v1/retrieve -> top-k items (FastAPI + uvicorn)",
    "bench": "benchmarks: data loader, lookups, training speed, the compression sweep and its report, serving load",
    "plan": "TorchRec's sharding plan of a config for a simulated cluster (N GPUs / CPU ranks), no allocation",
}

# Sub-commands, one line each (tests/unit/test_console.py checks them against the parsers).
SUBCOMMANDS: dict[str, dict[str, str]] = {
    "ingest": {
        "criteo": "Criteo TSV (train.txt, day_N, .gz) or a folder of day_N files",
        "movielens": "MovieLens ml-1m / ml-100k / ml-latest folder",
        "parquet": "parquet file or folder whose columns match --spec",
        "avazu": "Avazu Kaggle CSV with its header",
        "csv": "delimited text with a header whose columns --spec names",
        "interactions": "any interaction log (CSV / TSV / parquet, RecBole, LightGCN) -> the two-tower layout",
    },
    "synth": {
        "ctr": "Criteo-like CTR data with a planted click model",
        "interactions": "user-item interactions from planted latent factors",
    },
    "bench": {
        "loader": "rows/s of pyarrow, ParquetBatchReader and Ray Data + collate",
        "lookup": "forward+backward lookups/s of each compression method at several memory budgets",
        "train": "samples/s of the training step loop vs plain TorchRec DLRM",
        "compression": "the compression sweep: methods x memory budgets -> results.parquet, report.md, pareto.png",
        "report": "rewrite report.md and pareto.png from a sweep's results.parquet",
        "serve": "serving load test: latency percentiles and QPS of a bundle over HTTP",
    },
}

# One example per parser, shown at the end of its --help (with_examples). Runnable after `make run`.
EXAMPLES: dict[str, str] = {
    "recsys": "recsys train configs/ctr_synthetic_full.yaml train.epochs=1",
    "recsys ingest": "recsys ingest criteo data/raw/train.txt --out data/criteo",
    "recsys ingest criteo": "recsys ingest criteo data/raw/train.txt --out data/criteo",
    "recsys ingest movielens": "recsys ingest movielens data/raw/ml-1m --out data/ml1m --split leave_last_out",
    "recsys ingest parquet": "recsys ingest parquet logs.parquet --spec features/synthetic.yaml --out data/mine",
    "recsys ingest avazu": "recsys ingest avazu data/raw/avazu/train.gz --out data/avazu",
    "recsys ingest csv": "recsys ingest csv clicks.csv --spec features/clicks.yaml --out data/clicks",
    "recsys ingest interactions": "recsys ingest interactions events.csv --user user_id --item item_id --out data/events",
    "recsys synth": "recsys synth ctr --out data/synthetic_ctr --rows 100000",
    "recsys synth ctr": "recsys synth ctr --out data/synthetic_ctr --rows 100000",
    "recsys synth interactions": "recsys synth interactions --out data/synthetic_interactions --rows 50000",
    "recsys train": "recsys train configs/ctr_synthetic_qr.yaml train.epochs=1 run_dir=runs/qr",
    "recsys export": "recsys export runs/two_tower --out bundles/two_tower",
    "recsys serve": "recsys serve bundles/two_tower --port 8000",
    "recsys bench": "recsys bench loader --rows 100000 --no-ray",
    "recsys bench loader": "recsys bench loader --rows 100000 --no-ray",
    "recsys bench lookup": "recsys bench lookup --methods hashed,qr --budgets 1,16",
    "recsys bench train": "recsys bench train --rows 50000 --steps 5",
    "recsys bench compression": "recsys bench compression configs/bench_quick.yaml",
    "recsys bench report": "recsys bench report runs/bench-bench_quick-20250101-120000",
    "recsys bench serve": "recsys bench serve --synthetic-items 100000 --concurrency 1,4 --seconds 5",
    "recsys plan": "recsys plan configs/ctr_synthetic_full.yaml --world-size 2 --gpu-type cpu",
}


def with_examples(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and each of its sub-parsers an epilog with its example (from ``EXAMPLES``,
    by ``prog``) unless it has one, keeping the epilog's line breaks; returns ``parser``."""
    for p in all_parsers(parser):
        example = EXAMPLES.get(p.prog)
        if example and not p.epilog:
            p.epilog = f"example:\n  {example}"
            if p.formatter_class is argparse.HelpFormatter:
                p.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and, depth first, every sub-parser under it."""
    out = [parser]
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out.extend(all_parsers(child))
    return out


def usage() -> str:
    lines = ["usage: recsys [--verbose] <command> [args]", "", "commands:"]
    for name, help_ in COMMANDS.items():
        lines.append(f"  {name:<8} {help_}")
        for sub, sub_help in SUBCOMMANDS.get(name, {}).items():
            lines.append(f"    {sub:<14} {sub_help}")
    lines += [
        "",
        "options:",
        "  --verbose   show every library line too (same as RECSYS_LOG=debug); default: recsys's own lines only",
        "",
        "exit codes: 0 success, 1 bad input or failure (one line on stderr), 2 usage error, 130 interrupted",
        "run `recsys <command> --help` for a command's arguments",
        "",
        "example:",
        f"  {EXAMPLES['recsys']}",
    ]
    return "\n".join(lines)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-error messages joined with '; ')."""
    parts = [p.strip().removeprefix("- ") for p in str(exc).splitlines() if p.strip()]
    return "; ".join(parts) or type(exc).__name__


BAD_INPUT = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, UnicodeDecodeError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from recsys import console

    verbose = False
    while argv and argv[0] in ("--verbose", "-v"):
        verbose = True
        argv = argv[1:]
    if verbose:
        console.set_verbose(True)
    console.setup()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"recsys: unknown command {command!r}; choose from {sorted(COMMANDS)} (see recsys --help)", file=sys.stderr)
        return 2
    job = importlib.import_module(f"jobs.{command}")
    try:
        return int(job.main(rest) or 0)
    except BAD_INPUT as exc:
        from recsys.features.errors import SpecError

        # A config / spec error lists every problem, one `path: got ...; allowed ...` line each.
        text = str(exc).strip() if isinstance(exc, SpecError) else one_line(exc)
        print(f"recsys {command}: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"recsys {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure that is not bad input: one line, the traceback with --verbose
        if console.is_verbose():
            raise
        # the first line only: a Ray failure's message holds the workers' whole tracebacks
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:500]
        print(f"recsys {command}: failed: {type(exc).__name__}: {first} "
              "(run `recsys --verbose ...` for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
