"""Lookup throughput of every compression method at several memory budgets.

    python -m recsys.embeddings.bench lookup --out lookup.json
    python -m recsys.embeddings.bench lookup --scale 1.0 --batch 4096 --steps 20 --methods hashed,qr
    recsys bench lookup --out lookup.json          (the same, through the recsys command)

Schema: the 26 categorical Criteo (Kaggle) fields at their real cardinalities (from
``features/synthetic.yaml``), single-valued, dim 16, times ``--scale`` (default 1/8, so full tables
fit next to other work on a small machine). Ids are Zipf-like (log-uniform) per field.

For each method and budget (1, 1/4, 1/16, 1/64 of the full-table bytes) the budget solver picks
the hyperparameters, then forward + backward (+ SGD update) is timed on three paths in the SAME
process, interleaved: ``--rounds`` rounds, each timing ``--steps`` steps of every path in turn
(naive: half as many), after ``--warmup`` untimed steps per model:

- ``fused``: the compressed collection inside a single-process ``DistributedModelParallel``
  (gloo, world size 1): the physical tables run through FBGEMM's fused table-batched kernel with
  the optimizer fused into backward, as in training;
- ``fused_full``: full tables through the same DMP path (the baseline; built once, timed in every
  round next to each method);
- ``naive``: :class:`NaiveEmbeddingBagCollection` of the same method (one ``nn.EmbeddingBag`` per
  table, sparse gradients, ``torch.optim.SGD``);
- ``kernel``: the method's physical lookups alone (the sharded inner collections called on the
  already transformed physical ids, forward + fused backward): the FBGEMM kernel time of its own
  tables, the limit no transform / combine work can beat.

``vs kernel`` is the method's step over its kernel time (aim <= 1.2: transforms and combine cost
at most 20% on top of the lookups); ``limit`` is full's step over the method's kernel time, the
``vs full`` the method would reach with free transforms and combine. ``path`` says which combine
plan ran (its step kinds; "pooled order" when compiled for the sharded key order).

Lookups/s counts logical lookups (batch x features) per second, from the median time per step over
the rounds; ``vs_fused_full`` and ``vs_naive`` are the medians of the per-round ratios, so drift of
a shared machine during the run (another job's load coming and going) cancels out. Prints a table;
``--out`` writes one JSON record per method and budget.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.embeddings.budget import solve_budget
from recsys.embeddings.builder import build_embedding_collection
from recsys.embeddings.methods.registry import COMPRESSED, FAMILIES
from recsys.embeddings.naive import NaiveEmbeddingBagCollection
from recsys.features.spec import DatasetSpec, builtin_spec, spec_from_dict

METHODS = list(COMPRESSED)
BUDGETS = [1, 4, 16, 64]
# Targets vs fused full (issue 12), declared by each family (multi_hash's 0.6: 2 probes, twice the kernel work).
TARGETS = {kind: FAMILIES[kind].lookup_target for kind in COMPRESSED}


@dataclass
class Record:
    method: str
    budget: str
    target_ratio: float
    achieved_ratio: float
    bytes: int
    lookups_per_s: float
    fused_full_lookups_per_s: float
    naive_lookups_per_s: float
    vs_fused_full: float
    vs_naive: float
    target_vs_fused_full: float
    kernel_lookups_per_s: float
    vs_kernel: float
    limit_vs_fused_full: float
    combine_path: str
    notes: list[str]


def criteo_spec(scale: float) -> DatasetSpec:
    """The 26 Criteo categorical fields with Kaggle cardinalities x scale (at least 4)."""
    base = builtin_spec("synthetic")
    features = [
        {"name": f.name, "kind": "sparse", "cardinality": max(4, int(f.cardinality * scale)), "embedding_dim": 16}
        for f in base.sparse
        if f.name.startswith("C")
    ]
    return spec_from_dict({"name": "criteo_lookup", "features": features})


def make_batches(spec: DatasetSpec, batch: int, count: int, seed: int = 0) -> list[KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    names = [f.name for f in spec.sparse]
    for _ in range(count):
        values = []
        for f in spec.sparse:
            u = torch.rand(batch, generator=g, dtype=torch.float64)
            values.append((torch.pow(float(f.cardinality), u) - 1).long().clamp(0, f.cardinality - 1))
        lengths = torch.ones(batch * len(names), dtype=torch.int64)
        out.append(KeyedJaggedTensor(keys=names, values=torch.cat(values), lengths=lengths))
    return out


def _init_dist() -> None:
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)


def fused_model(spec: DatasetSpec, lr: float = 0.01):
    """The collection on the meta device, sharded (world size 1) into FBGEMM's fused kernel."""
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingEnv

    from fbgemm_gpu.split_table_batched_embeddings_ops_training import OptimType

    fused_params = {"learning_rate": lr, "optimizer": OptimType.EXACT_SGD}
    sharders = [EmbeddingBagCollectionSharder(fused_params=fused_params), EmbeddingCollectionSharder(fused_params=fused_params)]
    module = build_embedding_collection(spec, device="meta")
    pg = dist.GroupMember.WORLD
    # Every table table-wise in the fused kernel (the planner would make small tables data-parallel).
    constraints = {
        t.name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"]) for t in module.plan().tables
    }
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"), constraints=constraints)
    plan = planner.plan(module, sharders)
    model = DistributedModelParallel(module, env=ShardingEnv.from_process_group(pg), device=torch.device("cpu"), plan=plan, sharders=sharders)
    dense = [p for n, p in model.named_parameters() if "projections" in n]
    optimizer = torch.optim.SGD(dense, lr=lr) if dense else None
    return model, optimizer


def _collection(model):
    from recsys.embeddings.collection import CompressedEmbeddingBagCollection

    return next(m for m in model.modules() if isinstance(m, CompressedEmbeddingBagCollection))


def make_kernel_step(model, batches: list[KeyedJaggedTensor]):
    """Forward + fused backward of the model's physical lookups alone, on pre-transformed ids."""
    collection = _collection(model)
    physical = {id(b): collection.physical_features(b)[0] for b in batches}

    def step(kjt: KeyedJaggedTensor) -> None:
        collection.lookup_only(physical[id(kjt)]).backward()

    return step


def make_step(model, optimizer):
    """One forward + backward (+ dense optimizer step) of ``model`` on a batch."""

    def step(kjt: KeyedJaggedTensor) -> None:
        out = model(kjt).values()
        out.sum().backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def warm_up(step, batches: list[KeyedJaggedTensor], warmup: int) -> None:
    """Untimed steps: first touch of the tables, allocator and thread-pool start-up."""
    for i in range(max(warmup, len(batches))):
        step(batches[i % len(batches)])


def time_interleaved(
    paths: dict[str, tuple[object, int]], batches: list[KeyedJaggedTensor], rounds: int
) -> dict[str, list[float]]:
    """Seconds per step of each path, per round, the paths taking turns.

    ``paths`` maps a name to ``(step, steps_per_round)``. Every round times each path for its
    steps back to back, in an order rotated each round, so slow drift of the machine (another job
    starting, thermal state) hits all paths alike and ratios taken within one round are fair.
    """
    names = list(paths)
    out: dict[str, list[float]] = {n: [] for n in names}
    cursor = 0
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step, steps = paths[name]
            start = time.perf_counter()
            for _ in range(steps):
                step(batches[cursor % len(batches)])
                cursor += 1
            out[name].append((time.perf_counter() - start) / steps)
    return out


def naive_model(spec: DatasetSpec, lr: float = 0.01):
    collection = build_embedding_collection(spec)
    naive = NaiveEmbeddingBagCollection(collection, sparse=True)
    del collection
    return naive, torch.optim.SGD(naive.parameters(), lr=lr)


def run_lookup(args: argparse.Namespace) -> list[Record]:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    _init_dist()
    spec = criteo_spec(args.scale)
    batches = make_batches(spec, args.batch, 4)
    lookups = args.batch * len(spec.sparse)
    print(f"schema: {len(spec.sparse)} fields, {sum(f.cardinality for f in spec.sparse):,} rows x 16 (scale {args.scale}); "
          f"batch {args.batch}; {lookups:,} lookups per step; {torch.get_num_threads()} threads", flush=True)

    # Full tables are built once and timed again in every round next to each method: on a shared
    # machine throughput drifts during a run, so only ratios measured side by side are fair.
    full_step = make_step(*fused_model(spec))
    warm_up(full_step, batches, 2 * args.warmup)
    naive_steps = max(1, args.steps // 2)

    records = []
    for method in args.methods:
        for budget in args.budgets:
            solution = solve_budget(spec, method, target_ratio=1 / budget)
            model, optimizer = fused_model(solution.spec)
            fused_step = make_step(model, optimizer)
            kernel_step = make_kernel_step(model, batches)
            warm_up(fused_step, batches, args.warmup)
            warm_up(kernel_step, batches, max(1, args.warmup // 2))
            naive_step = make_step(*naive_model(solution.spec))
            warm_up(naive_step, batches, max(1, args.warmup // 2))
            t = time_interleaved(
                {
                    "full": (full_step, args.steps),
                    "fused": (fused_step, args.steps),
                    "kernel": (kernel_step, args.steps),
                    "naive": (naive_step, naive_steps),
                },
                batches,
                args.rounds,
            )
            path = _collection(model).combine_path()
            del fused_step, naive_step, kernel_step, model, optimizer
            fused = lookups / statistics.median(t["fused"])
            fused_full = lookups / statistics.median(t["full"])
            naive = lookups / statistics.median(t["naive"])
            # Ratios: median over rounds of the ratio within a round (robust to drift between rounds).
            vs_full = statistics.median(f / m for f, m in zip(t["full"], t["fused"]))
            vs_naive = statistics.median(n / m for n, m in zip(t["naive"], t["fused"]))
            vs_kernel = statistics.median(m / k for m, k in zip(t["fused"], t["kernel"]))
            limit = statistics.median(f / k for f, k in zip(t["full"], t["kernel"]))
            rec = Record(
                method=method,
                budget=f"1/{budget}" if budget > 1 else "1",
                target_ratio=1 / budget,
                achieved_ratio=round(solution.achieved_ratio, 5),
                bytes=solution.achieved_bytes,
                lookups_per_s=round(fused),
                fused_full_lookups_per_s=round(fused_full),
                naive_lookups_per_s=round(naive),
                vs_fused_full=round(vs_full, 3),
                vs_naive=round(vs_naive, 2),
                target_vs_fused_full=TARGETS[method],
                kernel_lookups_per_s=round(lookups / statistics.median(t["kernel"])),
                vs_kernel=round(vs_kernel, 3),
                limit_vs_fused_full=round(limit, 3),
                combine_path=path,
                notes=[n for n in solution.notes if "kept full" not in n],
            )
            records.append(rec)
            print(f"  {method:<10} {rec.budget:>5}  ratio {rec.achieved_ratio:.4f}  {fused:>12,.0f}/s  "
                  f"x{rec.vs_fused_full:.2f} of full (limit {rec.limit_vs_fused_full:.2f})  x{rec.vs_kernel:.2f} of kernel  "
                  f"x{rec.vs_naive:.1f} of naive  [{path}]", flush=True)
    return records


def format_table(records: list[Record]) -> str:
    head = (f"{'method':<10} {'budget':>6} {'ratio':>7} {'bytes':>14} {'lookups/s':>12} {'vs full':>8} {'target':>7} "
            f"{'limit':>6} {'vs kernel':>9} {'vs naive':>8}  path")
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(
            f"{r.method:<10} {r.budget:>6} {r.achieved_ratio:>7.4f} {r.bytes:>14,} {r.lookups_per_s:>12,.0f} "
            f"{r.vs_fused_full:>8.2f} {r.target_vs_fused_full:>7.1f} {r.limit_vs_fused_full:>6.2f} {r.vs_kernel:>9.2f} "
            f"{r.vs_naive:>8.1f}  {r.combine_path}"
        )
    return "\n".join(lines)


def add_lookup_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``recsys bench lookup``."""
    p.add_argument("--batch", type=int, default=4096, help="rows per batch (default: 4096)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per path and round (naive: half; default: 5)")
    p.add_argument("--rounds", type=int, default=9, help="timing rounds, paths interleaved; medians are reported (default: 9)")
    p.add_argument("--warmup", type=int, default=6, help="untimed steps per model before timing (default: 6)")
    p.add_argument("--scale", type=float, default=0.125, help="cardinality scale of the Criteo schema (1.0 = Kaggle; default 0.125)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=METHODS, help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=BUDGETS, help="1/N of full bytes (default: 1,4,16,64)")
    # One thread by default: on a small shared machine a multi-threaded kernel waits for its
    # slowest (preempted) thread, and timings swing by 10x; with one thread they stay within ~20%.
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; 0: torch's default)")
    p.add_argument("--out", type=str, default=None, help="write JSON records here")


def bench_lookup(args: argparse.Namespace) -> int:
    """Run ``recsys bench lookup`` with parsed arguments; prints the table, writes JSON."""
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown methods {unknown}; allowed {METHODS}")
    try:
        records = run_lookup(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(format_table(records))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in records], fh, indent=2)
        print(f"wrote {len(records)} records to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_lookup_arguments(sub.add_parser("lookup", help="lookups/s of each compression method at several budgets"))
    return bench_lookup(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
