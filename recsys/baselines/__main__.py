"""The baselines of a data set without training a model: what a retrieval run prints beside its own numbers.

    .venv/bin/python -m recsys.baselines DATA [--protocol per_row|per_user] [--exclude train[,validation]]
        [--ks 10,20,50,100] [--baselines als,itemknn,popularity] [--seed 0] [--threads N]

``DATA`` is an interaction data set (``recsys ingest interactions`` / ``movielens``, ``recsys synth
interactions``). The queries, exclusions, grids, selection and metrics are exactly those of a
``recsys train`` run with the same ``model.eval_*`` / ``baselines`` settings and ``train.seed``
(:mod:`recsys.train.retrieval_eval`); the ids are ``user_id`` / ``item_id``.
"""

from __future__ import annotations

import argparse
import sys
import time

import pyarrow.parquet as pq
import torch

from recsys.baselines import BASELINES, Interactions, evaluate_baselines
from recsys.retrieval_protocols import PROTOCOLS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recsys.baselines", description=__doc__.splitlines()[0])
    p.add_argument("data", help="interaction data set folder")
    p.add_argument("--protocol", default="per_row", choices=PROTOCOLS)
    p.add_argument("--exclude", default="train", help="train | train,validation | none (default train)")
    p.add_argument("--ks", default="10,20,50,100", help="cut-offs (default 10,20,50,100)")
    p.add_argument("--baselines", default=",".join(BASELINES), help=f"comma-separated, of {sorted(BASELINES)}")
    p.add_argument("--seed", type=int, default=0, help="ALS's random state (train.seed of a run)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for the fits")
    return p


def main(argv: list[str] | None = None) -> int:
    from recsys.data import layout
    from recsys.train.retrieval_eval import RetrievalEvaluation, selection_cutoff

    args = _parser().parse_args(argv)
    exclude = () if args.exclude == "none" else tuple(x for x in args.exclude.split(",") if x)
    if exclude not in ((), ("train",), ("train", "validation")):
        print(f"--exclude: got {args.exclude!r}; allowed: train, train,validation or none", file=sys.stderr)
        return 2
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        print(f"--ks: got {args.ks!r}; give comma-separated positive integers, e.g. 10,20,100", file=sys.stderr)
        return 2
    names = [n for n in args.baselines.split(",") if n]
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not ks or min(ks) < 1:
        print(f"--baselines: got {unknown}; allowed: {sorted(BASELINES)}" if unknown else f"--ks: got {args.ks!r}; give positive cut-offs",
              file=sys.stderr)
        return 2
    try:
        spec = layout.dataset_spec(args.data)
        num_items = pq.read_metadata(layout.catalogue_path(args.data, "items")).num_rows
    except (FileNotFoundError, OSError) as exc:
        print(f"{args.data}: {exc}", file=sys.stderr)
        return 1
    files = {s: layout.split_files(args.data, s) for s in layout.SPLITS}
    evaluation = RetrievalEvaluation(files, "user_id", "item_id", int(spec.feature("user_id").cardinality), num_items, spec.timestamp)
    users, items, _ = evaluation.rows("train")
    counts = Interactions(users, items, evaluation.num_users, num_items).item_counts()
    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    results = evaluate_baselines(
        names, Interactions(users, items, evaluation.num_users, num_items),
        evaluation.queries("validation", args.protocol, exclude), evaluation.queries("test", args.protocol, exclude),
        ks=ks, select=f"recall@{selection_cutoff(ks)}", item_counts=counts, seed=args.seed, num_threads=args.threads, log=print,
    )
    head = selection_cutoff(ks)
    print(f"{args.protocol}, excluded {list(exclude)}: {len(evaluation.queries('test', args.protocol, exclude)):,} test queries, "
          f"{num_items:,} items ({time.perf_counter() - start:.1f} s)")
    for r in results.values():
        t = r.test
        print(f"  {r.label:<10} test recall@{head} {t[f'recall@{head}']:.4f} ndcg@{head} {t[f'ndcg@{head}']:.4f} "
              f"recall@{ks[0]} {t[f'recall@{ks[0]}']:.4f} mrr {t['mrr']:.4f}  (validation recall@{head} {r.validation[f'recall@{head}']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
