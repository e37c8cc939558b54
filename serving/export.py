"""Run dir -> serving bundle: rebuild the unsharded two-tower model on CPU, export what serving needs.

    recsys export runs/two_tower_synthetic_full --out bundles/tt --precision int8 --index hnsw
    .venv/bin/python -m pytest tests/unit/serving/test_export.py -q

Steps (:func:`export_bundle`):

1. the newest intact checkpoint of the run (:func:`recsys.train.checkpoint.newest_intact`), its
   ``config.json`` (resolved training config + feature spec);
2. :func:`recsys.models.two_tower.build_two_tower_model` on CPU with the same builders training
   used, the checkpoint's ``model.model.*`` tensors loaded (strict: every key must match);
3. item vectors of EVERY catalogue row (:func:`recsys.models.two_tower.embed_items` over
   ``items.parquet``) in fp32, then stored at the chosen precision (fp16, or int8 with one
   symmetric scale per row: ``q = round(127 v / max|v|)``);
4. the user tower as a ``torch.export`` program over flat tensors (:class:`UserTowerProgram`), its
   tables TorchRec-quantised for fp16 / int8 (:func:`recsys.embeddings.export.quantize_collection`:
   fbgemm's quantised lookup, so loading it needs ``import fbgemm_gpu``; the manifest says so);
5. the index (:func:`serving.retriever.build_index`) and the vocabularies, checksummed into an
   atomically written bundle (:func:`serving.bundle.write_bundle`).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from serving import bundle as fmt
from serving.features import missing_policy
from serving.retriever import build_index, check_settings, resolve_index_settings

RESULTS = "results.json"
# results.json entries that are not metrics (tables, histories, the config) stay out of the manifest's metrics.
_NOT_METRICS = {"config", "configs", "plan", "sharding_plan", "feature_spec", "history", "loss_curve", "oracle", "checkpoint"}


class UserTowerProgram(nn.Module):
    """``(values (N,) int64, lengths (F, B) int32) -> (B, D)`` unit-norm user vectors, for ``torch.export``.

    ``lengths[f, b]`` is the number of ids of feature ``keys[f]`` for user ``b``; ``values`` holds
    them feature-major (all of feature 0's ids, user by user, then feature 1's ...), the KJT layout::

        #               b = 0    b = 1
        # "user_id"     [17]     [3]          values  = [17, 3, 5, 5, 9, 2]
        # "history"     [5]      [5, 9, 2]    lengths = [[1, 1], [1, 3]]

    Args:
        tower (nn.Module): the user tower (``KeyedJaggedTensor -> (B, D)``).
        keys (list[str]): the tower's features, in the order of ``lengths``' rows.
    """

    def __init__(self, tower: nn.Module, keys: list[str]):
        super().__init__()
        self.tower = tower
        self.keys = list(keys)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        kjt = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths.reshape(-1))
        return self.tower(kjt)


def export_user_tower(tower: nn.Module, keys: list[str], multi_valued: list[bool]) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`UserTowerProgram` with a dynamic batch (>= 2) and number of ids.

    torch.export specialises a size of 1, so the batch dimension starts at 2: callers pad a single
    user to two rows (:class:`serving.features.UserEncoder` does).
    """
    program = UserTowerProgram(tower, keys).eval()
    lengths = torch.tensor([[2, 1] if multi else [1, 1] for multi in multi_valued], dtype=torch.int32)  # (F, 2)
    values = torch.zeros(int(lengths.sum()), dtype=torch.int64)
    batch = torch.export.Dim("batch", min=2, max=1 << 16)
    num_values = torch.export.Dim("num_values", min=2, max=1 << 30)
    with torch.no_grad():
        return torch.export.export(
            program, (values, lengths), dynamic_shapes={"values": {0: num_values}, "lengths": {1: batch}}, strict=False
        )


def quantize_vectors(vectors: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(stored, scales)``: fp32 as is, fp16 cast, int8 with one symmetric scale per row."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if precision == "fp32":
        return vectors, None
    if precision == "fp16":
        return vectors.astype(np.float16), None
    if precision == "int8":
        peak = np.abs(vectors).max(axis=1)  # (V,)
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
        return q, scales
    raise ValueError(f"precision: got {precision!r}; choose one of {list(fmt.PRECISIONS)}")


@dataclass
class TrainedRun:
    """The unsharded model of a run's checkpoint with what it was trained from."""

    model: Any  # recsys.models.two_tower.TwoTower, eval mode, CPU
    config: Any  # recsys.train.config.TrainConfig
    spec: Any  # recsys.features.spec.DatasetSpec
    resolved: dict[str, Any]  # config.json as written
    checkpoint: Path
    step: int
    run_dir: Path


def load_trained_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> TrainedRun:
    """Rebuild the two-tower model of a run on CPU and load its newest intact (or the given) checkpoint.

    Raises:
        ValueError: no intact checkpoint, a run that is not a two-tower run, keys that do not match.
    """
    from recsys.data import layout
    from recsys.features.spec import spec_from_dict
    from recsys.models.two_tower import build_two_tower_model
    from recsys.train import checkpoint as ckpt
    from recsys.train.config import TrainConfig

    run_dir = Path(run_dir)
    # which flag a problem of the checkpoint's content points at: the one that chose the checkpoint
    source = f"RUN_DIR {run_dir}" if checkpoint is None else f"--checkpoint {checkpoint}"
    if checkpoint is None:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"RUN_DIR {run_dir}: no such folder; give the run_dir `recsys train` printed")
        chosen, damaged = ckpt.newest_intact(run_dir)
        for line in damaged:
            print(line)
        if chosen is None:
            raise ValueError(f"RUN_DIR {run_dir}: no intact checkpoint under {run_dir / ckpt.RAY_RUN_NAME}; train (or resume) the run first")
        step, path = chosen
    else:
        path = Path(checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"--checkpoint {path}: no such folder; give a checkpoint_* folder of the run (under {run_dir / ckpt.RAY_RUN_NAME})")
        reason = ckpt.verify_checkpoint(path)
        if reason is not None:
            raise ValueError(f"--checkpoint {path}: {reason}")
        step = ckpt.checkpoint_step(path) or 0
    resolved = ckpt.read_resolved_config(path)
    config = TrainConfig.model_validate(resolved["config"])
    if config.model.arch != "two_tower":
        raise ValueError(f"{source}: model.arch is {config.model.arch!r}; recsys export serves two_tower runs only "
                         "(a CTR model scores (user, item) pairs, it has no towers to retrieve with)")
    spec = spec_from_dict(resolved["spec"], f"{path / ckpt.CONFIG}:spec")
    check_run_data(Path(config.data.path), spec, source)
    counts = layout.vocab_counts(config.data.path, spec.sparse)
    model = build_two_tower_model(config.model, spec, device="cpu", counts=counts)
    tensors = ckpt.checkpoint_tensors(path)
    prefix = "model.model."  # the checkpoint's state is that of the DMP-wrapped TwoTowerTask
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: tensors do not match the rebuilt model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.load_state_dict(state, strict=True)
    return TrainedRun(model.eval(), config, spec, resolved, path, int(step), run_dir)


def check_run_data(data: Path, spec: Any, source: str) -> None:
    """Raise naming the first file of the run's data set that export reads and cannot find.

    Export embeds every catalogue item (``items.parquet``) and copies the vocabularies of the data set the
    run was trained on (``data.path`` of its config), so a data set moved or replaced since training stops
    export here, before the model is rebuilt.
    """
    from recsys.data import layout

    needed = [layout.catalogue_path(data, "items")] + [layout.vocab_path(data, f.name) for f in spec.sparse if f.has_vocab]
    for file in needed:
        if not file.is_file():
            what = "the data set folder is gone" if not data.is_dir() else f"{file.relative_to(data)} is missing"
            raise FileNotFoundError(
                f"{file}: {what}; export needs the run's data set (data.path {str(data)!r} in the config of {source}): "
                "restore it there, or ingest the same data to that path again"
            )


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The scalar metrics of a run's results.json (empty when it has none)."""
    try:
        results = json.loads((run_dir / RESULTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in results.items() if k not in _NOT_METRICS and isinstance(v, (int, float))}


def user_tower_copy(model: nn.Module, precision: str) -> nn.Module:
    """The user tower with its tables at ``precision`` (TorchRec quantised tables for fp16 / int8)."""
    tower = copy.deepcopy(model.user_tower).eval()
    if precision != "fp32":
        from recsys.embeddings.export import quantize_collection

        tower.sparse = quantize_collection(tower.sparse, torch.float16 if precision == "fp16" else torch.qint8)
    return tower


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    index: str = "exact",
    index_settings: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    require_all_features: bool = False,
    log: Any = print,
) -> Path:
    """Write the bundle of a trained two-tower run (module docstring); returns its folder.

    Args:
        require_all_features: every single-valued user feature is required in requests (422 when missing);
            by default a missing feature gets its OOV row (or an empty bag), reported in the answer.
        log: where lines about clamped index settings and the index build's time go.

    Raises:
        ValueError: bad precision / index, a run that cannot be served, an item id without vocabulary.
        FileExistsError: ``out`` exists.
    """
    if precision not in fmt.PRECISIONS:
        raise ValueError(f"--precision: got {precision!r}; choose one of {list(fmt.PRECISIONS)}")
    if index not in fmt.INDEX_KINDS:
        raise ValueError(f"--index: got {index!r}; choose one of {list(fmt.INDEX_KINDS)}")
    if Path(out).exists():
        raise FileExistsError(f"--out {out} exists; give a new folder (bundles are never overwritten in place)")
    check_settings(index, dict(index_settings or {}))  # before the run is loaded
    from recsys.data import layout
    from recsys.data.catalogue import ItemCatalogue
    from recsys.models.two_tower import embed_items

    run = load_trained_run(run_dir, checkpoint)
    spec, model, data = run.spec, run.model, Path(run.config.data.path)
    item_id = spec.feature(run.config.model.item_id_feature)
    if not item_id.has_vocab:
        raise ValueError(
            f"model.item_id_feature {item_id.name!r} has cardinality 'raw': a bundle maps item indices back to raw "
            "ids through its vocabulary, so export needs an item id with a vocabulary"
        )
    catalogue = ItemCatalogue.from_parquet(layout.catalogue_path(data, "items"), spec)
    from recsys import console

    with console.progress(len(catalogue), "items", "export: embedding the catalogue") as shown:
        vectors = embed_items(model, catalogue, on_chunk=shown.update).numpy()  # (V, D) float32
    stored, scales = quantize_vectors(vectors, precision)
    search_vectors = fmt.dequantize(stored, scales)
    settings, notes = resolve_index_settings(index, index_settings, search_vectors.shape[0])
    for line in notes:
        log(line)
    started = time.perf_counter()
    artifacts = build_index(index, search_vectors, settings)
    if index != "exact":
        log(f"export: {index} index over {len(search_vectors):,} items built in {time.perf_counter() - started:.1f} s")

    keys = list(model.user_tower.feature_names)
    by_name = {f.name: f for f in spec.sparse}
    tower = user_tower_copy(model, precision)
    program = export_user_tower(tower, keys, [by_name[k].multi_valued for k in keys])
    ops = sorted({str(n.target).split(".")[0] for n in program.graph.nodes if n.op == "call_function" and str(n.target).startswith("fbgemm.")})

    vocab_features = [k for k in keys if by_name[k].has_vocab] + [item_id.name]
    vocab_files = {}
    for name in dict.fromkeys(vocab_features):
        src = layout.vocab_path(data, name)
        if not src.exists():
            raise ValueError(f"{src}: missing; the service maps raw {name} ids through it (re-ingest the data set)")
        vocab_files[name] = f"{fmt.VOCAB_DIR}/{name}.parquet"

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
        for name, rel in vocab_files.items():
            shutil.copyfile(layout.vocab_path(data, name), tmp / rel)

    plan = model.plans()
    manifest = {
        "source": {"run_dir": str(run.run_dir.resolve()), "checkpoint": str(run.checkpoint.resolve()), "step": run.step,
                   "data": str(data)},
        "config": run.resolved["config"],
        "feature_spec": run.resolved["spec"],
        "metrics": run_metrics(run.run_dir),
        "plan": {tower_name: {"total_bytes": p.total_bytes, "full_bytes": p.full_bytes, "ratio": p.ratio,
                              "tables": [{"name": t.name, "rows": t.num_embeddings, "dim": t.embedding_dim, "bytes": t.num_bytes}
                                         for t in p.tables]}
                 for tower_name, p in plan.items()},
        "precision": {"tables": precision, "item_vectors": precision},
        "user_tower": {
            "file": fmt.USER_TOWER,
            "features": [{"name": k, "multi_valued": by_name[k].multi_valued, "max_length": by_name[k].max_length,
                          "vocab": by_name[k].has_vocab, "history_of": by_name[k].history_of,
                          "missing": missing_policy(by_name[k].multi_valued, by_name[k].has_vocab, require_all_features)}
                         for k in keys],
            "inputs": "values (N,) int64, lengths (F, B) int32 with B >= 2",
            "output_dim": int(vectors.shape[1]),
            "ops_libraries": ["fbgemm_gpu"] if ops else [],
        },
        "items": {"count": int(vectors.shape[0]), "dim": int(vectors.shape[1]), "dtype": str(stored.dtype),
                  "id_feature": item_id.name, "first_item": catalogue.first_item,
                  "bytes_per_item": artifacts.bytes_per_item(stored, scales)},
        "index": {"kind": index, "settings": settings},
        "vocab": vocab_files,
    }
    return fmt.write_bundle(out, manifest, fill)
