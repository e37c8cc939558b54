"""The ``recsys`` command: one entry point, one subcommand per job.

    recsys synth ctr --out data/synthetic_ctr
    recsys ingest criteo train.txt --out data/criteo
    recsys train configs/ctr_synthetic_full.yaml train.epochs=2
    recsys bench loader --data data/synthetic_ctr

Each subcommand lives in ``jobs/<name>.py`` with ``main(argv) -> int``; this module only
dispatches and turns bad-input errors into a one-line reason and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, str] = {
    "ingest": "convert Criteo TSV / MovieLens / parquet into the recsys data layout",
    "synth": "generate the built-in synthetic data sets (ctr, interactions)",
    "train": "train a CTR (DLRM / DCN-v2) or two-tower retrieval model with compressed embeddings on Ray Train",
    "bench": "benchmarks that print figures (loader, lookup, train)",
    "export": "export a trained two-tower run as a serving bundle (user tower program, item vectors, index, vocabularies)",
    "serve": "serve a bundle over HTTP: POST /v1/retrieve -> top-k items (FastAPI + uvicorn)",
    "plan": "TorchRec's sharding plan of a config for a simulated cluster (N GPUs / CPU ranks), no allocation",
}

USAGE = "usage: recsys <command> [args]\n\ncommands:\n" + "\n".join(
    f"  {name:<8} {help_}" for name, help_ in COMMANDS.items()
) + "\n\nrun `recsys <command> --help` for a command's arguments"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-error messages joined with '; ')."""
    parts = [p.strip().removeprefix("- ") for p in str(exc).splitlines() if p.strip()]
    return "; ".join(parts) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"recsys: unknown command {command!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    job = importlib.import_module(f"jobs.{command}")
    try:
        return int(job.main(rest) or 0)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        from recsys.features.errors import SpecError

        # A config / spec error lists every problem, one `path: got ...; allowed ...` line each.
        text = str(exc).strip() if isinstance(exc, SpecError) else one_line(exc)
        print(f"recsys {command}: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
