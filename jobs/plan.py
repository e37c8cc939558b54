"""Plan a training config's sharding for a simulated cluster with TorchRec's planner (nothing allocated).

    recsys plan configs/ctr_criteo_terabyte_full.yaml --world-size 8 --gpu-type h100
    recsys plan configs/ctr_criteo_terabyte_full.yaml sharding.sharding_types=[table_row_wise] --world-size 64
    recsys plan configs/ctr_criteo_terabyte_qr_24gb.yaml --world-size 1 --gpu-type cpu --ddr-gb 24
    recsys plan configs/ctr_synthetic_full.yaml --world-size 2 --gpu-type cpu --json plan.json

The model is built on the meta device as a training worker builds it, with the config's sharding
constraints; the feature spec comes from ``data.spec`` (no data needed) or else from the data set at
``data.path``. Prints the plan per table (sharding type, kernel, ranks, bytes), memory per rank (HBM /
DDR: table shards, the planner's reservation, capacity), the planner's estimated step time and whether
it fits; a plan that does not fit names the memory tier, the shortfall and the tables that cover it.
Memory sizes are GiB per rank (``--hbm-gb`` / ``--ddr-gb`` override the GPU type's). Exit code 0 when
the plan fits, 1 when it does not (or the config is invalid).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recsys.features.spec import DatasetSpec
from recsys.train.config import TrainConfig, load_config
from recsys.train.simulate import DEVICE_PROFILES, SimulatedCluster, simulate_plan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a training config YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sharding.sharding_types=[row_wise]")
    parser.add_argument("--world-size", type=int, default=None, help="simulated ranks (default: the config's ray.num_workers)")
    parser.add_argument("--gpu-type", choices=sorted(DEVICE_PROFILES), default=None,
                        help="device of every rank (default: h100 if ray.use_gpu else cpu)")
    parser.add_argument("--hbm-gb", type=float, default=None, help="HBM per GPU rank in GiB (default: the GPU type's)")
    parser.add_argument("--ddr-gb", type=float, default=None, help="host memory per rank in GiB (default: the device type's)")
    parser.add_argument("--ranks-per-host", type=int, default=None, help="ranks per host (default: 8 GPUs, 1 CPU rank)")
    parser.add_argument("--json", type=Path, default=None, help="also write the whole report (every rank) as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    config = load_config(args.config, args.overrides)
    device = args.gpu_type or ("h100" if config.ray.use_gpu else "cpu")
    cluster = SimulatedCluster(
        DEVICE_PROFILES[device],
        world_size=args.world_size if args.world_size is not None else config.ray.num_workers,
        ranks_per_host=args.ranks_per_host,
        hbm_gib=args.hbm_gb,
        ddr_gib=args.ddr_gb,
    )
    spec, counts, notes = load_plan_spec(config)
    report = simulate_plan(config, spec, cluster, counts)
    print(f"plan {args.config}" + (f" {' '.join(args.overrides)}" if args.overrides else ""))
    for note in notes:
        print(note)
    print(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return 0 if report.fits else 1


def load_plan_spec(config: TrainConfig) -> tuple[DatasetSpec, dict[str, np.ndarray], list[str]]:
    """The resolved feature spec to plan: ``data.spec`` (no data needed) or the data set's manifest;
    vocab counts are read (from the data set) only where mixed_dim needs them."""
    from recsys.data import layout
    from recsys.features.spec import load_spec
    from recsys.train.config import resolve_spec

    root = Path(config.data.path)
    data_spec = load_spec(config.data.spec) if config.data.spec else layout.dataset_spec(root)
    kinds = {f.compression.kind for f in data_spec.sparse} | {c.kind for c in config.embeddings.compression.values()}
    budget = config.embeddings.budget
    counts: dict[str, np.ndarray] = {}
    if "mixed_dim" in kinds or (budget is not None and budget.method == "mixed_dim"):
        if not root.exists():
            raise FileNotFoundError(
                f"data.path {root}: mixed_dim sizes its blocks by id frequency, which needs the vocab counts of an "
                "ingested data set; ingest it first, or plan another method"
            )
        counts = layout.vocab_counts(root, data_spec.sparse)
    spec, notes = resolve_spec(config, data_spec, counts)
    return spec, counts, notes


if __name__ == "__main__":
    raise SystemExit(main())
