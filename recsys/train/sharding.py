"""Sharding: a CTR model with compressed collections -> ``DistributedModelParallel``.

The torchrec way (as ``torchrec_dlrm/dlrm_main.py``): build the model with its lookup tables on
the ``meta`` device, register the fused table optimizer with ``apply_optimizer_in_backward`` on
the tables' parameters, plan with ``EmbeddingShardingPlanner`` for the world size, and let DMP
materialise each table shard on its rank inside FBGEMM's fused kernels. Dense parameters (MLPs,
mixed-dimension projections) are data-parallel and get a torch optimizer; both optimizers are
joined into one ``CombinedOptimizer`` so checkpoints hold both.

Sharding types on CPU: ``data_parallel``, ``table_wise``, ``column_wise``, ``table_column_wise``
(``row_wise`` and grid sharding need CUDA).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints, Stats
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingPlan
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.embeddings import CompressedEmbeddingBagCollection

__all__ = [
    "CPU_SHARDING_TYPES",
    "SHARDING_TYPES",
    "table_collections",
    "materialize_dense",
    "apply_fused_optimizer",
    "build_planner",
    "plan_sharding",
    "shard_model",
    "build_optimizer",
]

SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise", "grid_shard")
CPU_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise")
EMBEDDING_OPTIMIZERS = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
DENSE_OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def table_collections(model: nn.Module) -> list[nn.Module]:
    """The torchrec collections DMP shards: every EBC / EC in the model (inner ones of compressed
    collections included), outermost first."""
    return [m for m in model.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))]


def materialize_dense(model: nn.Module, device: torch.device) -> None:
    """Allocate and initialise what a meta-device compressed collection holds besides its EBC tables.

    DMP would allocate them too, but only calls ``reset_parameters`` on the module that owns a
    parameter directly, which skips parameters inside ``ParameterDict`` / ``ParameterList``; so
    the methods of each compressed collection are materialised here and reset by their own code.
    """
    for collection in model.modules():
        if isinstance(collection, CompressedEmbeddingBagCollection):
            collection.methods.to_empty(device=device)
            # Sharding an EmbeddingCollection copies its unsharded weights (unlike an EBC): they must exist.
            collection.embeddings.to_empty(device=device)
            collection.reset_parameters()  # skips the EBC's tables, still on meta


def apply_fused_optimizer(model: nn.Module, kind: str, lr: float, eps: float, weight_decay: float = 0.0) -> None:
    """Register the table optimizer in backward on every table parameter (before DMP).

    DMP turns it into FBGEMM's fused update (e.g. ``EXACT_ROWWISE_ADAGRAD``): a table's gradient
    is never materialised, the touched rows are updated inside the backward kernel.
    """
    cls = EMBEDDING_OPTIMIZERS[kind]
    kwargs: dict = {"lr": lr}
    if kind in ("rowwise_adagrad", "adagrad", "adam"):
        kwargs["eps"] = eps
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    params = [p for c in table_collections(model) for p in c.parameters()]
    apply_optimizer_in_backward(cls, params, kwargs)


def plan_sharding(
    model: nn.Module,
    *,
    world_size: int,
    local_world_size: int,
    compute_device: str,
    batch_size: int,
    constraints: dict[str, ParameterConstraints] | None = None,
    process_group: dist.ProcessGroup | None = None,
    hbm_cap: int | None = None,
    ddr_cap: int | None = None,
) -> ShardingPlan:
    """Plan with TorchRec's planner for this topology; every rank gets the same plan.

    Args:
        model: the unsharded model (tables on meta).
        world_size, local_world_size: ranks in all and per host.
        compute_device: ``cpu`` or ``cuda``.
        batch_size: per-rank batch size (the planner's cost model uses it).
        constraints: table name -> allowed sharding types / kernels.
        process_group: default: the world.
        hbm_cap, ddr_cap: bytes per rank; default TorchRec's (32 GiB HBM, 128 GiB DDR), so pass
            the device's real memory on GPUs larger than 32 GiB.
    """
    topology = Topology(
        world_size=world_size, local_world_size=local_world_size, compute_device=compute_device, hbm_cap=hbm_cap, ddr_cap=ddr_cap
    )
    planner = build_planner(topology, batch_size=batch_size, constraints=constraints)
    if dist.is_initialized():
        return planner.collective_plan(model, get_default_sharders(), process_group or dist.GroupMember.WORLD)
    return planner.plan(model, get_default_sharders())


def build_planner(
    topology: Topology,
    *,
    batch_size: int,
    constraints: dict[str, ParameterConstraints] | None = None,
    stats: list[Stats] | None = None,
) -> EmbeddingShardingPlanner:
    """TorchRec's planner as training runs it (default enumerator, storage reservation, proposers
    and perf model), so ``recsys plan`` simulates exactly what a training run would plan.

    Args:
        stats: planner observers; default TorchRec's ``EmbeddingStats`` (a log table).
    """
    return EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints or None, stats=stats)


def shard_model(model: nn.Module, plan: ShardingPlan, device: torch.device) -> DistributedModelParallel:
    """Wrap in DMP with the given plan (tables materialised on their ranks, dense data-parallel)."""
    return DistributedModelParallel(module=model, device=device, plan=plan, sharders=get_default_sharders())


def build_optimizer(
    model: DistributedModelParallel, kind: str, lr: float, eps: float, weight_decay: float = 0.0
) -> CombinedOptimizer:
    """The fused table optimizer and a torch optimizer over the remaining (dense) parameters."""
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters(), include=False))
    cls = DENSE_OPTIMIZERS[kind]
    kwargs: dict = {"lr": lr, "weight_decay": weight_decay}
    if kind in ("adam", "adagrad"):
        kwargs["eps"] = eps

    def make(params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        return cls(list(params), **kwargs)

    optimizers: list = [model.fused_optimizer]
    if dense_params:
        optimizers.append(KeyedOptimizerWrapper(dense_params, make))
    return CombinedOptimizer(optimizers)


def describe_plan(plan: ShardingPlan) -> list[dict]:
    """Per table: sharding type, kernel and ranks, as JSON-able rows for ``results.json``."""
    rows = []
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            ranks: Sequence[int] = ps.ranks or []
            rows.append(
                {
                    "module": module_path,
                    "table": table,
                    "sharding_type": ps.sharding_type,
                    "compute_kernel": ps.compute_kernel,
                    "ranks": list(ranks),
                }
            )
    return rows
