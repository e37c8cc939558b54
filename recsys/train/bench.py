"""``recsys bench train``: samples/s of one training step loop on the Criteo schema.

    recsys bench train [--rows 200000] [--batch-size 4096] [--steps 5] [--rounds 7] [--ratio 0.0625] [--out FILE.json]

Runs, in one process and on the same in-memory batches (a Criteo-schema data set written by
:func:`write_criteo_like`), the training step (forward, backward, fused table update,
dense optimizer step) of:

1. **plain TorchRec DLRM** (``torchrec.models.dlrm.DLRM`` over a plain ``EmbeddingBagCollection``
   with full tables) - the baseline;
2. **recsys DLRM, full** (:class:`recsys.models.ctr.DLRM` over a ``CompressedEmbeddingBagCollection``
   of full tables) - the cost of the compressed-collection wrapper;
3. **recsys DLRM, each compression family** at ``--ratio`` of the full-table memory.

All are wrapped in ``DistributedModelParallel`` (world size 1, gloo) with the fused row-wise
Adagrad, as in training. All models are built first, then timed in ``--rounds`` rounds in which
each runs ``--steps`` steps in turn (rotating order); samples/s come from the median step time and
``vs torchrec`` is the median of the per-round ratios, so load that comes and goes cancels out.
Read the ratio to the baseline of the same run.

Each recsys model's physical lookups are also timed alone (``kernel ms``: its FBGEMM forward + fused
backward on pre-transformed ids, in the same rounds); ``limit vs full`` is recsys-full's step over
that step with full's kernel time swapped for the method's, the best the method can reach with
free transforms and combine. ``combine path`` names the compiled combine plan that ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch import nn

from recsys.data import layout
from recsys.data.loader import ParquetBatchReader
from recsys.data.writer import DatasetWriter
from recsys.embeddings.methods.registry import COMPRESSED
from recsys.features.spec import DatasetSpec, builtin_spec

FAMILIES = COMPRESSED  # every registered method but the full-table baseline


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    """Print dicts as an aligned text table; floats get thousands separators, no decimals >= 100."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


def write_criteo_like(out: Path, rows: int, *, seed: int = 0, rows_per_file: int = 100_000) -> DatasetSpec:
    """Write ``rows`` training rows in the Criteo schema: Zipf(1.2) ids, counter-like dense, 3% clicks.

    Returns:
        The resolved spec of the written data set.
    """
    spec = builtin_spec("criteo")
    rng = np.random.default_rng(seed)
    # Per-field id spaces spread like Criteo's (3 .. 10^7 distinct values).
    spaces = np.geomspace(4, 10_000_000, len(spec.sparse)).astype(np.int64)
    rng.shuffle(spaces)
    writer = DatasetWriter(out, spec, rows_per_file=rows_per_file)
    chunk = 250_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        cols: dict[str, pa.Array] = {"label": pa.array((rng.random(n) < 0.03).astype(np.float32))}
        for f in spec.dense:
            cols[f.name] = pa.array(rng.exponential(20.0, n).astype(np.float32))
        for f, space in zip(spec.sparse, spaces):
            cols[f.name] = pa.array(rng.zipf(1.2, n) % space)
        writer.add("train", pa.table(cols))
    writer.finish(source={"kind": "bench", "generator": "zipf(1.2)"}, split={"method": "all train"}, extra={"seed": seed})
    return layout.dataset_spec(out)


class _TorchrecDLRMTask(nn.Module):
    """torchrec's own DLRM + BCE, same ``(loss, logits)`` contract as :class:`CTRTask`."""

    def __init__(self, spec: DatasetSpec, dense_layers: list[int], over_layers: list[int]):
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        from torchrec.models.dlrm import DLRM

        tables = [
            EmbeddingBagConfig(
                name=f"t_{f.name}", embedding_dim=f.embedding_dim, num_embeddings=int(f.cardinality), feature_names=[f.name]
            )
            for f in spec.sparse
        ]
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        self.model = DLRM(ebc, len(spec.dense), dense_layers, over_layers)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch):
        logits = self.model(batch.dense, batch.sparse).squeeze(-1)
        return self.loss_fn(logits, batch.labels), logits.detach()


def _recsys_task(spec: DatasetSpec, dense_layers: list[int], over_layers: list[int]) -> nn.Module:
    from recsys.embeddings import build_embedding_collection
    from recsys.models.ctr import CTRTask, DLRMConfig, build_ctr_model
    from recsys.train.sharding import materialize_dense

    collection = build_embedding_collection(spec, device="meta")
    materialize_dense(collection, torch.device("cpu"))
    config = DLRMConfig(dense_layers=tuple(dense_layers), over_layers=tuple(over_layers))
    return CTRTask(build_ctr_model(config, spec, collection))


def _prepare(task: nn.Module, batch_size: int):
    """DMP (world size 1) with the fused row-wise Adagrad and Adam, as in training; returns
    ``(step function, sharded model)``."""
    from recsys.train import sharding

    sharding.apply_fused_optimizer(task, "rowwise_adagrad", 0.05, 1e-8)
    plan = sharding.plan_sharding(task, world_size=1, local_world_size=1, compute_device="cpu", batch_size=batch_size)
    model = sharding.shard_model(task, plan, torch.device("cpu"))
    optimizer = sharding.build_optimizer(model, "adam", 1e-3, 1e-8)

    def step(batch) -> None:
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, model


def _kernel_step(model: nn.Module, batches: list):
    """The model's physical lookups alone (forward + fused backward on pre-transformed ids), or
    None when the model holds no compressed collection."""
    from recsys.embeddings import CompressedEmbeddingBagCollection

    collection = next((m for m in model.modules() if isinstance(m, CompressedEmbeddingBagCollection)), None)
    if collection is None:
        return None, None
    physical = {id(b): collection.physical_features(b.sparse)[0] for b in batches}

    def step(batch) -> None:
        collection.lookup_only(physical[id(batch)]).backward()

    return step, collection


def _time_rounds(steps: dict[str, Any], batches: list, steps_per_round: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of every model, per round; models take turns (rotating order) in each round."""
    names = list(steps)
    for name in names:
        for i in range(warmup):
            steps[name](batches[i % len(batches)])
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            for i in range(steps_per_round):
                steps[name](batches[(r * steps_per_round + i) % len(batches)])
            per_round[name].append((time.perf_counter() - start) / steps_per_round)
    return per_round


def bench_train(args: argparse.Namespace) -> int:
    from recsys.data import layout
    from recsys.embeddings import compile_plan
    from recsys.embeddings.budget import solve_budget

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    dense_layers, over_layers = [512, 256, 16], [512, 256, 1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "criteo_like"
        if not args.data:
            print(f"writing {args.rows:,} Criteo-schema rows to a temporary folder ...")
            write_criteo_like(root, args.rows, seed=args.seed)
        spec = layout.dataset_spec(root)
        reader = ParquetBatchReader(root, "train", spec, args.batch_size, drop_last=True)
        batches = [b for _, b in zip(range(args.max_batches), reader)]
        counts = layout.vocab_counts(root, spec.sparse)
    full = compile_plan(spec)
    print(f"{len(batches)} batches of {args.batch_size} in memory; full tables {full.total_bytes:,} B")
    if args.precision != "fp32":  # every recsys model's rows (full included); plain TorchRec stays fp32
        spec = spec.model_copy(update={"features": [
            f.model_copy(update={"compression": f.compression.model_copy(update={"precision": args.precision})})
            if f.kind == "sparse" else f
            for f in spec.features
        ]})

    rows: list[dict[str, Any]] = []
    variants: list[tuple[str, Any, int]] = [
        ("torchrec DLRM (plain EBC, full)", lambda: _TorchrecDLRMTask(spec, dense_layers, over_layers), full.total_bytes),
        ("recsys DLRM, full", lambda: _recsys_task(spec, dense_layers, over_layers), compile_plan(spec).total_bytes),
    ]
    for family in args.families:
        solved = solve_budget(spec, family, target_ratio=args.ratio, counts=counts, precision=args.precision).spec
        plan_bytes = compile_plan(solved, counts).total_bytes
        variants.append((f"recsys DLRM, {family}", lambda s=solved: _recsys_task(s, dense_layers, over_layers), plan_bytes))
    prepared = {}
    collections = {}
    for name, make, nbytes in variants:
        torch.manual_seed(0)
        prepared[name], model = _prepare(make(), args.batch_size)
        # Each recsys model's lookups alone, timed in the same rounds: the kernel-time limit.
        kernel, collections[name] = _kernel_step(model, batches)
        if kernel is not None:
            prepared[f"{name} [kernel]"] = kernel
    print(f"timing {len(variants)} models (+ their lookups alone): {args.rounds} rounds x {args.steps} steps each, interleaved ...", flush=True)
    per_round = _time_rounds(prepared, batches, args.steps, args.rounds, args.warmup)
    base, full_name = variants[0][0], variants[1][0]
    full_kernel = statistics.median(per_round[f"{full_name} [kernel]"])
    full_step = statistics.median(per_round[full_name])
    for name, _, nbytes in variants:
        seconds = statistics.median(per_round[name])
        ratio = statistics.median(b / t for b, t in zip(per_round[base], per_round[name]))
        row = {"model": name, "samples/s": args.batch_size / seconds, "vs torchrec": ratio, "memory ratio": nbytes / full.total_bytes}
        if collections[name] is not None:
            kernel = statistics.median(per_round[f"{name} [kernel]"])
            row["vs recsys full"] = statistics.median(f / t for f, t in zip(per_round[full_name], per_round[name]))
            row["step ms"] = 1e3 * seconds
            row["kernel ms"] = 1e3 * kernel
            # The same step with this method's lookups in place of full's and nothing else added.
            row["limit vs full"] = full_step / (full_step - full_kernel + kernel)
            row["combine path"] = collections[name].combine_path()
        rows.append(row)
    columns = ["model", "samples/s", "vs torchrec", "vs recsys full", "limit vs full", "step ms", "kernel ms", "memory ratio", "combine path"]
    print_table(rows, columns, title="\ntraining step loop (DMP, fused row-wise Adagrad)")
    if args.out:
        layout.write_json_atomic(
            args.out,
            {"bench": "train", "batch_size": args.batch_size, "precision": args.precision, "steps": args.steps, "rounds": args.rounds,
             "threads": torch.get_num_threads(), "results": rows},
        )
        print(f"wrote {args.out}")
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="an ingested Criteo-schema data set; default: generate one")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to generate without --data (default: 200000)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per step (default: 4096)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and round (default: 5)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; models take turns in each (default: 7)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per model first (default: 5)")
    parser.add_argument("--max-batches", type=int, default=20, help="distinct batches held in memory (default: 20)")
    parser.add_argument("--ratio", type=float, default=1 / 16, help="memory ratio of the compressed variants (default: 1/16)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES, help="compression families to time")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                        help="row precision of every recsys model's tables, full included (default: fp32; torchrec's DLRM stays fp32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as a training worker with cpus_per_worker=1; 0: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--out", help="also write the figures to this JSON file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys bench train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    return bench_train(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
