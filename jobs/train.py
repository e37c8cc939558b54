"""Train a CTR model (DLRM / DCN-v2) or a two-tower retrieval model with compressed embeddings on Ray Train.

    recsys train configs/ctr_synthetic_full.yaml
    recsys train configs/ctr_synthetic_qr.yaml ray.num_workers=2 train.epochs=1 run_dir=runs/qr
    recsys train configs/ctr_synthetic_qr.yaml ray.num_workers=2 train.epochs=1 run_dir=runs/qr resume=true
    recsys train configs/ctr_synthetic_qr.yaml ... resume=true train.epochs=2 resume_allow_changes=[train.epochs]
    RAY_ADDRESS=ray://head:10001 recsys train configs/ctr_criteo_full.yaml ray.num_workers=8
    recsys train configs/two_tower_synthetic_full.yaml

Overrides are ``dotted.key=value`` with YAML values (``model.dense_layers=[64,16]``,
``embeddings.compression.C3={kind: hashed, num_buckets: 100000}``). Everything that can fail
is checked before Ray starts (config, feature names, data columns, id ranges). The run
directory gets Ray's checkpoints and ``results.json``; its path is the last line printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys.folders import check_run_dir
from recsys.train.config import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a training config YAML (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=2 run_dir=runs/a")
    parser.add_argument("--dry-run", action="store_true", help="check config and data, print the plan, do not train")
    from jobs.cli import with_examples  # its example at the end of --help

    return with_examples(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # --dry-run before, between or after overrides
    config = load_config(args.config, args.overrides)
    if config.run_dir:  # a run resumes into its run_dir, but never writes into a data set or a sweep
        check_run_dir(config.run_dir)

    from recsys.train.run import launch, prepare

    prepared = prepare(config, config_name=Path(args.config).stem)
    plan = prepared.plan
    c = prepared.config
    print(
        f"model {c.model.arch}; {len(prepared.spec.sparse)} sparse + {len(prepared.spec.dense)} dense features; "
        f"embeddings {plan.total_bytes:,} B of {plan.full_bytes:,} B full (ratio {plan.ratio:.4f}); "
        f"{prepared.train_rows:,} training rows, batch {c.data.batch_size} over {c.ray.num_workers} worker(s)"
    )
    for note in prepared.notes:
        print(note)
    for warning in prepared.warnings:
        print(warning, file=sys.stderr, flush=True)
    if args.dry_run:
        print(plan.format())
        return 0
    results = launch(prepared)
    from recsys.train.tasks import task_for

    print(
        f"{task_for(c.model.arch).summary(results)}; memory ratio "
        f"{results['compression_ratio']:.4f} ({results['embedding_bytes']:,} B); {results['steps']} steps, "
        f"{results['samples_per_s']:,.0f} samples/s, {results['train_seconds']:.0f} s training"
    )
    print(f"run_dir: {prepared.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
