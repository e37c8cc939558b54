"""The retrieval task's evaluation over ranks: per_user queries gathered from every rank's rows,
per_row rows, exclusions per split, the keys of a test evaluation (fake model, real split files)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.data.loader import rank_rows
from recsys.retrieval_metrics import evaluate_retrieval, exclusion_rows, union_csr, user_item_csr
from recsys.retrieval_protocols import evaluate_per_user
from recsys.train.retrieval_eval import RetrievalEvaluation, query_rows, selection_cutoff

NUM_USERS, NUM_ITEMS, DIM = 12, 20, 3


def test_query_rows_first_by_time_then_row_order():
    users = np.array([5, 2, 5, 2, 7, 5])
    times = np.array([30, 10, 20, 10, 5, 20])
    # user 2: rows 1 and 3 share time 10 -> row 1; user 5: time 20 at rows 2 and 5 -> row 2; user 7: row 4
    assert query_rows(users, times).tolist() == [1, 2, 4]
    assert query_rows(users, None).tolist() == [1, 0, 4]  # without timestamps: the first row


def test_selection_cutoff():
    assert selection_cutoff([10, 20, 50]) == 20 and selection_cutoff([50, 5]) == 5


def write_splits(root: Path) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 120), ("validation", 25), ("test", 31)):
        folder = root / split
        folder.mkdir(parents=True)
        table = pa.table({
            "user_id": rng.integers(1, NUM_USERS, n), "item_id": rng.integers(0, NUM_ITEMS, n),
            "timestamp": rng.integers(0, 5, n),  # ties: the row order decides
        })
        pq.write_table(table, folder / "part-00000.parquet")
        files[split] = [folder / "part-00000.parquet"]
    return files


def row_vector(user: int, row: int) -> np.ndarray:
    """Integer vectors (ties) that differ between the rows of one user: the query row matters."""
    return np.array([user % 3 - 1, (row * 7) % 5 - 2, 1], np.float32)


ITEM_VECTORS = torch.from_numpy(np.random.default_rng(1).integers(-2, 3, (NUM_ITEMS, DIM)).astype(np.float32))


class FakeBatch:
    def __init__(self, users, items, rows):
        self.users, self.items, self.rows = users, items, rows
        self.sparse = {"user_id": SimpleNamespace(values=lambda: torch.from_numpy(self.users))}

    def to(self, device, non_blocking=False):
        return self


class FakeInner(torch.nn.Module):
    embedding_dim = DIM

    def item_embeddings(self, rows):
        return ITEM_VECTORS[rows]


class FakeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = FakeInner()

    def forward(self, batch):
        user = torch.from_numpy(np.stack([row_vector(u, r) for u, r in zip(batch.users, batch.rows)]))
        return None, SimpleNamespace(user=user, item_ids=torch.from_numpy(batch.items))


class FakeReader:
    """Rank r's rows of the split in file order, padded to rank 0's batch sizes (as ShardReader)."""

    def __init__(self, path: Path, rank: int, world: int, batch_size: int = 4):
        self.table = pq.read_table(path)
        self.num_rows, self.batch_size, self.rank, self.world = self.table.num_rows, batch_size, rank, world
        self.spec = None

    def eval_batches(self):
        start, stop = rank_rows(self.num_rows, self.rank, self.world)
        most = rank_rows(self.num_rows, 0, self.world)[1]
        users = self.table.column("user_id").to_numpy()
        items = self.table.column("item_id").to_numpy()
        for k in range(-(-most // self.batch_size)):
            rows = np.arange(start + k * self.batch_size, min(start + (k + 1) * self.batch_size, stop))
            real = rows.size
            rows = np.concatenate([rows, np.full(min(self.batch_size, most - k * self.batch_size) - real, start)]).astype(np.int64)
            yield FakeBatch(users[rows], items[rows], rows), real


class FakeCatalogue:
    def __len__(self):
        return NUM_ITEMS

    def kjt(self, rows, device=None):
        return rows


def config(protocol: str, exclude) -> SimpleNamespace:
    model = SimpleNamespace(eval_protocol=protocol, eval_ks=(1, 5, 20), eval_exclude=tuple(exclude), user_id_feature="user_id",
                            item_id_feature="item_id", baselines=("popularity",), baseline_max_items=10_000)
    return SimpleNamespace(model=model, train=SimpleNamespace(seed=0))


def evaluate_on_ranks(rank: int, world: int, port: int, files, out: Path, protocol: str, exclude) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        evaluation = RetrievalEvaluation(files, "user_id", "item_id", NUM_USERS, NUM_ITEMS, "timestamp")
        result = {}
        for split in ("validation", "test"):
            reader = FakeReader(files[split][0], rank, world)
            result[split] = evaluation.evaluate(FakeModel(), reader, torch.device("cpu"), config(protocol, exclude), split,
                                                FakeCatalogue(), np.arange(NUM_ITEMS), log=None)
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference(files, split: str, protocol: str, exclude) -> dict:
    table = pq.read_table(files[split][0])
    users, items, times = (table.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))
    seen = {s: user_item_csr(pq.read_table(files[s][0]).column("user_id").to_numpy(),
                             pq.read_table(files[s][0]).column("item_id").to_numpy(), NUM_USERS) for s in ("train", "validation")}
    names = [s for s in exclude if split == "test" or s == "train"]
    csr = None
    for name in names:
        csr = seen[name] if csr is None else union_csr(csr, seen[name])
    kwargs = dict(ks=(1, 5, 20), excluded_items=[0], item_counts=np.arange(NUM_ITEMS))
    if protocol == "per_row":
        vectors = torch.from_numpy(np.stack([row_vector(u, r) for r, u in enumerate(users)]))
        eptr, eidx = exclusion_rows(csr, users) if csr is not None else (None, None)
        return evaluate_retrieval(vectors, ITEM_VECTORS, items, exclude_indptr=eptr, exclude_indices=eidx, **kwargs)
    # per_user, written out: each user's earliest row by (time, row) is its query
    query_users = sorted(set(users.tolist()))
    first = [min(np.flatnonzero(users == u), key=lambda r: (times[r], r)) for u in query_users]
    vectors = torch.from_numpy(np.stack([row_vector(users[r], r) for r in first]))
    targets = [sorted(set(items[users == u].tolist())) for u in query_users]
    tptr = np.concatenate([[0], np.cumsum([len(t) for t in targets])])
    eptr, eidx = exclusion_rows(csr, np.array(query_users)) if csr is not None else (None, None)
    return evaluate_per_user(vectors, ITEM_VECTORS, tptr, np.concatenate(targets), exclude_indptr=eptr, exclude_indices=eidx, **kwargs)


@pytest.mark.parametrize("protocol,exclude,world", [
    ("per_user", ["train", "validation"], 2),
    pytest.param("per_row", ["train", "validation"], 2, marks=pytest.mark.slow),
    ("per_row", ["train"], 1), ("per_user", ["train"], 1), ("per_user", [], 1),
])
def test_evaluation_over_ranks_equals_the_reference(tmp_path, protocol, exclude, world):
    files = write_splits(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    if world == 1:  # in this process (a fork of a process with threads can deadlock)
        evaluate_on_ranks(0, 1, free_port(), files, out, protocol, exclude)
    else:  # two spawned ranks, ~10 s
        mp.start_processes(evaluate_on_ranks, args=(world, free_port(), files, out, protocol, exclude), nprocs=world,
                           start_method="spawn")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    assert all(r == ranks[0] for r in ranks)  # every rank holds the same numbers
    got = ranks[0]
    for split in ("validation", "test"):
        want = reference(files, split, protocol, exclude)
        model_keys = {k: v for k, v in got[split].items() if k in want}
        assert model_keys == pytest.approx({k: float(v) for k, v in want.items()}, nan_ok=True), split
    # validation: the model's keys only; test: protocol, exclusions, baselines (test and val_) and their record
    assert set(got["validation"]) == set(want)
    test = got["test"]
    assert test["eval_protocol"] == protocol and test["eval_exclude"] == exclude
    assert {"popularity_recall@20", "val_popularity_recall@20", "popularity_mrr", "val_popularity_ndcg@5"} <= set(test)
    assert not any(k.startswith(("als_", "itemknn_", "auc", "logloss")) for k in test)
    assert test["baselines"]["popularity"]["params"] == {}
    extra = set(test) - set(want)
    assert extra == {"eval_protocol", "eval_exclude", "baselines"} | {k for k in extra if k.startswith(("popularity_", "val_popularity_"))}


def test_results_json_keys_are_exact(tmp_path):
    """The loop's final report of a per_user run through Retrieval.results: exactly the documented keys."""
    from recsys.retrieval_metrics import metric_names
    from recsys.train.tasks import Retrieval

    files = write_splits(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    evaluate_on_ranks(0, 1, free_port(), files, out, "per_user", ["train", "validation"])
    got = json.loads((out / "rank0.json").read_text())
    val, test = got["validation"], got["test"]
    final = {"final": True, "step": 3, "steps": 3, **{k: v for k, v in test.items() if k != "rows"},  # as the loop
             **{f"val_{k}": v for k, v in val.items() if k != "rows"}, "test_rows": test["rows"], "val_rows": val["rows"]}
    results = Retrieval().results(final, {})
    names = set(metric_names((1, 5, 20)))
    thirds = {f"rows/{t}" for t in ("head", "torso", "tail")}
    want = (names | thirds | {f"val_{k}" for k in names | thirds} | {"eval_protocol", "eval_exclude", "baselines"}
            | {f"{p}popularity_{k}" for p in ("", "val_") for k in names})
    assert set(results) == want
    assert results["eval_protocol"] == "per_user" and results["eval_exclude"] == ["train", "validation"]
    assert not {"auc", "logloss", "oracle_auc", "val_eval_protocol"} & set(results)


def test_large_catalogue_skips_the_costly_baselines(tmp_path):
    files = write_splits(tmp_path / "data")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        cfg = config("per_row", ["train"])
        cfg.model.baselines, cfg.model.baseline_max_items = ("als", "itemknn", "popularity"), NUM_ITEMS - 1
        lines: list[str] = []
        evaluation = RetrievalEvaluation(files, "user_id", "item_id", NUM_USERS, NUM_ITEMS, "timestamp")
        got = evaluation.evaluate(FakeModel(), FakeReader(files["test"][0], 0, 1), torch.device("cpu"), cfg, "test",
                                  FakeCatalogue(), np.arange(NUM_ITEMS), log=lines.append)
    finally:
        dist.destroy_process_group()
    assert lines[0] == f"baselines ['als', 'itemknn'] skipped: the catalogue has {NUM_ITEMS} items > model.baseline_max_items {NUM_ITEMS - 1}"
    assert set(got["baselines"]) == {"popularity"} and "popularity_recall@20" in got and "als_recall@20" not in got


def test_eval_config_fields_and_their_errors():
    from pydantic import ValidationError

    from recsys.models.two_tower import TwoTowerConfig

    c = TwoTowerConfig(arch="two_tower")
    assert (c.eval_protocol, c.eval_exclude, c.baselines, c.eval_ks) == ("per_row", ("train",), ("popularity", "itemknn", "als"), (10, 20, 50, 100))
    with pytest.raises(ValidationError, match=r"eval_exclude_seen: got False; this key is now eval_exclude.*`eval_exclude: \[\]`"):
        TwoTowerConfig(arch="two_tower", eval_exclude_seen=False)
    with pytest.raises(ValidationError, match=r"eval_exclude: got \['validation'\]; allowed: \[train\], \[train, validation\]"):
        TwoTowerConfig(arch="two_tower", eval_exclude=["validation"])
    with pytest.raises(ValidationError, match=r"baselines: got \['als', 'svd'\]; give distinct names from \['als', 'itemknn', 'popularity'\]"):
        TwoTowerConfig(arch="two_tower", baselines=["als", "svd"])
    with pytest.raises(ValidationError, match="eval_protocol"):
        TwoTowerConfig(arch="two_tower", eval_protocol="per_item")
