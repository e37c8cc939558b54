"""Plan a training config's sharding for a simulated cluster with TorchRec's planner (nothing allocated).

    recsys plan configs/ctr_criteo_terabyte_full.yaml --world-size 8 --gpu-type h100
    recsys plan configs/ctr_criteo_terabyte_full.yaml sharding.sharding_types=[table_row_wise] --world-size 64
    recsys plan configs/ctr_criteo_terabyte_qr_24gb.yaml --world-size 1 --gpu-type cpu --ddr-gb 24
    recsys plan configs/ctr_synthetic_full.yaml --world-size 2 --gpu-type cpu --json plan.json
    recsys plan configs/two_tower_synthetic_full.yaml --world-size 8 --gpu-type a100
    recsys plan configs/bench_quick.yaml --world-size 4     # a sweep config: its base, full tables

The model is built on the meta device as a training worker builds it, with the config's sharding
constraints. The feature spec is the one training would read: ``data.spec`` when the config names
one, else the data set's manifest at ``data.path``; when no data set is there, ``data.source_spec``
(the spec the data set is ingested / generated from, which every shipped config names), so no data
is needed to plan. Prints the plan per table (sharding type, kernel, ranks, bytes), memory per rank
(HBM / DDR: table shards, the planner's reservation, capacity), the planner's estimated step time
and whether it fits; a plan that does not fit names the memory tier, the shortfall and the tables
that cover it. Memory sizes are GiB per rank (``--hbm-gb`` / ``--ddr-gb`` override the GPU type's).

Exit codes: 0 the plan fits; 1 an error (invalid config or spec, one line); 2 a usage error (a bad
flag, one line, before any planning); 3 the planner found no plan that fits the simulated cluster.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from recsys.features.spec import DatasetSpec
from recsys.train.config import TrainConfig, load_config
from recsys.train.simulate import DEVICE_PROFILES, SimulatedCluster, simulate_plan

EXIT_FITS, EXIT_ERROR, EXIT_USAGE, EXIT_NO_FIT = 0, 1, 2, 3


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as ONE line on stderr (exit 2), not the usage block plus the line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="recsys plan", description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 fits, 1 error, 2 usage error, 3 no plan fits. "
               "Example: recsys plan configs/ctr_synthetic_full.yaml --world-size 2 --gpu-type cpu",
    )
    parser.add_argument("config", help="a training config YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sharding.sharding_types=[row_wise]")
    parser.add_argument("--world-size", type=int, default=None,
                        help="simulated ranks, >= 1, dividing data.batch_size (default: the config's ray.num_workers)")
    parser.add_argument("--gpu-type", choices=sorted(DEVICE_PROFILES), default=None,
                        help="device of every rank (default: h100 if ray.use_gpu else cpu)")
    parser.add_argument("--hbm-gb", type=float, default=None,
                        help="HBM per GPU rank in GiB, >= 0; GPU types only (default: the GPU type's)")
    parser.add_argument("--ddr-gb", type=float, default=None, help="host memory per rank in GiB, >= 0 (default: the device type's)")
    parser.add_argument("--ranks-per-host", type=int, default=None,
                        help="ranks per host, 1 .. world size (default: 8 GPUs, 1 CPU rank)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the whole report (every rank) as JSON to this file (its folder must exist)")
    from jobs.cli import with_examples  # its example at the end of --help

    return with_examples(parser)


def check_flags(args: argparse.Namespace) -> list[str]:
    """Every flag that can be checked without the config; one ``--flag: got ...; allowed ...`` line each."""
    problems = []
    if args.world_size is not None and args.world_size < 1:
        problems.append(f"--world-size: got {args.world_size}; give at least 1 rank")
    if args.ranks_per_host is not None and args.ranks_per_host < 1:
        problems.append(f"--ranks-per-host: got {args.ranks_per_host}; give at least 1 rank per host")
    elif args.ranks_per_host is not None and args.world_size is not None and args.ranks_per_host > args.world_size:
        problems.append(f"--ranks-per-host: got {args.ranks_per_host}; give 1 .. --world-size ({args.world_size})")
    for flag, value in (("--hbm-gb", args.hbm_gb), ("--ddr-gb", args.ddr_gb)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            problems.append(f"{flag}: got {value:g}; give a size in GiB >= 0")
    if args.gpu_type == "cpu" and args.hbm_gb:
        problems.append(f"--hbm-gb: got {args.hbm_gb:g} for --gpu-type cpu, whose ranks have no HBM; give --ddr-gb, or a GPU type")
    if args.json is not None:
        problems.extend(check_writable_file("--json", args.json))
    return problems


def check_writable_file(flag: str, path: Path) -> list[str]:
    """A file we will write at the end: checked now, so a long plan never ends in a failed write."""
    if path.is_dir():
        return [f"{flag}: got {path}, which is a folder; give a file path such as {path / 'plan.json'}"]
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return [f"{flag}: got {path}; its folder {parent} does not exist: create it first"]
    existed = path.exists()
    try:  # a real open, not os.access: also right for root and on read-only file systems
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        return [f"{flag}: got {path}; cannot write there ({exc.strerror or type(exc).__name__})"]
    if not existed:
        path.unlink(missing_ok=True)
    return []


def check_world_size(config: TrainConfig, world_size: int, from_flag: bool) -> str | None:
    """The check ``recsys train`` makes: the GLOBAL batch splits evenly over the ranks."""
    batch = config.data.batch_size
    if batch % world_size == 0:
        return None
    lower = batch - batch % world_size
    where = f"--world-size {world_size}" if from_flag else f"ray.num_workers {world_size}"
    return (f"data.batch_size: got {batch}; it is the GLOBAL batch and must divide by {where} "
            f"(e.g. data.batch_size={lower} or {lower + world_size}, or a world size that divides {batch})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    problems = check_flags(args)
    if problems:
        parser.error("; ".join(problems))  # exit 2, one line, before the config is even read
    config, config_notes = load_plan_config(args.config, args.overrides)
    device = args.gpu_type or ("h100" if config.ray.use_gpu else "cpu")
    world_size = args.world_size if args.world_size is not None else config.ray.num_workers
    problem = check_world_size(config, world_size, args.world_size is not None)
    if problem is not None:
        if args.world_size is not None:
            parser.error(problem)
        raise ValueError(problem)
    if args.ranks_per_host is not None and args.ranks_per_host > world_size:
        parser.error(f"--ranks-per-host: got {args.ranks_per_host}; give 1 .. the world size ({world_size}, ray.num_workers)")
    if args.hbm_gb and DEVICE_PROFILES[device].compute_device == "cpu":
        parser.error(f"--hbm-gb: got {args.hbm_gb:g} for CPU ranks (ray.use_gpu is false), which have no HBM; "
                     "give --ddr-gb, or --gpu-type h100 / a100")
    cluster = SimulatedCluster(DEVICE_PROFILES[device], world_size=world_size, ranks_per_host=args.ranks_per_host,
                               hbm_gib=args.hbm_gb, ddr_gib=args.ddr_gb)
    config, spec, counts, notes = plan_inputs(config)
    report = simulate_plan(config, spec, cluster, counts)
    print(f"plan {args.config}" + (f" {' '.join(args.overrides)}" if args.overrides else ""))
    for note in config_notes + notes:
        print(note)
    print(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return EXIT_FITS if report.fits else EXIT_NO_FIT


def load_plan_config(path: str, overrides: list[str]) -> tuple[TrainConfig, list[str]]:
    """A training config, or a sweep config's base training config (with the sweep's data and
    ``base.overrides``; full tables, as the sweep's reference trial), and a note saying which."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raw = None  # load_config reports it
    if isinstance(raw, dict) and "base" in raw and "methods" in raw:
        from recsys.train.sweep_config import load_sweep_config

        sweep, base = load_sweep_config(path, overrides)
        return base, [f"note: {path} is a sweep config (recsys bench compression): planning its base training config "
                      f"{sweep.base.config} with base.overrides and data.path {sweep.data.path}, full tables (the sweep's "
                      "reference; each trial compresses them to its budget)"]
    return load_config(path, overrides), []


def plan_inputs(config: TrainConfig) -> tuple[TrainConfig, DatasetSpec, dict[str, np.ndarray], list[str]]:
    """The config, resolved spec, counts and notes to plan with, with or without the data set.

    Without the data set, a two-tower model's logQ correction cannot read the item counts
    (``frequency_estimate`` counts / auto): it is planned with the streaming estimator instead,
    whose dense buffers are as small; the tables and their sharding are the same.
    """
    from recsys.data import layout

    spec, counts, notes = load_plan_spec(config)
    model = config.model
    if (getattr(model, "logq_correction", False) and getattr(model, "frequency_estimate", None) in ("auto", "counts")
            and not (Path(config.data.path) / layout.MANIFEST).is_file()):
        config = config.model_copy(update={"model": model.model_copy(update={"frequency_estimate": "streaming"})})
        notes.append("note: logQ item frequencies planned with model.frequency_estimate=streaming (no data set to count items in)")
    return config, spec, counts, notes


def load_plan_spec(config: TrainConfig) -> tuple[DatasetSpec, dict[str, np.ndarray], list[str]]:
    """The resolved feature spec to plan, as training would read it, and notes on where it came from.

    ``data.spec`` when named (training reads it too), else the data set's manifest at ``data.path``,
    else ``data.source_spec`` (no data set needed). Vocab counts are read from the data set only
    where mixed_dim needs them; without a data set mixed_dim sizes its blocks by a Zipf(1) law.

    Raises:
        FileNotFoundError: no data set at ``data.path`` and neither ``data.spec`` nor ``data.source_spec``.
    """
    from recsys.data import layout
    from recsys.features.spec import load_spec
    from recsys.train.config import resolve_spec
    from recsys.embeddings.methods.registry import needs_counts

    root = Path(config.data.path)
    have_data = (root / layout.MANIFEST).is_file()
    notes: list[str] = []
    if config.data.spec:
        data_spec = load_spec(config.data.spec)
    elif have_data:
        data_spec = layout.dataset_spec(root)
    elif config.data.source_spec:
        data_spec = load_spec(config.data.source_spec)
        notes.append(f"note: no data set at data.path {root}: planning from data.source_spec {config.data.source_spec}, "
                     "whose cardinalities are caps (an upper bound on the vocabularies an ingest writes)")
    else:
        raise FileNotFoundError(
            f"data.path {root}: no data set there ({layout.MANIFEST} missing), and the config names no spec to plan "
            "from: ingest the data set, or set data.source_spec=features/<name>.yaml (the spec it is ingested from)"
        )
    kinds = {f.compression.kind for f in data_spec.sparse} | {c.kind for c in config.embeddings.compression.values()}
    budget = config.embeddings.budget
    counts: dict[str, np.ndarray] = {}
    if needs_counts(kinds, budget.method if budget is not None else None):
        if have_data:
            counts = layout.vocab_counts(root, data_spec.sparse)
        else:
            notes.append("note: mixed_dim blocks sized by a Zipf(1) popularity law (no vocab counts without the data set)")
    spec, solver_notes = resolve_spec(config, data_spec, counts)
    return spec, counts, notes + solver_notes


if __name__ == "__main__":
    raise SystemExit(main())
