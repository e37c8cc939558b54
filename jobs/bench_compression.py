"""Compression benchmark: methods x memory budgets x seeds on Ray Tune, a report and a Pareto plot.

    recsys bench compression configs/bench_quick.yaml
    recsys bench compression configs/bench_quick.yaml --out runs/bench-quick seeds=[0] methods=[full,hashed]
    recsys bench compression configs/bench_ctr_synthetic.yaml --dry-run        # the plan only, nothing trains
    RAY_ADDRESS=ray://head:10001 recsys bench compression configs/bench_criteo.yaml resources.max_concurrent_trials=4
    recsys bench report runs/bench-quick                                         # report.md + pareto.png again

Overrides are ``dotted.key=value`` of the sweep config (see :mod:`recsys.train.sweep`). Each trial
is a training run in ``SWEEP_DIR/trials/<trial_id>/`` with its ``results.json``; the sweep writes
``results.parquet``, ``report.md`` and ``pareto.png``. Running the same command again continues an
interrupted sweep (without ``--out``: the newest unfinished sweep folder of the same config and
overrides): trials with a results.json are not re-run. The sweep folder is the last line printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from recsys.folders import check_sweep_dir
from recsys.train.sweep import PARQUET, load_sweep_config


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    comp = argparse.ArgumentParser(prog="recsys bench compression", description=__doc__.split("\n\n")[0])
    comp.add_argument("config", help="a sweep config YAML (configs/bench_*.yaml)")
    comp.add_argument("overrides", nargs="*", help="dotted key=value overrides of the sweep config, e.g. seeds=[0]")
    comp.add_argument("--out", default=None, help="sweep folder (default: runs/bench-<config>-<time>, or the newest unfinished one)")
    comp.add_argument("--dry-run", action="store_true", help="plan the sweep (sizes, unreachable budgets), run nothing")
    rep = argparse.ArgumentParser(prog="recsys bench report", description="Rewrite report.md and pareto.png from a sweep's results.parquet.")
    rep.add_argument("sweep_dir", help="a sweep folder holding results.parquet")
    from jobs.cli import with_examples  # its example at the end of --help

    return {"compression": with_examples(comp), "report": with_examples(rep)}


def _unfinished(stem: str, resolved: dict) -> Path | None:
    """The newest ``runs/bench-<stem>-*`` of the same resolved sweep config that has trials left."""
    for folder in sorted(Path("runs").glob(f"bench-{stem}-*"), reverse=True):
        try:
            saved = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if saved.get("sweep") != resolved:
            continue
        if not (folder / PARQUET).exists():
            return folder
        import pyarrow.parquet as pq

        if "not_run" in pq.read_table(folder / PARQUET, columns=["status"]).column("status").to_pylist():
            return folder
    return None


def compression(args: argparse.Namespace) -> int:
    from recsys.train.report import write_report
    from recsys.train.sweep import collect, plan_sweep, run_sweep, write_plan

    sweep, base = load_sweep_config(args.config, args.overrides)
    stem = Path(args.config).stem.removeprefix("bench_")
    resolved = sweep.model_dump(mode="json")
    if args.out:
        sweep_dir = Path(args.out)
    else:
        sweep_dir = _unfinished(stem, resolved) or Path("runs") / f"bench-{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_sweep_dir(sweep_dir)  # a new or empty folder, or an earlier sweep: never a run or a data set
    if (sweep_dir / "sweep.json").exists():
        print(f"continuing the sweep in {sweep_dir}: trials with a results.json are not run again")
    plans = plan_sweep(sweep, base, sweep_dir)
    by = {s: [p.trial_id for p in plans if p.status == s] for s in ("pending", "done", "unreachable", "failed")}
    print(f"task {sweep.task}: {len(plans)} trials ({len(sweep.methods)} methods x {len(sweep.budgets)} budgets x {len(sweep.seeds)} seeds, "
          f"full at budget 1 only): {len(by['pending'])} to run, {len(by['done'])} done, {len(by['unreachable'])} unreachable, "
          f"{len(by['failed'])} failed at planning")
    for p in plans:
        if p.status in ("unreachable", "failed") and p.seed == sweep.seeds[0]:
            print(f"  {p.method} at {p.budget}: {p.status}: {p.reason}")
        elif p.status in ("pending", "done") and p.seed == sweep.seeds[0]:
            solved = f"; solver at {p.solver_ratio:.4g}, the model holding a table twice" if p.solver_ratio is not None else ""
            print(f"  {p.method} at {p.budget}: ratio {p.achieved_ratio:.4f} ({p.embedding_bytes:,} B{solved})")
    if args.dry_run:
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_plan(plans, sweep_dir, sweep)
    try:
        run_sweep(sweep, base, plans, sweep_dir)
    finally:  # also after Ctrl-C: what finished is collected and reported
        collect(sweep.task, plans, sweep_dir)
        report, pareto = write_report(sweep_dir)
        print(f"wrote {sweep_dir / PARQUET}, {report}, {pareto}")
    import pyarrow.parquet as pq

    statuses = pq.read_table(sweep_dir / PARQUET, columns=["status"]).column("status").to_pylist()
    if "not_run" in statuses:
        print(f"{statuses.count('not_run')} trial(s) did not run: run the same command again to finish the sweep")
    print((sweep_dir / "report.md").read_text(encoding="utf-8").split("### Per method")[0].rstrip())
    print(f"sweep_dir: {sweep_dir.resolve()}")
    return 0


def report(args: argparse.Namespace) -> int:
    from recsys.train.report import write_report

    sweep_dir = Path(args.sweep_dir)
    if not (sweep_dir / PARQUET).exists():
        raise FileNotFoundError(f"sweep_dir: no {PARQUET} in {sweep_dir}; give a folder written by `recsys bench compression`")
    paths = write_report(sweep_dir)
    print(f"wrote {paths[0]}, {paths[1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``argv`` starts with ``compression`` or ``report`` (``recsys bench`` dispatches here)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = build_parsers()
    if not argv or argv[0] not in parsers:
        print(f"recsys bench: choose one of {sorted(parsers)}", file=sys.stderr)
        return 2
    if argv[0] == "compression":
        return compression(parsers["compression"].parse_intermixed_args(argv[1:]))  # --out before or after overrides
    return report(parsers["report"].parse_args(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
