"""A sweep's ``report.md`` and ``pareto.png``, from its ``results.parquet`` alone.

    recsys bench report SWEEP_DIR

Both files are deterministic functions of the parquet file (no timestamps, fixed figure size and
dpi, no software tag in the PNG), so regenerating them gives byte-identical files.

Per task, ``report.md`` holds: the primary metric as a method x budget grid (mean ± standard
deviation over seeds); a row per (budget, method) with both metrics, the change against full
tables (``ΔAUC``: the method's mean minus full's, negative is worse), exact embedding bytes, the
achieved ratio, training samples/s and lookups/s; the best method per budget, marked ``≈`` when its
lead over the runner-up is within the seed spread (no larger than the larger of the two standard
deviations; never with one seed); and every trial that did not finish, with its reason. Where a
metric has an oracle (:attr:`Metric.oracle`, e.g. the planted model's recall on synthetic
interactions) and the trials recorded it, the report names it next to full tables and the plot
draws it as a dotted line.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.embeddings.methods.registry import FAMILIES
from recsys.train.sweep import PARQUET, TASKS, Metric, Task

REPORT = "report.md"
PARETO = "pareto.png"
# Fixed colours per method, so a method looks the same in every sweep's plot.
COLOURS = {kind: fam.colour for kind, fam in FAMILIES.items()}


@dataclass(frozen=True)
class Cell:
    """One (method, budget): its ok trials' metrics over seeds."""

    method: str
    budget: str
    ratio: float  # target
    values: dict[str, list[float]]
    rows: list[dict[str, Any]]  # every trial, ok or not

    def mean(self, name: str) -> float | None:
        v = self.values.get(name) or []
        return statistics.fmean(v) if v else None

    def std(self, name: str) -> float | None:
        v = self.values.get(name) or []
        return statistics.stdev(v) if len(v) >= 2 else None

    def first(self, name: str) -> Any:
        return next((r[name] for r in self.rows if r["status"] == "ok" and r[name] is not None), None)

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def status(self) -> str:
        """What to show when no trial is ok: the first non-ok status."""
        return next((r["status"] for r in self.rows if r["status"] != "ok"), "ok")


def read_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(sweep_dir) / PARQUET).to_pylist()


def cells(rows: list[dict[str, Any]], task: Task) -> tuple[list[str], list[tuple[str, float]], dict[tuple[str, str], Cell]]:
    """Methods (in order of appearance), budgets (largest first) and the cells of one task."""
    methods: list[str] = []
    budgets: dict[str, float] = {}
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
        budgets.setdefault(r["budget"], r["target_ratio"])
        grouped.setdefault((r["method"], r["budget"]), []).append(r)
    out = {}
    for key, group in grouped.items():
        values = {m.name: [r[m.name] for r in group if r["status"] == "ok" and _finite(r[m.name])] for m in task.metrics}
        out[key] = Cell(key[0], key[1], group[0]["target_ratio"], values, group)
    order = sorted(budgets.items(), key=lambda kv: -kv[1])
    return methods, order, out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pm(cell: Cell | None, name: str) -> str:
    if cell is None:
        return "—"
    mean = cell.mean(name)
    if mean is None:
        return cell.status
    std = cell.std(name)
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if _finite(x) else "—"


def oracle_value(rows: list[dict[str, Any]], metric: Metric) -> float | None:
    """The data set's oracle value of ``metric`` (the same in every trial that has it), if any."""
    if metric.oracle is None:
        return None
    return next((r[metric.oracle] for r in rows if _finite(r.get(metric.oracle))), None)


def _better(m: Metric, a: float, b: float) -> bool:
    return a > b if m.higher_is_better else a < b


def best_per_budget(methods, budgets, table, task: Task) -> list[dict[str, Any]]:
    """Per budget: the best method by the primary metric's mean, the runner-up and whether it is a tie within spread."""
    m = task.primary
    out = []
    for budget, _ in budgets:
        ranked = [table[(meth, budget)] for meth in methods if (meth, budget) in table and table[(meth, budget)].mean(m.name) is not None]
        ranked.sort(key=lambda c: c.mean(m.name), reverse=m.higher_is_better)
        if not ranked:
            continue
        best = ranked[0]
        row = {"budget": budget, "best": best, "runner_up": ranked[1] if len(ranked) > 1 else None, "tie": False}
        if row["runner_up"] is not None:
            spreads = [s for s in (best.std(m.name), row["runner_up"].std(m.name)) if s is not None]
            gap = abs(best.mean(m.name) - row["runner_up"].mean(m.name))
            row["gap"] = gap
            row["tie"] = len(spreads) == 2 and gap <= max(spreads)
        out.append(row)
    return out


def format_report(rows: list[dict[str, Any]]) -> str:
    """``report.md`` as text (deterministic in ``rows``)."""
    lines = ["# Compression benchmark", ""]
    tasks = []
    for r in rows:
        if r["task"] not in tasks:
            tasks.append(r["task"])
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "unreachable", "not_run")}
    seeds = sorted({r["seed"] for r in rows})
    lines.append(f"{len(rows)} trials: {counts['ok']} ok, {counts['failed']} failed, {counts['unreachable']} unreachable, "
                 f"{counts['not_run']} not run; seeds {seeds}. Regenerate with `recsys bench report SWEEP_DIR`.")
    if counts["not_run"]:
        lines.append("")
        lines.append(f"**Partial sweep**: {counts['not_run']} trial(s) did not run; run the same `recsys bench compression` "
                     "command again to finish it.")
    for name in tasks:
        lines += [""] + _task_section(TASKS[name], [r for r in rows if r["task"] == name])
    return "\n".join(lines) + "\n"


def _task_section(task: Task, rows: list[dict[str, Any]]) -> list[str]:
    methods, budgets, table = cells(rows, task)
    m = task.primary
    full = table.get(("full", "1"))
    ref = full.mean(m.name) if full is not None else None
    out = [f"## Task `{task.name}`", ""]
    if full is not None and ref is not None:
        out.append(f"Full tables: {m.label} {_pm(full, m.name)}, {_num(full.first('embedding_bytes'), ',')} B.")
        out.append("")
    oracles = [(x, oracle_value(rows, x)) for x in task.metrics]
    if any(v is not None for _, v in oracles):
        out.append("Oracle (the data set's planted model, the ceiling): "
                   + ", ".join(f"{x.label} {v:.4f}" for x, v in oracles if v is not None) + ".")
        out.append("")
    out += [f"### {m.label} (mean ± std over seeds): method x budget", ""]
    out.append("| method | " + " | ".join(b for b, _ in budgets) + " |")
    out.append("|---|" + "---:|" * len(budgets))
    for meth in methods:
        out.append(f"| {meth} | " + " | ".join(_pm(table.get((meth, b)), m.name) for b, _ in budgets) + " |")
    out += ["", "### Per method and budget", ""]
    labels = [x.label for x in task.metrics]
    delta = f"Δ{m.label} vs full"
    out.append("| budget | method | seeds ok | " + " | ".join(labels) + f" | {delta} | bytes | ratio | samples/s | lookups/s | train s | wall s |")
    out.append("|---|---|---:|" + "---:|" * (len(labels) + 7))
    for b, _ in budgets:
        for meth in methods:
            cell = table.get((meth, b))
            if cell is None:
                continue
            mean = cell.mean(m.name)
            d = f"{mean - ref:+.4f}" if mean is not None and ref is not None and meth != "full" else "—"
            ratio = cell.first("achieved_ratio") if cell.ok else cell.rows[0]["achieved_ratio"]
            nbytes = cell.first("embedding_bytes") if cell.ok else cell.rows[0]["embedding_bytes"]
            sps = statistics.fmean([r["samples_per_s"] for r in cell.rows if r["status"] == "ok" and _finite(r["samples_per_s"])] or [math.nan])
            lps = statistics.fmean([r["lookups_per_s"] for r in cell.rows if r["status"] == "ok" and _finite(r["lookups_per_s"])] or [math.nan])
            tr = statistics.fmean([r["train_seconds"] for r in cell.rows if r["status"] == "ok" and _finite(r["train_seconds"])] or [math.nan])
            wall = statistics.fmean([r["wall_seconds"] for r in cell.rows if r["status"] == "ok" and _finite(r["wall_seconds"])] or [math.nan])
            out.append(
                f"| {b} | {meth} | {cell.ok}/{len(cell.rows)} | " + " | ".join(_pm(cell, x.name) for x in task.metrics)
                + f" | {d} | {_num(nbytes, ',')} | {_num(ratio, '.4f')} | {_num(sps, ',.0f')} | {_num(lps, ',.0f')} "
                f"| {_num(tr, '.1f')} | {_num(wall, '.1f')} |"
            )
    out += ["", f"### Best method per budget (by {m.label})", ""]
    out.append(f"| budget | best | {m.label} | runner-up | {m.label} | lead |")
    out.append("|---|---|---:|---|---:|---:|")
    for row in best_per_budget(methods, budgets, table, task):
        best, run = row["best"], row["runner_up"]
        mark = " ≈" if row["tie"] else ""
        if run is None:
            out.append(f"| {row['budget']} | {best.method} | {_pm(best, m.name)} | — | — | — |")
        else:
            out.append(f"| {row['budget']} | {best.method}{mark} | {_pm(best, m.name)} | {run.method} | {_pm(run, m.name)} | {row['gap']:.4f} |")
    out += ["", "`≈`: the lead is within the seed spread (no larger than the larger standard deviation of the two); "
            "with one seed there is no spread and no mark."]
    missing = [r for r in rows if r["status"] != "ok"]
    if missing:
        out += ["", "### Trials without results", "", "| trial | status | reason |", "|---|---|---|"]
        for r in missing:
            reason = (r["reason"] or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| {r['trial_id']} | {r['status']} | {reason} |")
    return out


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> None:
    """Quality vs embedding bytes (log x), one line per method with seed spread, full as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    tasks = []
    for r in rows:
        if r["task"] not in tasks:
            tasks.append(r["task"])
    panels = [(TASKS[t], metric) for t in tasks for metric in TASKS[t].metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.5), squeeze=False)
    for ax, (task, metric) in zip(axes[0], panels):
        methods, budgets, table = cells([r for r in rows if r["task"] == task.name], task)
        full = table.get(("full", "1"))
        for meth in methods:
            pts = []
            for b, _ in budgets:
                cell = table.get((meth, b))
                if cell is None or cell.mean(metric.name) is None:
                    continue
                pts.append((cell.first("embedding_bytes"), cell.mean(metric.name), cell.std(metric.name) or 0.0))
            if not pts or meth == "full":
                continue
            pts.sort()
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=meth, color=COLOURS.get(meth))
        if full is not None and full.mean(metric.name) is not None:
            mean, std = full.mean(metric.name), full.std(metric.name) or 0.0
            ax.axhline(mean, color=COLOURS["full"], linestyle="--", linewidth=1, label="full tables")
            if std:
                ax.axhspan(mean - std, mean + std, color=COLOURS["full"], alpha=0.08, linewidth=0)
        oracle = oracle_value([r for r in rows if r["task"] == task.name], metric)
        if oracle is not None:
            ax.axhline(oracle, color="#7f7f7f", linestyle=":", linewidth=1.2, label="oracle")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
        ax.set_xlabel("embedding bytes (log)")
        ax.set_ylabel(f"test {metric.label} ({'higher' if metric.higher_is_better else 'lower'} is better)")
        ax.set_title(f"{task.name}: {metric.label} vs memory (mean ± std over seeds)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_report(sweep_dir: str | Path) -> tuple[Path, Path]:
    """(Re)write ``report.md`` and ``pareto.png`` from ``results.parquet``; returns their paths."""
    sweep_dir = Path(sweep_dir)
    rows = read_rows(sweep_dir)
    report = sweep_dir / REPORT
    report.write_text(format_report(rows), encoding="utf-8")
    pareto = sweep_dir / PARETO
    plot_pareto(rows, pareto)
    return report, pareto
