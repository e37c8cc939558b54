"""The retrieval task's evaluation on every rank: catalogue vectors, both protocols, the baselines.

    .venv/bin/python -m pytest tests/unit/train/test_retrieval_eval.py -q

:class:`RetrievalEvaluation` is the per-run state of :class:`recsys.train.tasks.Retrieval`'s
evaluation (each worker process holds one): the splits' ``(user, item)`` rows, the users'
exclusion sets and the baselines' results are read / computed once and reused by every
evaluation of the run. One call of :meth:`RetrievalEvaluation.evaluate` (collective: every rank
calls it with its own reader):

1. **Catalogue**: the item tower embeds EVERY row of ``items.parquet`` (rank r its
   :func:`~recsys.data.loader.rank_rows` slice, padded to rank 0's batch sizes, then gathered).
2. **Exclusions** (``model.eval_exclude``, :func:`~recsys.retrieval_protocols.exclusion_for`): at
   test time the items of the named splits leave each user's ranking; validation leaves out at
   most the training items. The OOV row 0 is never ranked; a target always is.
3. **Protocol** (``model.eval_protocol``):

   * ``per_row``: each rank scores its own rows (one query per row, the row's user vector and
     item), then the evaluators' sums are all-reduced.
   * ``per_user``: one query per user with at least one held-out item in the split; its targets
     are the user's distinct held-out items. The query vector is the user tower's output for the
     user's FIRST held-out row of the split, by (timestamp, row order) when the split files have
     the spec's timestamp column, else by row order: the user's features as they stand when the
     held-out period begins. For ingested interaction data that is the natural choice: a
     ``leave_last_out`` or ``random`` split gives every held-out row of a user the same history
     (the user's training items, oldest first), so every row would give the same vector; a
     ``time`` split's first held-out row sees everything the user did before it. Each rank keeps
     the vectors of the query rows among its own rows, they are gathered, and rank r ranks the
     r-th slice of the users.

4. **Baselines** (``model.baselines``, :mod:`recsys.baselines`): fitted, chosen on validation and
   ranked on validation and test ONCE per run, on rank 0, at the test evaluation (they do not
   depend on the model), then broadcast. They see exactly the model's queries (the same split
   rows, protocol and exclusions).

Keys: a validation call yields the model's metrics (``recall@20``, ``ndcg@20``, ..., ``rows``; the
loop prefixes them ``val_``). A test call yields the model's metrics, ``eval_protocol``,
``eval_exclude``, each baseline's test metrics as ``<name>_<metric>`` (``als_recall@20``) and its
validation metrics as ``val_<name>_<metric>`` (``val_als_recall@20``), and ``baselines`` (per
baseline: the chosen grid point, the grid's validation scores, seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from recsys.retrieval_metrics import user_item_csr
from recsys.retrieval_protocols import Queries, exclusion_for, new_evaluator, split_queries

if TYPE_CHECKING:
    from recsys.data.loader import ShardReader
    from recsys.features.spec import DatasetSpec
    from recsys.train.config import TrainConfig

__all__ = ["RetrievalEvaluation", "selection_cutoff", "query_rows"]

SUMMARY_CUTOFF = 20  # the LightGCN / RecBole headline cut-off


def selection_cutoff(ks) -> int:
    """The cut-off of the headline (summary line, baseline selection): 20 if evaluated, else the smallest k."""
    ks = sorted(int(k) for k in ks)
    return SUMMARY_CUTOFF if SUMMARY_CUTOFF in ks else ks[0]


def query_rows(users: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
    """Per user with rows in the split, the row index of its first row by (timestamp, row order).

    Returns:
        ``(Q,)`` row indices, ordered by user index ascending (the order of ``per_user`` queries).
    """
    users = np.asarray(users, np.int64)
    rows = np.arange(users.size)
    keys = (rows, np.asarray(timestamps, np.int64), users) if timestamps is not None else (rows, users)
    order = np.lexsort(keys)
    first = np.ones(order.size, bool)
    first[1:] = users[order][1:] != users[order][:-1]
    return order[first]


def _all_reduced(evaluator) -> dict[str, float]:
    """Sum the evaluator's counters over all ranks (covered items: any rank), then compute."""
    dist.all_reduce(evaluator.sums, op=dist.ReduceOp.SUM)
    covered = evaluator.covered.to(torch.int32)
    dist.all_reduce(covered, op=dist.ReduceOp.MAX)
    evaluator.covered = covered.to(torch.uint8)
    return evaluator.compute()


class RetrievalEvaluation:
    """Evaluation state of one run on one worker (module docstring).

    Args:
        files: per split, its parquet files.
        user_feature / item_feature: the id columns (``model.user_id_feature`` / ``item_id_feature``).
        num_users: the user id's cardinality; ``num_items``: catalogue rows.
        timestamp: the spec's timestamp column, if any.
    """

    def __init__(self, files: Mapping[str, list[Path]], user_feature: str, item_feature: str, num_users: int, num_items: int,
                 timestamp: str | None = None):
        self.files = {k: [Path(p) for p in v] for k, v in files.items()}
        self.user_feature, self.item_feature = user_feature, item_feature
        self.num_users, self.num_items = num_users, num_items
        self.timestamp = timestamp
        self._rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._queries: dict[tuple[str, str, tuple[str, ...]], Queries] = {}
        self._baselines: dict[str, Any] | None = None

    # -- the splits' rows, read once ----------------------------------------------------------

    def rows(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(users, items, timestamps or None)`` of a split, in row order (file order)."""
        if split not in self._rows:
            schema = pq.read_schema(self.files[split][0]) if self.files[split] else None
            with_time = self.timestamp is not None and schema is not None and self.timestamp in schema.names
            columns = [self.user_feature, self.item_feature] + ([self.timestamp] if with_time else [])
            table = pa.concat_tables([pq.read_table(p, columns=columns) for p in self.files[split]])
            self._rows[split] = (
                table.column(self.user_feature).to_numpy().astype(np.int64),
                table.column(self.item_feature).to_numpy().astype(np.int64),
                table.column(self.timestamp).to_numpy().astype(np.int64) if with_time else None,
            )
        return self._rows[split]

    def seen(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Each user's distinct items of ``split`` as CSR (:func:`~recsys.retrieval_metrics.user_item_csr`)."""
        if split not in self._seen:
            users, items, _ = self.rows(split)
            self._seen[split] = user_item_csr(users, items, self.num_users)
        return self._seen[split]

    def exclusion(self, split: str, exclude) -> tuple[np.ndarray, np.ndarray] | None:
        return exclusion_for(split, exclude, self.seen)

    def queries(self, split: str, protocol: str, exclude) -> Queries:
        key = (split, protocol, tuple(exclude))
        if key not in self._queries:
            users, items, _ = self.rows(split)
            self._queries[key] = split_queries(protocol, users, items, self.num_users, self.exclusion(split, exclude))
        return self._queries[key]

    # -- one evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, reader: "ShardReader", device: torch.device, config: "TrainConfig", split: str,
        catalogue: Any, item_counts: np.ndarray | None, log: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """The metrics of ``split`` (module docstring); collective over all ranks."""
        m = config.model
        inner = getattr(model, "module", model)  # DMP -> the sharded module (no DDP wrapper)
        model.eval()
        try:
            item_vectors = self._embed_catalogue(inner, catalogue, reader.batch_size, device)  # (V, D)
            kwargs = dict(item_counts=item_counts, excluded_items=[0])
            evaluator = new_evaluator(m.eval_protocol, item_vectors, m.eval_ks, **kwargs)
            if m.eval_protocol == "per_row":
                self._per_row(model, reader, device, config, split, evaluator)
            else:
                self._per_user(model, reader, device, config, split, evaluator)
        finally:
            model.train()
        result: dict[str, Any] = _all_reduced(evaluator)
        result["rows"] = int(result["rows"])
        if split != "test":
            return result
        # The test evaluation carries the run's protocol and every baseline number (test and
        # validation), so the validation rows of the loop's history hold the model's curve only.
        result["eval_protocol"] = m.eval_protocol
        result["eval_exclude"] = list(m.eval_exclude)
        baselines = self._baseline_results(config, item_counts, log)
        for name, res in baselines.items():
            for prefix, metrics in (("", res["test"]), ("val_", res["validation"])):
                result.update({f"{prefix}{name}_{k}": v for k, v in metrics.items() if k != "rows" and not k.startswith("rows/")})
        if baselines:
            result["baselines"] = {name: res["summary"] for name, res in baselines.items()}
        return result

    def _embed_catalogue(self, inner: torch.nn.Module, catalogue: Any, batch_size: int, device: torch.device) -> torch.Tensor:
        from recsys.data.loader import rank_rows

        rank, world = dist.get_rank(), dist.get_world_size()
        start, stop = rank_rows(len(catalogue), rank, world)
        most = rank_rows(len(catalogue), 0, world)[1]
        own = []
        for k in range(-(-most // batch_size)):  # every rank runs rank 0's number of forwards (collectives)
            size = min(batch_size, most - k * batch_size)
            rows = torch.arange(start + k * batch_size, min(start + (k + 1) * batch_size, stop))
            real = int(rows.numel())
            if real < size:
                rows = torch.cat([rows, torch.full((size - real,), start, dtype=torch.int64)])
            vecs = inner.model.item_embeddings(catalogue.kjt(rows, device=device))
            own.append(vecs[:real].float().cpu())
        pieces: list[Any] = [None] * world
        dist.all_gather_object(pieces, torch.cat(own).numpy() if own else np.zeros((0, inner.model.embedding_dim), np.float32))
        return torch.from_numpy(np.concatenate(pieces))

    def _per_row(self, model, reader, device, config, split, evaluator) -> None:
        from recsys.retrieval_metrics import exclusion_rows

        m = config.model
        seen = self.exclusion(split, m.eval_exclude)
        for batch, real in reader.eval_batches():
            batch = batch.to(device, non_blocking=True)
            _, out = model(batch)
            users = batch.sparse[m.user_id_feature].values()[:real].cpu().numpy()
            indptr = indices = None
            if seen is not None:
                indptr, indices = exclusion_rows(seen, users)
            evaluator.update(out.user[:real].float().cpu(), out.item_ids[:real].cpu(), indptr, indices)

    def _per_user(self, model, reader, device, config, split, evaluator) -> None:
        from recsys.data.loader import rank_rows

        m = config.model
        queries = self.queries(split, "per_user", m.eval_exclude)
        users, _, timestamps = self.rows(split)
        first = query_rows(users, timestamps)  # (Q,) row of each query, queries' order
        rank, world = dist.get_rank(), dist.get_world_size()
        start, stop = rank_rows(reader.num_rows, rank, world)
        mine = np.sort(first[(first >= start) & (first < stop)])  # query rows this rank reads, in its reading order
        wanted = np.zeros(stop - start, bool)
        wanted[mine - start] = True
        position = start
        vectors = []
        for batch, real in reader.eval_batches():
            batch = batch.to(device, non_blocking=True)
            _, out = model(batch)
            keep = np.flatnonzero(wanted[position - start : position - start + real])
            if keep.size:
                vectors.append(out.user[:real][torch.from_numpy(keep).to(out.user.device)].float().cpu())
            position += real
        own = torch.cat(vectors).numpy() if vectors else np.zeros((0, inner_dim(model)), np.float32)
        pieces: list[Any] = [None] * world
        dist.all_gather_object(pieces, (mine, own))
        rows = np.concatenate([p[0] for p in pieces])
        vecs = np.concatenate([p[1] for p in pieces])
        by_row = dict(zip(rows.tolist(), range(rows.size)))
        user_vectors = torch.from_numpy(vecs[[by_row[int(r)] for r in first]])  # (Q, D) in query order
        a, b = rank_rows(len(queries), rank, world)
        if b > a:
            evaluator.update(user_vectors[a:b], *queries.block(a, b))

    # -- baselines, once per run --------------------------------------------------------------

    def _baseline_results(self, config: "TrainConfig", item_counts: np.ndarray | None, log) -> dict[str, Any]:
        if self._baselines is not None:
            return self._baselines
        m = config.model
        names = list(m.baselines)
        if self.num_items > m.baseline_max_items:
            skipped = [n for n in names if n in ("als", "itemknn")]
            names = [n for n in names if n not in skipped]
            if skipped and log is not None:
                log(f"baselines {skipped} skipped: the catalogue has {self.num_items:,} items > model.baseline_max_items "
                    f"{m.baseline_max_items:,}")
        payload: list[Any] = [None]
        if dist.get_rank() == 0 and names:
            payload = [self.compute_baselines(config, names, item_counts, log)]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(payload, src=0)
        self._baselines = payload[0] or {}
        return self._baselines

    def compute_baselines(self, config: "TrainConfig", names, item_counts: np.ndarray | None, log=None) -> dict[str, Any]:
        """Fit, select and rank the named baselines on this run's splits (no collectives)."""
        from recsys.baselines import Interactions, evaluate_baselines

        m = config.model
        users, items, _ = self.rows("train")
        train = Interactions(users, items, self.num_users, self.num_items)
        validation = self.queries("validation", m.eval_protocol, m.eval_exclude)
        test = self.queries("test", m.eval_protocol, m.eval_exclude)
        results = evaluate_baselines(
            names, train, validation, test, ks=m.eval_ks, select=f"recall@{selection_cutoff(m.eval_ks)}",
            item_counts=item_counts, seed=config.train.seed, num_threads=torch.get_num_threads(), log=log,
        )
        return {name: {"validation": r.validation, "test": r.test, "summary": r.summary()} for name, r in results.items()}


def inner_dim(model: torch.nn.Module) -> int:
    return getattr(model, "module", model).model.embedding_dim
