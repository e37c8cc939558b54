"""A small trained-run stand-in for tests and ``recsys bench serve``: data set + checkpoint, no Ray.

    .venv/bin/python -m pytest tests/unit/serving -q

:func:`make_run` writes a synthetic interaction data set (``recsys synth interactions``) and a
run directory whose ``ray/checkpoint_*/`` has exactly what ``recsys train`` writes (DCP shards of
``{"model": TwoTowerTask.state_dict()}``, ``config.json`` with the resolved config and spec,
``train_state.json``), from a model built by the training builders with seeded random weights.
So export is tested on the real checkpoint format in seconds; one integration test exports a
real ``recsys train`` run too.

:func:`synthetic_bundle` writes a bundle of N synthetic random unit item vectors (the 1M-item
benchmark: documented as synthetic; the user tower is a real exported program over one hashed
user id feature). Three catalogues (:func:`synthetic_catalogue`): ``mixture`` (the benchmark's
default: many overlapping clusters of power-law sizes, queries between clusters),
``clustered`` (easy: tight equal clusters, queries near items) and ``uniform`` (on the sphere,
the hardest bound).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def make_run(root: str | Path, *, rows: int = 6000, users: int = 200, items: int = 300, seed: int = 1,
             layers: tuple[int, ...] = (32, 16), history: bool = True) -> tuple[Path, Path]:
    """``(data dir, run dir)`` under ``root`` (module docstring); ``history`` adds ``history_item_id``."""
    import torch.distributed.checkpoint as dcp

    from recsys.data import layout
    from recsys.data.synthetic_interactions import InteractionSettings, generate_interactions
    from recsys.features.spec import builtin_spec, spec_from_dict
    from recsys.models.two_tower import build_two_tower_model, build_two_tower_task
    from recsys.train.config import config_from_dict

    root = Path(root)
    data, run = root / "data", root / "run"
    base = builtin_spec("synthetic_interactions").to_dict()
    if history:  # the user's earlier items, as movielens.yaml has them
        base["features"].append({"name": "history_item_id", "kind": "sparse", "cardinality": items + 1, "max_length": 20,
                                 "pooling": "mean", "tower": "user", "embedding_dim": 16, "history_of": "item_id"})
    generate_interactions(data, rows=rows, seed=seed, users=users, items=items, split="leave_last_out",
                          spec=spec_from_dict(base, "serving.testing"), settings=InteractionSettings(), log=lambda line: None)
    spec = layout.dataset_spec(data)
    config = config_from_dict({
        "data": {"path": str(data.resolve()), "batch_size": 64, "eval_batch_size": 256},
        "model": {"arch": "two_tower", "user_layers": list(layers), "item_layers": list(layers), "eval_exclude": []},
        "optimizer": {"embedding": {"kind": "rowwise_adagrad", "lr": 0.05}, "dense": {"kind": "adam", "lr": 0.001}},
        "train": {"epochs": 1},
        "ray": {"num_workers": 1},
    })
    counts = layout.vocab_counts(data, spec.sparse)
    torch.manual_seed(seed)
    model = build_two_tower_model(config.model, spec, device="cpu", counts=counts)
    with torch.no_grad():  # table init is small; spread it so scores differ clearly between items
        for name, p in model.named_parameters():
            if "embedding_bags" in name:
                p.normal_(0.0, 0.5)
    task = build_two_tower_task(config.model, model, spec, counts=counts, device="cpu")
    ckpt = run / "ray" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    dcp.save({"model": task.state_dict()}, checkpoint_id=str(ckpt))
    (ckpt / "config.json").write_text(json.dumps({"config": config.model_dump(mode="json"), "spec": spec.to_dict()}), encoding="utf-8")
    (ckpt / "train_state.json").write_text(json.dumps({"step": 7, "epoch": 1}), encoding="utf-8")
    (run / "results.json").write_text(json.dumps({"recall@100": 0.5, "mrr": 0.1, "config": {}}), encoding="utf-8")
    return data, run


def user_rows(data, spec, names, limit=300):
    """``(request users, KJT)``: the user features of the first test rows as request dicts (raw ids) and as a KJT (indices)."""
    import pyarrow.parquet as pq
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recsys.data import layout

    table = pq.read_table(layout.split_files(data, "test")[0], columns=names).slice(0, limit)
    raw_of = {}
    for n in names:
        vocab = pq.read_table(layout.vocab_path(data, n))
        raw_of[n] = dict(zip(vocab.column("index").to_pylist(), vocab.column("raw_id").to_pylist()))
    values, lengths, users = [], [], [{} for _ in range(table.num_rows)]
    for n in names:
        col = table.column(n).to_pylist()
        multi = spec.feature(n).multi_valued
        for i, v in enumerate(col):
            ids = v if multi else [v]
            values.extend(ids)
            lengths.append(len(ids))
            raw = [raw_of[n][x] for x in ids]
            users[i][n] = raw if multi else raw[0]
    kjt = KeyedJaggedTensor(keys=names, values=torch.tensor(values, dtype=torch.int64), lengths=torch.tensor(lengths, dtype=torch.int32))
    return users, kjt


CATALOGUES: tuple[str, ...] = ("mixture", "clustered", "uniform")


def clustered_vectors(num_items: int, dim: int, *, clusters: int = 256, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """``(num_items, dim)`` float32 unit vectors around ``clusters`` random centres (row 0 included).

    The EASY catalogue: 256 tight, equal clusters; with :func:`clustered_queries` IVF and HNSW
    reach recall@100 1.0 at their defaults, so it tests correctness, not recall.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((num_items, dim), dtype=np.float32)
    step = 1 << 18
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        which = rng.integers(0, clusters, stop - start)
        v = centres[which] + spread * rng.standard_normal((stop - start, dim)).astype(np.float32) / np.sqrt(dim)
        out[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def clustered_queries(vectors: np.ndarray, num: int, *, spread: float = 0.5, seed: int = 1) -> np.ndarray:
    """``(num, dim)`` unit queries near random items (the way users sit near the items they like)."""
    rng = np.random.default_rng(seed)
    base = vectors[rng.integers(1, vectors.shape[0], num)]
    q = base + spread * rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(vectors.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _mixture(dim: int, clusters: int, alpha: float, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centres (C, D), size weights (C,), spreads (C,))`` of :func:`mixture_vectors`' seed."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** alpha
    spreads = (spread * rng.lognormal(0.0, 0.5, clusters)).astype(np.float32)
    return centres, weights / weights.sum(), spreads


def mixture_vectors(num_items: int, dim: int, *, clusters: int = 2048, alpha: float = 1.0, spread: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """``(num_items, dim)`` float32 unit vectors of the HARDER catalogue (the benchmark's default).

    ``clusters`` random centres with power-law sizes (cluster c holds a share ``~ 1 / c^alpha``:
    a few huge clusters, a long tail of small ones, like item popularity) and a spread of its own
    (``spread`` times a log-normal factor, sigma 0.5); an item is its centre plus Gaussian noise
    of norm ~ its spread, normalised. At ``spread = 1`` the noise is as long as the centre, so
    clusters overlap heavily and an item's neighbours spill over many IVF cells. Queries come
    from :func:`mixture_queries`, off the items. :func:`uniform_vectors` is the structureless bound.
    """
    centres, weights, spreads = _mixture(dim, clusters, alpha, spread, seed)
    rng = np.random.default_rng([seed, 1])
    out = np.empty((num_items, dim), dtype=np.float32)
    step = 1 << 18
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        which = rng.choice(clusters, stop - start, p=weights)
        v = centres[which] + spreads[which, None] * rng.standard_normal((stop - start, dim)).astype(np.float32) / np.sqrt(dim)
        out[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def mixture_queries(num: int, dim: int, *, clusters: int = 2048, alpha: float = 1.0, spread: float = 1.0, seed: int = 0,
                    query_seed: int = 1) -> np.ndarray:
    """``(num, dim)`` unit queries for :func:`mixture_vectors` of the same settings and ``seed``: each
    between two clusters drawn by size (a user with two interests), ``t c_a + (1 - t) c_b`` with
    ``t ~ U(0, 1)``, plus noise of norm ~1: near no particular item."""
    centres, weights, _ = _mixture(dim, clusters, alpha, spread, seed)
    rng = np.random.default_rng([seed, query_seed, 2])
    a, b = rng.choice(clusters, num, p=weights), rng.choice(clusters, num, p=weights)
    t = rng.uniform(0.0, 1.0, (num, 1)).astype(np.float32)
    q = t * centres[a] + (1 - t) * centres[b] + rng.standard_normal((num, dim)).astype(np.float32) / np.sqrt(dim)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def uniform_vectors(num: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """``(num, dim)`` float32 unit vectors uniform on the sphere: no structure for an index to use
    (the hardest case for IVF / HNSW at a given setting; real embeddings sit between it and a mixture)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((num, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synthetic_catalogue(kind: str, num_items: int, dim: int, num_queries: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(items (num_items, dim), queries (num_queries, dim))`` unit vectors of one synthetic kind.

    ``mixture`` (default of ``recsys bench serve``): :func:`mixture_vectors` + :func:`mixture_queries`;
    ``clustered``: :func:`clustered_vectors` + :func:`clustered_queries` (easy); ``uniform``:
    :func:`uniform_vectors` for both (hardest).

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "mixture":
        return mixture_vectors(num_items, dim, seed=seed), mixture_queries(num_queries, dim, seed=seed)
    if kind == "clustered":
        vectors = clustered_vectors(num_items, dim, seed=seed)
        return vectors, clustered_queries(vectors, num_queries, seed=seed + 1)
    if kind == "uniform":
        return uniform_vectors(num_items, dim, seed=seed), uniform_vectors(num_queries, dim, seed=seed + 1)
    raise ValueError(f"catalogue: got {kind!r}; choose one of {list(CATALOGUES)}")


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |approx_row & exact_row| / |exact_row| (``-1`` entries ignored)."""
    hits = total = 0
    for a, e in zip(approx, exact):
        e = set(int(x) for x in e if x >= 0)
        hits += len(e & set(int(x) for x in a if x >= 0))
        total += len(e)
    return hits / max(total, 1)


def synthetic_bundle(out: str | Path, num_items: int, *, dim: int = 32, index: str = "exact",
                     index_settings: dict[str, Any] | None = None, num_users: int = 100_000, seed: int = 0,
                     catalogue: str = "mixture", precision: str = "fp32") -> Path:
    """A bundle of ``num_items`` synthetic random item vectors and a real exported user tower.

    The vectors and the users' vectors come from :func:`synthetic_catalogue` (``catalogue``:
    ``mixture`` by default, ``clustered`` or ``uniform``). The tower: one hashed ``user_id``
    feature (``cardinality: raw`` semantics: the program takes the raw id mod ``num_users``) -> a
    fixed (num_users, dim) table of the catalogue's query vectors. Raw item id of index i is
    ``1_000_000 + i``. ``precision`` stores the item vectors as ``recsys export`` does (fp32,
    fp16, int8 + per-item scales; the index is built over the dequantised vectors).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from torch import nn

    from serving import bundle as fmt
    from serving.retriever import build_index, resolve_index_settings

    vectors, users = synthetic_catalogue(catalogue, num_items, dim, num_users, seed=seed)

    class HashedUserTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.from_numpy(users), requires_grad=False)

        def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            rows = torch.remainder(values, self.table.shape[0])  # one id per user: values (B,)
            return self.table[rows] * (lengths.reshape(-1)[: rows.shape[0]] > 0).unsqueeze(1)

    batch = torch.export.Dim("batch", min=2, max=1 << 16)
    program = torch.export.export(
        HashedUserTower().eval(), (torch.zeros(2, dtype=torch.int64), torch.ones(1, 2, dtype=torch.int32)),
        dynamic_shapes={"values": {0: batch}, "lengths": {1: batch}}, strict=False,
    )
    from serving.export import quantize_vectors

    stored, scales = quantize_vectors(vectors, precision)
    vectors = fmt.dequantize(stored, scales)
    settings, notes = resolve_index_settings(index, index_settings, num_items)  # the manifest records what is built
    for line in notes:
        print(f"synthetic bundle: {line}", flush=True)
    artifacts = build_index(index, vectors, settings)
    raw = np.arange(num_items, dtype=np.int64) + 1_000_000
    vocab = pa.table({"index": np.arange(num_items, dtype=np.int64), "raw_id": pa.array([None, *raw[1:].tolist()], pa.int64()),
                      "count": np.zeros(num_items, np.int64), "token": pa.array([None] * num_items, pa.string())})

    def fill(tmp: Path) -> None:
        torch.export.save(program, str(tmp / fmt.USER_TOWER))
        np.save(tmp / fmt.ITEM_VECTORS, stored, allow_pickle=False)
        if scales is not None:
            np.save(tmp / fmt.ITEM_SCALES, scales, allow_pickle=False)
        if artifacts.codes is not None:
            np.save(tmp / fmt.ITEM_CODES, artifacts.codes, allow_pickle=False)
        if artifacts.index_bytes is not None:
            (tmp / fmt.INDEX).write_bytes(artifacts.index_bytes)
        (tmp / fmt.VOCAB_DIR).mkdir()
        pq.write_table(vocab, tmp / fmt.VOCAB_DIR / "item_id.parquet")

    manifest = {
        "source": {"synthetic": f"{num_items:,} {catalogue} random unit vectors (dim {dim}, seed {seed}); not a trained model",
                   "catalogue": catalogue},
        "config": None, "feature_spec": None, "metrics": {}, "plan": None,
        "precision": {"tables": "fp32", "item_vectors": precision},
        "user_tower": {"file": fmt.USER_TOWER, "features": [{"name": "user_id", "multi_valued": False, "max_length": 1, "vocab": False,
                                                             "history_of": None}],
                       "inputs": "values (B,) int64, lengths (1, B) int32", "output_dim": dim, "ops_libraries": []},
        "items": {"count": num_items, "dim": dim, "dtype": str(stored.dtype), "id_feature": "item_id", "first_item": 1,
                  "bytes_per_item": artifacts.bytes_per_item(stored, scales)},
        "index": {"kind": index, "settings": settings},
        "vocab": {"item_id": f"{fmt.VOCAB_DIR}/item_id.parquet"},
    }
    return fmt.write_bundle(out, manifest, fill)


def free_port() -> int:
    """A free TCP port on the loopback address (bound and released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """The real service (uvicorn) on a free loopback port in a background thread.

    Example::

        with ServerThread(create_app(bundle)) as server:
            httpx.post(f"{server.url}/v1/retrieve", json={...})
    """

    def __init__(self, app, port: int | None = None, timeout_s: float = 30.0):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on", http="httptools", loop="uvloop"))
        self.timeout_s = timeout_s
        self._thread = None

    def __enter__(self) -> "ServerThread":
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, name="recsys-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=self.timeout_s)
