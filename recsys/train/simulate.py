"""Cluster-size plans by simulation: TorchRec's planner for N simulated ranks, nothing allocated.

    recsys plan configs/ctr_criteo_terabyte_full.yaml --world-size 64 --gpu-type h100

The model is built exactly as a training worker builds it (:func:`recsys.train.loop.build_task`,
here on the ``meta`` device, with the fused table optimizer registered so the planner counts its
state), constrained exactly as training constrains it (:func:`recsys.train.loop.constraints_for`),
and planned by the same planner (:func:`recsys.train.sharding.build_planner`) for a
:class:`SimulatedCluster` of N ranks. TorchRec's planner only needs a ``Topology`` (memory per rank,
bandwidths), not the devices, so GPU plans run on a CPU-only machine.

The report (:class:`ClusterPlan`) holds, per table, the sharding type, kernel, ranks and bytes the
planner's storage estimator gives its shards (weights + optimizer state + buffers); per rank the
table bytes, what the planner reserves (dense parameters x6, input batches, 15% of HBM) and the
capacity; and the planner's step-time estimate (its ``NoopPerfModel``: the busiest rank's sum of
embedding forward / backward compute and communication; dense layers are not included). A plan that
cannot fit is diagnosed per memory tier: the shortfall in bytes and the largest tables that cover it.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchrec.distributed.planner.types import PlannerError, PlannerErrorType, ShardingOption, Stats, Storage, Topology

from recsys.embeddings import EmbeddingPlan
from recsys.features.spec import DatasetSpec
from recsys.train.config import ConfigError, TrainConfig

__all__ = ["DEVICE_PROFILES", "DeviceProfile", "SimulatedCluster", "ClusterPlan", "TablePlacement", "RankUsage", "Shortfall", "simulate_plan"]

GIB = 1 << 30  # TorchRec counts memory in GiB (its ``bytes_to_gb``); so do the ``--hbm-gb`` flags


def _gbps(gb_per_s: float) -> float:
    """GB/s (10^9 B/s, as vendors quote bandwidth) -> TorchRec's bytes per millisecond."""
    return gb_per_s * 1e9 / 1000


@dataclass(frozen=True)
class DeviceProfile:
    """One rank's hardware as the planner sees it (vendor figures; memory in GiB, bandwidth in GB/s).

    Attributes:
        compute_device: ``cuda`` or ``cpu`` (TorchRec's topology kind).
        hbm_gib: device memory per rank (0 for CPU ranks).
        ddr_gib: host memory per rank (UVM kernels on GPUs, all tables on CPU).
        hbm_bw, ddr_bw, hbm_to_ddr_bw: memory bandwidths.
        intra_host_bw, inter_host_bw: communication bandwidth per rank within and across hosts.
        ranks_per_host: default ranks per host.
    """

    name: str
    compute_device: str
    hbm_gib: float
    ddr_gib: float
    hbm_bw: float
    ddr_bw: float
    hbm_to_ddr_bw: float
    intra_host_bw: float
    inter_host_bw: float
    ranks_per_host: int


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    # DGX H100: 8 x H100 SXM 80 GB (HBM3 3.35 TB/s), NVLink 4 (900 GB/s), one 400 Gb/s NIC per GPU,
    # 2 TB host memory (256 GiB per rank), PCIe Gen5 to the host.
    "h100": DeviceProfile("h100", "cuda", 80, 256, 3350, 51, 64, 900, 50, 8),
    # DGX A100: 8 x A100 SXM 80 GB (HBM2e 2.0 TB/s), NVLink 3 (600 GB/s), one 200 Gb/s NIC per GPU,
    # 1 TB host memory (128 GiB per rank), PCIe Gen4.
    "a100": DeviceProfile("a100", "cuda", 80, 128, 2039, 51, 32, 600, 25, 8),
    # One CPU rank per machine (gloo), tables in DDR; bandwidths as TorchRec's defaults (100 Gb/s network).
    "cpu": DeviceProfile("cpu", "cpu", 0, 64, 897, 51, 32, 600, 12.5, 1),
}


@dataclass(frozen=True)
class SimulatedCluster:
    """N ranks of one device profile, with optional memory overrides (GiB per rank)."""

    profile: DeviceProfile
    world_size: int
    ranks_per_host: int | None = None
    hbm_gib: float | None = None
    ddr_gib: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.world_size < 1:
            problems.append(f"world size: got {self.world_size}; give at least 1 rank")
        if self.ranks_per_host is not None and not 1 <= self.ranks_per_host <= max(self.world_size, 1):
            problems.append(f"ranks per host: got {self.ranks_per_host}; give 1 .. world size ({self.world_size})")
        for name, value in (("hbm", self.hbm_gib), ("ddr", self.ddr_gib)):
            if value is not None and value < 0:
                problems.append(f"{name} GB: got {value}; give a size >= 0")
        if self.profile.compute_device == "cpu" and self.hbm_gib:
            problems.append(f"hbm GB: got {self.hbm_gib} for CPU ranks, which have no HBM; give --ddr-gb, or a GPU type")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def local_world_size(self) -> int:
        return self.ranks_per_host or min(self.profile.ranks_per_host, self.world_size)

    @property
    def hbm_bytes(self) -> int:
        return int((self.profile.hbm_gib if self.hbm_gib is None else self.hbm_gib) * GIB)

    @property
    def ddr_bytes(self) -> int:
        return int((self.profile.ddr_gib if self.ddr_gib is None else self.ddr_gib) * GIB)

    def describe(self) -> str:
        hosts = -(-self.world_size // self.local_world_size)
        memory = f"{self.ddr_bytes / GIB:g} GiB DDR"
        if self.profile.compute_device == "cuda":
            memory = f"{self.hbm_bytes / GIB:g} GiB HBM + " + memory
        return f"{self.world_size} x {self.profile.name} ({hosts} host(s) of {self.local_world_size}; {memory} per rank)"

    def topology(self) -> Topology:
        """TorchRec's ``Topology``, built the way TorchRec recommends (``TopologyFactory``)."""
        from torchrec.distributed.planner.types import HardwareConfig, KernelConfig, TopologyFactory, TrainerConfig

        p = self.profile
        hardware = HardwareConfig(
            hbm_cap_bytes=self.hbm_bytes if p.compute_device == "cuda" else None,
            ddr_cap_bytes=self.ddr_bytes,
            hbm_mem_bw=_gbps(p.hbm_bw),
            ddr_mem_bw=_gbps(p.ddr_bw),
            hbm_to_ddr_mem_bw=_gbps(p.hbm_to_ddr_bw),
            intra_host_bw=_gbps(p.intra_host_bw),
            inter_host_bw=_gbps(p.inter_host_bw),
        )
        trainer = TrainerConfig(world_size=self.world_size, local_world_size=self.local_world_size)
        return TopologyFactory.create_topology(trainer, hardware, KernelConfig(compute_device=p.compute_device))


@dataclass(frozen=True)
class TablePlacement:
    """One table in the plan: how it is sharded and what its shards take (all shards together)."""

    table: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    ranks: tuple[int, ...]
    hbm_bytes: int
    ddr_bytes: int
    step_ms: float  # sum over its shards of the planner's perf estimate


@dataclass(frozen=True)
class RankUsage:
    """One rank: its table shards, the planner's reservation, its capacity, its estimated time."""

    rank: int
    table_hbm: int
    table_ddr: int
    reserved_hbm: int
    reserved_ddr: int
    capacity_hbm: int
    capacity_ddr: int
    step_ms: float
    compute_ms: float
    comms_ms: float


@dataclass(frozen=True)
class Shortfall:
    """Why no plan fits, in one memory tier: needed vs available (after reservation), and the
    largest tables (each in its smallest sharding option) that together cover the gap."""

    tier: str  # "HBM" or "DDR"
    needed: int
    available: int
    tables: tuple[tuple[str, int], ...]
    per_rank: tuple[tuple[str, int, int], ...] = ()  # (table, smallest shard, one rank's space) when no rank can hold it
    # "tables": the tables' lower bound exceeds the room left after the reservation (all ranks);
    # "reservation": the planner's reservation alone exceeds one rank's memory, before any table.
    kind: str = "tables"
    reserved_parts: tuple[tuple[str, int], ...] = ()  # for "reservation": what the planner reserves, per rank

    @property
    def over_by(self) -> int:
        return self.needed - self.available


@dataclass(frozen=True)
class ClusterPlan:
    """The planner's answer for one simulated cluster (see the module docstring)."""

    cluster: SimulatedCluster
    batch_size: int  # per rank
    embedding_plan: EmbeddingPlan
    fits: bool
    tables: tuple[TablePlacement, ...] = ()
    ranks: tuple[RankUsage, ...] = ()
    shortfalls: tuple[Shortfall, ...] = ()
    reason: str = ""  # the planner's own reason when it found no plan
    memory_short: bool = False  # TorchRec's reason is insufficient storage (not constraints)
    planner_seconds: float = 0.0
    num_proposals: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def step_ms(self) -> float:
        """The planner's rating: the busiest rank's estimated embedding time per step."""
        return max((r.step_ms for r in self.ranks), default=float("nan"))

    @property
    def sharding_mix(self) -> dict[str, int]:
        return dict(Counter(t.sharding_type for t in self.tables).most_common())

    def format(self) -> str:
        return "\n".join(_format(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": {"device": self.cluster.profile.name, "world_size": self.cluster.world_size,
                        "ranks_per_host": self.cluster.local_world_size,
                        "hbm_bytes": self.cluster.hbm_bytes if self.cluster.profile.compute_device == "cuda" else 0,
                        "ddr_bytes": self.cluster.ddr_bytes},
            "batch_size_per_rank": self.batch_size,
            "embedding_bytes": self.embedding_plan.total_bytes,
            "full_table_bytes": self.embedding_plan.full_bytes,
            "compression_ratio": self.embedding_plan.ratio,
            "fits": self.fits,
            "step_ms": self.step_ms if self.fits else None,
            "sharding_mix": self.sharding_mix,
            "tables": [t.__dict__ | {"ranks": list(t.ranks)} for t in self.tables],
            "ranks": [r.__dict__ for r in self.ranks],
            "shortfalls": [s.__dict__ | {"over_by": s.over_by, "tables": [list(t) for t in s.tables],
                                          "per_rank": [list(t) for t in s.per_rank],
                                          "reserved_parts": [list(t) for t in s.reserved_parts]} for s in self.shortfalls],
            "reason": self.reason,
            "memory_short": self.memory_short,
            "planner_seconds": self.planner_seconds,
            "notes": list(self.notes),
        }


class _Recorder(Stats):
    """Keeps what the planner reports at the end of ``plan`` (the chosen or last tried proposal)."""

    def __init__(self) -> None:
        self.called = False
        self.best_plan: list[ShardingOption] = []
        self.reserved: Topology | None = None
        self.enumerator: Any = None
        self.num_proposals = 0

    def log(self, sharding_plan, topology, batch_size, storage_reservation, num_proposals, num_plans, run_time,
            best_plan, constraints=None, sharders=None, enumerator=None, debug=False, debug_stats=None) -> None:
        self.called = True
        self.best_plan = list(best_plan)
        self.reserved = getattr(storage_reservation, "last_reserved_topology", None)
        self.enumerator = enumerator
        self.num_proposals = num_proposals


def simulate_plan(
    config: TrainConfig,
    spec: DatasetSpec,
    cluster: SimulatedCluster,
    counts: dict[str, np.ndarray] | None = None,
) -> ClusterPlan:
    """Plan ``config``'s model (built from the resolved ``spec``) for ``cluster``; allocates nothing.

    Args:
        config: the training config (its model, optimizer, batch size and sharding constraints).
        spec: the resolved feature spec (``recsys.train.config.resolve_spec``).
        cluster: the simulated ranks.
        counts: vocab counts, only for mixed-dimension features.

    Raises:
        ConfigError: ``sharding.tables`` names a table the plan does not have; CUDA-only sharding
            types on a CPU cluster.
        ValueError: the model config does not fit the spec (e.g. DLRM dims).
    """
    from torchrec.distributed.sharding_plan import get_default_sharders

    from recsys.train import sharding
    from recsys.train.loop import build_task, constraints_for
    from recsys.train.tasks import task_for

    task = build_task(config, spec, counts, torch.device("meta"))
    emb = config.optimizer.embedding
    sharding.apply_fused_optimizer(task, emb.kind, emb.lr, emb.eps, emb.weight_decay)
    # The task's plan, as `recsys train` reports it: a two-tower model holds one collection per tower.
    embedding_plan = task_for(config.model.arch, config.data.path).plan(spec, counts, config.model)
    names = [t.name for t in embedding_plan.tables]
    _check_sharding(config, names, cluster)
    per_value = {t.name for t in embedding_plan.tables if t.per_value}
    batch = max(1, config.data.batch_size // cluster.world_size)
    topology = cluster.topology()
    recorder = _Recorder()
    sharders = get_default_sharders()
    start = time.perf_counter()
    with _quiet_planner():
        planner = sharding.build_planner(topology, batch_size=batch, constraints=constraints_for(config, names, per_value), stats=[recorder])
        try:
            planner.plan(task, sharders)
            error = None
        except PlannerError as exc:
            error = exc
    seconds = time.perf_counter() - start
    rows = {t.name: t for t in embedding_plan.tables}
    common = dict(cluster=cluster, batch_size=batch, embedding_plan=embedding_plan, planner_seconds=seconds,
                  num_proposals=recorder.num_proposals, notes=tuple(embedding_plan.notes))
    if error is None:
        tables, ranks = _placements(recorder.best_plan, rows, topology, recorder.reserved or topology)
        return ClusterPlan(fits=True, tables=tables, ranks=ranks, **common)
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].strip().rstrip(".")
    memory_short = getattr(error, "error_type", None) == PlannerErrorType.INSUFFICIENT_STORAGE
    shortfalls: tuple[Shortfall, ...] = ()
    if recorder.called and recorder.enumerator is not None and recorder.reserved is not None:
        with _quiet_planner():
            options = recorder.enumerator.enumerate(module=task, sharders=sharders)
        shortfalls = _reservation_shortfall(getattr(planner, "_storage_reservation", None), topology, recorder.reserved, cluster)
        shortfalls = shortfalls or _shortfalls(options, recorder.reserved, cluster.profile.compute_device)
    elif memory_short:  # the reservation itself failed: no proposal was ever made
        shortfalls = _reservation_shortfall(getattr(planner, "_storage_reservation", None), topology, None, cluster)
    return ClusterPlan(fits=False, shortfalls=shortfalls, reason=reason, memory_short=memory_short, **common)


def _reservation_shortfall(reservation: Any, topology: Topology, reserved: Topology | None, cluster: SimulatedCluster) -> tuple[Shortfall, ...]:
    """What TorchRec's storage reservation takes from one rank before any table, where it leaves
    the rank no room (its ``HeuristicalStorageReservation``: a share of HBM, dense parameters x
    a multiplier, and the input batches); ``reserved``: the topology after it, where it was made."""
    gpu = cluster.profile.compute_device == "cuda"
    tier, field_ = ("HBM", "hbm") if gpu else ("DDR", "ddr")
    capacity = getattr(topology.devices[0].storage, field_)
    if reserved is not None and getattr(reserved.devices[0].storage, field_) > 0:
        return ()
    parts = []
    percentage = getattr(reservation, "_percentage", None)
    if percentage is not None:
        parts.append((f"{percentage:.0%} of {tier}", int(percentage * capacity)))
    for label, storage in (("dense parameters and their optimizer state", getattr(reservation, "_dense_storage", None)),
                           ("input batches (KJTs)", getattr(reservation, "_kjt_storage", None))):
        if storage is not None:
            parts.append((label, int(getattr(storage, field_))))
    needed = sum(size for _, size in parts)
    if reserved is not None:
        needed = capacity - getattr(reserved.devices[0].storage, field_)
    if not parts or needed < capacity or (needed == capacity and reserved is None):
        return ()
    return (Shortfall(tier, int(needed), int(capacity), (), kind="reservation", reserved_parts=tuple(parts)),)


def _check_sharding(config: TrainConfig, tables: list[str], cluster: SimulatedCluster) -> None:
    """The checks ``recsys train`` makes before training, for this cluster's device kind."""
    from recsys.train.sharding import CPU_SHARDING_TYPES

    errors = [
        f"sharding.tables.{name}: no such table; tables of this plan: {sorted(tables)}"
        for name in config.sharding.tables
        if name not in tables
    ]
    if cluster.profile.compute_device == "cpu":
        types = set(config.sharding.sharding_types) | {t for c in config.sharding.tables.values() for t in (c.sharding_types or [])}
        cuda_only = sorted(types - set(CPU_SHARDING_TYPES))
        if cuda_only:
            errors.append(
                f"sharding: {cuda_only} need CUDA; plan for a GPU type (--gpu-type h100 / a100), or on CPU "
                f"use {list(CPU_SHARDING_TYPES)} (e.g. sharding.sharding_types=[table_wise])"
            )
    if errors:
        raise ConfigError("sharding", errors)


def _no_spec_for_data_parallel(record: logging.LogRecord) -> bool:
    """TorchRec's plan check warns on the root logger for every table without a sharding spec,
    which is every data-parallel table (replicated, so it has none by design): one line per table."""
    return not record.getMessage().startswith("Sharding spec not found for ")


class _quiet_planner:
    """TorchRec's planner warns about dry runs (the point here) and logs every proposal."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", FutureWarning)
        self._logger = logging.getLogger("torchrec.distributed.planner")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        logging.getLogger().addFilter(_no_spec_for_data_parallel)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(_no_spec_for_data_parallel)
        self._logger.setLevel(self._level)
        self._warnings.__exit__(*exc)


def _placements(best_plan: list[ShardingOption], rows: dict, topology: Topology, reserved: Topology) -> tuple[tuple[TablePlacement, ...], tuple[RankUsage, ...]]:
    world = topology.world_size
    per_rank = [[0, 0, 0.0, 0.0, 0.0] for _ in range(world)]  # hbm, ddr, total, compute, comms
    tables = []
    for option in best_plan:
        hbm = ddr = 0
        ms = 0.0
        ranks = []
        for shard in option.shards:
            storage = shard.storage or Storage(0, 0)
            hbm, ddr = hbm + storage.hbm, ddr + storage.ddr
            rank = int(shard.rank)
            ranks.append(rank)
            perf = shard.perf
            total = perf.total if perf else 0.0
            ms += total
            acc = per_rank[rank]
            acc[0] += storage.hbm
            acc[1] += storage.ddr
            acc[2] += total
            if perf:
                acc[3] += perf.fwd_compute + perf.bwd_compute + perf.prefetch_compute
                acc[4] += perf.fwd_comms + perf.bwd_comms
        spec = rows.get(option.name)
        num_rows, dim = (spec.num_embeddings, spec.embedding_dim) if spec else tuple(option.tensor.shape)
        tables.append(TablePlacement(option.name, int(num_rows), int(dim), option.sharding_type, option.compute_kernel,
                                     tuple(sorted(set(ranks))), hbm, ddr, ms))
    usage = []
    for r in range(world):
        cap = topology.devices[r].storage
        left = reserved.devices[r].storage
        hbm, ddr, total, compute, comms = per_rank[r]
        usage.append(RankUsage(r, int(hbm), int(ddr), cap.hbm - left.hbm, cap.ddr - left.ddr, cap.hbm, cap.ddr, total, compute, comms))
    return tuple(tables), tuple(usage)


def _shortfalls(options: list[ShardingOption], reserved: Topology, compute_device: str) -> tuple[Shortfall, ...]:
    """Lower bounds per memory tier against what the ranks have left after the reservation.

    Every table must take at least its smallest option's bytes in a tier (HBM: fused kernels need
    it, UVM kernels little; DDR: the reverse), and at least its smallest total footprint in HBM and
    DDR together; a tier whose sum of these exceeds the ranks' room cannot fit, whatever the planner
    tries. A table whose smallest shard exceeds one rank's room cannot fit either.
    """
    tiers: tuple[tuple[str, tuple[str, ...]], ...] = (
        (("HBM", ("hbm",)), ("DDR", ("ddr",)), ("HBM+DDR", ("hbm", "ddr"))) if compute_device == "cuda" else (("DDR", ("ddr",)),)
    )
    by_table: dict[str, list[ShardingOption]] = {}
    for option in options:
        by_table.setdefault(option.name, []).append(option)

    def size(storage: Storage | None, fields: tuple[str, ...]) -> int:
        return sum(getattr(storage, f) for f in fields) if storage is not None else 0

    out = []
    for label, fields in tiers:
        available = sum(size(d.storage, fields) for d in reserved.devices)
        one_rank = max(size(d.storage, fields) for d in reserved.devices)
        least = {name: min(sum(size(s.storage, fields) for s in o.shards) for o in opts) for name, opts in by_table.items()}
        needed = sum(least.values())
        too_big = []
        for name, opts in by_table.items():
            shard = min(max(size(s.storage, fields) for s in o.shards) for o in opts)
            if shard > one_rank:
                too_big.append((name, int(shard), int(one_rank)))
        if needed <= available and not too_big:
            continue
        cover, acc = [], 0
        for name, bytes_ in sorted(least.items(), key=lambda x: -x[1]):
            if acc >= needed - available or bytes_ == 0:
                break
            cover.append((name, int(bytes_)))
            acc += bytes_
        out.append(Shortfall(label, int(needed), int(available), tuple(cover), tuple(sorted(too_big, key=lambda x: -x[1]))))
    return tuple(out)


# -- text -------------------------------------------------------------------------------------


def _gib(n: float) -> str:
    return f"{n / GIB:,.2f} GiB"


def _size(n: float) -> str:
    """GiB, or MiB below 1 GiB (a reservation short by a few MiB must not read "over by 0.00 GiB")."""
    return _gib(n) if abs(n) >= GIB else f"{n / (1 << 20):,.1f} MiB"


def _ranks(ranks: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``0-2,5``."""
    parts, start, prev = [], None, None
    for r in ranks:
        if start is None:
            start = prev = r
        elif r == prev + 1:
            prev = r
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = r
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def _columns(rows: list[tuple[str, ...]], right: set[int] = frozenset()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def _format(plan: ClusterPlan) -> list[str]:
    ep = plan.embedding_plan
    gpu = plan.cluster.profile.compute_device == "cuda"
    lines = [
        f"cluster: {plan.cluster.describe()}; batch {plan.batch_size} per rank",
        f"embeddings: {len(ep.tables)} tables, {sum(t.num_embeddings for t in ep.tables):,} rows, {_gib(ep.total_bytes)} "
        f"of weights (ratio {ep.ratio:.4f} of full tables, {_gib(ep.full_bytes)})",
        f"planner: {plan.num_proposals} proposals in {plan.planner_seconds:.1f} s",
        "",
    ]
    if plan.fits:
        rows = [("table", "rows", "dim", "sharding", "kernel", "ranks", "HBM", "DDR")]
        rows += [(t.table, f"{t.rows:,}", str(t.dim), t.sharding_type, t.compute_kernel, _ranks(t.ranks),
                  _gib(t.hbm_bytes), _gib(t.ddr_bytes)) for t in plan.tables]
        lines += _columns(rows, right={1, 2, 6, 7}) + [""]
        lines += _rank_lines(plan, gpu)
        mix = ", ".join(f"{n} {kind}" for kind, n in plan.sharding_mix.items())
        kernels = ", ".join(f"{n} {k}" for k, n in Counter(t.compute_kernel for t in plan.tables).most_common())
        busiest = max(plan.ranks, key=lambda r: r.step_ms)
        lines += [
            "",
            f"sharding mix: {mix} (kernels: {kernels})",
            f"memory per rank: {_memory_summary(plan, gpu)}",
            f"estimated step time: {plan.step_ms:.3f} ms (planner's embedding estimate on the busiest rank {busiest.rank}: "
            f"compute {busiest.compute_ms:.3f} ms, comms {busiest.comms_ms:.3f} ms; dense layers not included)",
            "fits: yes",
        ]
    else:
        lines.append(f"fits: NO ({plan.reason})")
        for s in plan.shortfalls:
            if s.kind == "reservation":
                parts = ", ".join(f"{label} {_size(size)}" for label, size in s.reserved_parts)
                lines.append(
                    f"  {s.tier}: memory is short before any table: the planner reserves {_size(s.needed)} per rank "
                    f"({parts}), one rank has {_size(s.available)}: over by {_size(s.over_by)}"
                )
                flag = "--hbm-gb" if s.tier == "HBM" else "--ddr-gb"
                lines.append(f"  give more {s.tier} per rank ({flag}), or a smaller batch per rank (more ranks or a smaller data.batch_size)")
                return lines
            if s.over_by > 0:
                covered = ", ".join(f"{name} {_gib(size)}" for name, size in s.tables[:8])
                covered += f" and {len(s.tables) - 8} more" if len(s.tables) > 8 else ""
                lines.append(
                    f"  {s.tier}: the tables need at least {_gib(s.needed)} over all ranks, {_gib(s.available)} are left "
                    f"after the planner's reservation: over by {_gib(s.over_by)}"
                )
                lines.append(f"  largest tables (together at least the gap): {covered}")
            for name, shard, room in s.per_rank[:5]:
                lines.append(f"  {s.tier}: {name}: its smallest shard takes {_gib(shard)}, one rank has {_gib(room)}: over by {_gib(shard - room)}")
            if len(s.per_rank) > 5:
                lines.append(f"  {s.tier}: {len(s.per_rank) - 5} more tables whose smallest shard exceeds one rank (all with --json)")
        if plan.shortfalls:
            lines.append("  compress these tables (embeddings.budget or embeddings.compression.<feature>), add ranks, or give more memory per rank")
        elif plan.memory_short:
            # TorchRec's partitioner could not place the shards, although every tier holds the
            # tables' total: the shards do not pack into the ranks (a bin-packing shortfall).
            lines.append(
                "  memory is short: the ranks together have room for the tables, but the planner could not pack their shards "
                "into the ranks; allow sharding types that split large tables (row_wise, column_wise, table_row_wise), "
                "add ranks, or give more memory per rank"
            )
        else:
            lines.append(
                "  no memory tier is short: the sharding constraints leave no plan (e.g. whole tables that do not pack into "
                "the ranks' room); allow more sharding types (row_wise / column_wise split a table), or add ranks or memory"
            )
    return lines


def _memory_summary(plan: ClusterPlan, gpu: bool) -> str:
    parts = []
    uses_ddr = any(r.table_ddr for r in plan.ranks)
    for tier in (("hbm", "ddr") if uses_ddr else ("hbm",)) if gpu else ("ddr",):
        used = [getattr(r, f"table_{tier}") + getattr(r, f"reserved_{tier}") for r in plan.ranks]
        cap = getattr(plan.ranks[0], f"capacity_{tier}")
        tables = [getattr(r, f"table_{tier}") for r in plan.ranks]
        parts.append(
            f"{tier.upper()} max {_gib(max(used))} (tables {_gib(max(tables))} + reserved), "
            f"median {_gib(statistics.median(used))}, of {_gib(cap)}"
        )
    return "; ".join(parts)


def _rank_lines(plan: ClusterPlan, gpu: bool) -> list[str]:
    if len(plan.ranks) > 16:
        return [f"{len(plan.ranks)} ranks: per-rank rows with --json"]
    tiers = ("hbm", "ddr") if gpu else ("ddr",)
    head = ("rank",) + tuple(f"{t.upper()} {what}" for t in tiers for what in ("tables", "reserved", "capacity")) + ("est. ms",)
    rows = [head]
    for r in plan.ranks:
        cells = [str(r.rank)]
        for t in tiers:
            cells += [_gib(getattr(r, f"table_{t}")), _gib(getattr(r, f"reserved_{t}")), _gib(getattr(r, f"capacity_{t}"))]
        rows.append(tuple(cells) + (f"{r.step_ms:.3f}",))
    return _columns(rows, right=set(range(1, len(head))))
