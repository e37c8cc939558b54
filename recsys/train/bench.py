"""``recsys bench train``: samples/s of one training step loop on the Criteo schema.

    recsys bench train [--rows 200000] [--batch-size 4096] [--steps 50] [--ratio 0.0625] [--out FILE.json]

Runs, in one process and on the same in-memory batches (a Criteo-schema data set written by
``jobs.bench.write_criteo_like``), the training step (forward, backward, fused table update,
dense optimizer step) of:

1. **plain TorchRec DLRM** (``torchrec.models.dlrm.DLRM`` over a plain ``EmbeddingBagCollection``
   with full tables) - the baseline;
2. **recsys DLRM, full** (:class:`recsys.models.ctr.DLRM` over a ``CompressedEmbeddingBagCollection``
   of full tables) - the cost of the compressed-collection wrapper;
3. **recsys DLRM, each compression family** at ``--ratio`` of the full-table memory.

All are wrapped in ``DistributedModelParallel`` (world size 1, gloo) with the fused row-wise
Adagrad, as in training. Figures depend on the machine and its load: read the ratio to the
baseline of the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recsys.data.loader import ParquetBatchReader
from recsys.features.spec import DatasetSpec

FAMILIES = ("hashed", "multi_hash", "qr", "mixed_dim", "unified")


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


def _time_steps(task: nn.Module, batches: list, steps: int, warmup: int) -> dict[str, Any]:
    from recsys.train import sharding

    sharding.apply_fused_optimizer(task, "rowwise_adagrad", 0.05, 1e-8)
    plan = sharding.plan_sharding(task, world_size=1, local_world_size=1, compute_device="cpu", batch_size=batches[0].batch_size)
    model = sharding.shard_model(task, plan, torch.device("cpu"))
    optimizer = sharding.build_optimizer(model, "adam", 1e-3, 1e-8)

    def step(batch) -> None:
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(batches[i % len(batches)])
    start = time.perf_counter()
    rows = 0
    for i in range(steps):
        batch = batches[i % len(batches)]
        step(batch)
        rows += batch.batch_size
    seconds = time.perf_counter() - start
    return {"samples_per_s": rows / seconds, "steps": steps, "seconds": seconds}


def bench_train(args: argparse.Namespace) -> int:
    from jobs.bench import print_table, write_criteo_like
    from recsys.data import layout
    from recsys.embeddings import compile_plan
    from recsys.embeddings.budget import solve_budget
    from recsys.train.config import load_counts

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dense_layers, over_layers = [512, 256, 16], [512, 256, 1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "criteo_like"
        if not args.data:
            print(f"writing {args.rows:,} Criteo-schema rows to a temporary folder ...")
            write_criteo_like(root, args.rows, seed=args.seed)
        spec = layout.dataset_spec(root)
        reader = ParquetBatchReader(root, "train", spec, args.batch_size, drop_last=True)
        batches = [b for _, b in zip(range(args.max_batches), reader)]
        counts = load_counts(root, spec.sparse)
    full = compile_plan(spec)
    print(f"{len(batches)} batches of {args.batch_size} in memory; full tables {full.total_bytes:,} B")

    rows: list[dict[str, Any]] = []
    variants: list[tuple[str, Any, int]] = [
        ("torchrec DLRM (plain EBC, full)", lambda: _TorchrecDLRMTask(spec, dense_layers, over_layers), full.total_bytes),
        ("recsys DLRM, full", lambda: _recsys_task(spec, dense_layers, over_layers), full.total_bytes),
    ]
    for family in args.families:
        solved = solve_budget(spec, family, target_ratio=args.ratio, counts=counts).spec
        plan_bytes = compile_plan(solved, counts).total_bytes
        variants.append((f"recsys DLRM, {family}", lambda s=solved: _recsys_task(s, dense_layers, over_layers), plan_bytes))
    baseline = None
    for name, make, nbytes in variants:
        torch.manual_seed(0)
        result = _time_steps(make(), batches, args.steps, args.warmup)
        baseline = baseline or result["samples_per_s"]
        rows.append(
            {"model": name, "samples/s": result["samples_per_s"], "vs torchrec": result["samples_per_s"] / baseline,
             "memory ratio": nbytes / full.total_bytes}
        )
        print(f"  {name}: {result['samples_per_s']:,.0f} samples/s")
    print_table(rows, ["model", "samples/s", "vs torchrec", "memory ratio"], title="\ntraining step loop (DMP, fused row-wise Adagrad)")
    if args.out:
        layout.write_json_atomic(args.out, {"bench": "train", "batch_size": args.batch_size, "steps": args.steps, "results": rows})
        print(f"wrote {args.out}")
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="an ingested Criteo-schema data set; default: generate one")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to generate without --data (default: 200000)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per step (default: 4096)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: 5)")
    parser.add_argument("--max-batches", type=int, default=20, help="distinct batches held in memory (default: 20)")
    parser.add_argument("--ratio", type=float, default=1 / 16, help="memory ratio of the compressed variants (default: 1/16)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES, help="compression families to time")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--out", help="also write the figures to this JSON file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys bench train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    return bench_train(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
