"""Generate the built-in synthetic data sets in the ingest layout, with their oracle metrics.

    recsys synth ctr --out data/synthetic_ctr                 # `make run`: 8,000,000 rows
    recsys synth ctr --out data/synthetic_ctr --overwrite     # `make data`: generate it again
    recsys synth ctr --out DIR [--rows N] [--seed S] [--spec features/synthetic.yaml]
    recsys synth interactions --out DIR [--rows N] [--seed S] [--users U] [--items I]
    recsys synth interactions --out DIR --split leave_last_out [--spec features/synthetic_interactions.yaml]

``ctr``: Criteo-like click logs drawn from a planted model (:mod:`recsys.data.synthetic_ctr`).
``interactions``: user-item interactions from planted latent factors for two-tower retrieval
(:mod:`recsys.data.synthetic_interactions`). Both write through :class:`DatasetWriter`, so the
output is exactly what ``recsys ingest`` writes, and record the best achievable metrics (the
oracle, computed from the true model) in ``manifest.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from jobs.ingest import catalogue_line
from recsys.data.synthetic import check_positive_int
from recsys.data.synthetic_ctr import CtrSettings, generate_ctr
from recsys.data.synthetic_interactions import InteractionSettings, generate_interactions
from recsys.features.spec import load_spec
from recsys.folders import OVERWRITE_HELP, check_dataset_out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys synth", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{ctr,interactions}")
    ctr = sub.add_parser("ctr", help="Criteo-like CTR data with a planted click model")
    ctr.add_argument("--out", required=True, help="output folder (new or empty; a synthetic ctr data set with --overwrite)")
    ctr.add_argument("--rows", type=int, default=8_000_000, help="total rows, split 80/10/10 in order (default 8000000)")
    ctr.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same data (default 0)")
    ctr.add_argument("--spec", default=None, help="feature spec YAML (default features/synthetic.yaml)")
    inter = sub.add_parser("interactions", help="user-item interactions from planted latent factors")
    inter.add_argument("--out", required=True,
                       help="output folder (new or empty; a synthetic interactions data set with --overwrite)")
    inter.add_argument("--rows", type=int, default=500_000, help="interactions, split 80/10/10 by time (default 500000)")
    inter.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same data (default 0)")
    inter.add_argument("--users", type=int, default=20_000, help="number of users (default 20000)")
    inter.add_argument("--items", type=int, default=10_000, help="number of items (default 10000)")
    inter.add_argument("--split", default="time", choices=["time", "leave_last_out"],
                       help="time: 80/10/10 by time (default); leave_last_out: per user, last -> test, previous -> validation")
    inter.add_argument("--spec", default=None,
                       help="feature spec YAML (default features/synthetic_interactions.yaml; add history_item_id for histories)")
    for p in (ctr, inter):
        p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    from jobs.cli import with_examples  # its example at the end of --help

    return with_examples(parser)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _split_table(manifest: dict[str, Any]) -> list[str]:
    lines = [f"  {'split':<11}{'rows':>12}  positives"]
    for split in ("train", "validation", "test"):
        rate = manifest.get("label_rate", {}).get(split)
        lines.append(f"  {split:<11}{manifest['rows'][split]:>12,}  {_pct(rate) if rate is not None else '-'}")
    return lines


def _vocab_line(manifest: dict[str, Any], names: list[str]) -> str:
    parts = []
    for name in names:
        v = manifest["vocab"][name]
        note = ""
        if v["size"] < v["cap"]:  # not every value was seen in train: unseen test values map to OOV
            oov = v["oov_values"]["test"] / max(v["values"]["test"], 1)
            note = f" (cap {v['cap']:,}, test OOV {_pct(oov)})"
        parts.append(f"{name} {v['size']:,}{note}")
    return "  vocab sizes (ids in [0, size), 0 = OOV): " + ", ".join(parts)


def _ctr_summary(manifest: dict[str, Any], out: str, seconds: float) -> str:
    gen = manifest["generator"]
    vocab = manifest["vocab"]
    by_cap = sorted(vocab, key=lambda n: vocab[n]["cap"])
    picks = [by_cap[round(i * (len(by_cap) - 1) / 5)] for i in range(6)] if len(by_cap) > 6 else by_cap
    s = gen["settings"]
    dense_share = max(0.0, 1 - s["main_share"] - s["cross_share"])
    crosses = ", ".join(f"{a}x{b}" for a, b in gen["crosses"]) or "none"
    lines = [
        f"done: {manifest['rows']['total']:,} rows in {seconds:.1f} s -> {out}",
        *_split_table(manifest),
        _vocab_line(manifest, list(dict.fromkeys(picks))),
        f"  planted model: logit std {s['logit_std']} = main effects {_pct(s['main_share'])} + crosses "
        f"{_pct(s['cross_share'])} ({crosses}) + dense {_pct(dense_share)}; bias {gen['bias']:.3f}",
    ]
    for key in ("oracle", "oracle_validation"):
        o = manifest[key]
        auc = f"{o['auc']:.4f}" if o["auc"] is not None else "n/a (one class)"
        lines.append(
            f"  oracle on {o['split']:<10} ({o['rows']:,} rows, true p): AUC {auc}  logloss {o['logloss']:.4f}"
        )
    return "\n".join(lines)


def _interactions_summary(manifest: dict[str, Any], out: str, seconds: float) -> str:
    gen = manifest["generator"]
    ts = manifest["split"]["timestamps"]
    lines = [
        f"done: {manifest['rows']['total']:,} rows in {seconds:.1f} s -> {out}",
        f"  {'split':<11}{'rows':>12}  timestamps (split by {manifest['split']['method']})",
    ]
    for split in ("train", "validation", "test"):
        lo, hi = ts[split]
        lines.append(f"  {split:<11}{manifest['rows'][split]:>12,}  [{lo}, {hi}]")
    lines.append(_vocab_line(manifest, [n for n in ("user_id", "user_segment", "item_id", "item_category", "item_tags")
                                        if n in manifest["vocab"]]))
    lines += [catalogue_line(name, info) for name, info in manifest.get("catalogue", {}).items()]
    s = gen["settings"]
    lines.append(
        f"  planted model: {gen['users']:,} users, {gen['items']:,} items, factors dim {s['dim']}, "
        f"P(item | user) ~ popularity * exp(<u, v> / {s['tau']})"
    )
    for key in ("oracle", "oracle_validation"):
        o = manifest[key]
        recalls = "  ".join(f"recall@{k} {v:.4f}" for k, v in o["recall"].items())
        pop = "  ".join(f"@{k} {v:.4f}" for k, v in o["popularity_recall"].items())
        lines.append(f"  oracle on {o['split']:<10} ({o['rows']:,} rows): {recalls}  (popularity only: {pop})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, generate the data set, print its summary; returns the exit code."""
    args = build_parser().parse_args(argv)
    check_dataset_out(args.out, writes=f"synthetic {args.kind}", overwrite=args.overwrite)
    check_positive_int("--rows", args.rows, 10, "train, validation and test each need rows")
    check_positive_int("--seed", args.seed, 0, "numpy seeds are non-negative")
    print(f"recsys synth {args.kind}: {args.rows:,} rows, seed {args.seed} -> {args.out}", flush=True)
    t0 = time.perf_counter()
    if args.kind == "ctr":
        spec = load_spec(args.spec) if args.spec else None
        manifest = generate_ctr(
            args.out, rows=args.rows, seed=args.seed, spec=spec, settings=CtrSettings(),
            log=lambda line: print(line, flush=True),
        )
        print(_ctr_summary(manifest, args.out, time.perf_counter() - t0))
    else:
        manifest = generate_interactions(
            args.out, rows=args.rows, seed=args.seed, users=args.users, items=args.items, split=args.split,
            spec=load_spec(args.spec) if args.spec else None,
            settings=InteractionSettings(), log=lambda line: print(line, flush=True),
        )
        print(_interactions_summary(manifest, args.out, time.perf_counter() - t0))
    return 0
