"""recsys export: the bundle's user and item vectors equal the training model's; bad bundles are refused by file."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data import layout
from recsys.data.catalogue import ItemCatalogue
from recsys.models.two_tower import embed_items
from recsys.retrieval_metrics import exact_topk
from serving import bundle as fmt
from serving.bundle import BundleError, load_bundle
from serving.export import export_bundle, load_trained_run, quantize_vectors
from serving.features import UserEncoder
from serving.testing import recall_at_k, user_rows


def test_fp32_bundle_vectors_equal_the_training_model(trained_run, fp32_bundle):
    data, run_dir = trained_run
    run = load_trained_run(run_dir)
    bundle = load_bundle(fp32_bundle)
    m = bundle.manifest
    assert m["format_version"] == fmt.FORMAT_VERSION and m["source"]["step"] == 7
    assert m["metrics"] == {"recall@100": 0.5, "mrr": 0.1}
    assert set(m["files"]) == {"user_tower.pt2", "item_vectors.npy", "vocab/user_id.parquet", "vocab/user_segment.parquet",
                               "vocab/history_item_id.parquet", "vocab/item_id.parquet"}
    catalogue = ItemCatalogue.from_parquet(layout.catalogue_path(data, "items"), run.spec)
    items = embed_items(run.model, catalogue).numpy()
    assert bundle.item_vectors.shape == items.shape == (len(catalogue), 16)
    assert np.abs(bundle.item_vectors - items).max() <= 1e-5

    names = run.model.user_tower.feature_names
    users, kjt = user_rows(data, run.spec, names)
    with torch.no_grad():
        expected = run.model.user_tower(kjt)
    encoder = UserEncoder(m["user_tower"]["features"], bundle.vocabs, "item_id")
    parsed = [encoder.parse(u) for u in users]
    assert not any(p.oov_features for p in parsed)  # every raw id of the data is in the vocabulary
    values, lengths = encoder.encode(parsed)
    assert torch.equal(values, kjt.values()) and torch.equal(lengths.reshape(-1), kjt.lengths())
    got = bundle.user_tower(values, lengths)
    assert (got - expected).abs().max().item() <= 1e-5
    single = bundle.user_tower(*encoder.encode(parsed[:1]))[:1]  # batch 1 is padded to 2
    assert (single - expected[:1]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("precision,aim", [("fp16", 0.99), ("int8", 0.97)])
def test_quantised_bundles_recall_against_fp32_exact(trained_run, fp32_bundle, tmp_path, precision, aim):
    data, run_dir = trained_run
    ref = load_bundle(fp32_bundle)
    out = export_bundle(run_dir, tmp_path / precision, precision=precision)
    bundle = load_bundle(out)
    assert bundle.manifest["precision"] == {"tables": precision, "item_vectors": precision}
    assert bundle.manifest["user_tower"]["ops_libraries"] == ["fbgemm_gpu"]  # TorchRec's quantised tables
    stored = np.load(out / fmt.ITEM_VECTORS)
    assert stored.dtype == {"fp16": np.float16, "int8": np.int8}[precision]
    from serving.service import LoadedService

    served = LoadedService(load_bundle(out)).retriever
    assert served.vectors.dtype == stored.dtype and served.vectors.nbytes == stored.nbytes  # held at the bundle's precision
    names = [f["name"] for f in ref.manifest["user_tower"]["features"]]
    users, _ = user_rows(data, load_trained_run(run_dir).spec, names)
    enc_ref = UserEncoder(ref.manifest["user_tower"]["features"], ref.vocabs, "item_id")
    enc = UserEncoder(bundle.manifest["user_tower"]["features"], bundle.vocabs, "item_id")
    u_ref = ref.user_tower(*enc_ref.encode([enc_ref.parse(u) for u in users]))
    u_q = bundle.user_tower(*enc.encode([enc.parse(u) for u in users]))
    _, top_ref = exact_topk(u_ref, torch.from_numpy(ref.item_vectors), 100, excluded_items=[0])
    _, top_q = exact_topk(u_q, torch.from_numpy(bundle.item_vectors), 100, excluded_items=[0])
    recall = recall_at_k(top_q.numpy(), top_ref.numpy())
    print(f"{precision}: recall@100 against fp32 exact {recall:.4f} over {len(users)} users "
          f"(aim {aim}); bundle item bytes {stored.nbytes:,} vs fp32 {ref.item_vectors.nbytes:,}")
    assert recall >= aim


def test_int8_vectors_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((50, 16)).astype(np.float32)
    q, scales = quantize_vectors(v, "int8")
    assert q.dtype == np.int8 and scales.shape == (50,)
    assert np.all(np.abs(fmt.dequantize(q, scales) - v) <= scales[:, None] / 2 + 1e-7)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage,match", [
    ("missing", r"item_vectors.npy: missing"),
    ("truncated", r"item_vectors.npy: \d[\d,]* bytes, the manifest says"),
    ("corrupt", r"user_tower.pt2: sha256 .* does not match"),
    ("vocab", r"vocab/user_id.parquet: sha256"),
    ("version", r"format_version 99, this recsys reads format_version 1"),
    ("manifest", r"manifest.json: unreadable"),
    ("no_manifest", r"manifest.json: missing"),
])
def test_damaged_bundles_are_refused_naming_the_file(fp32_bundle, tmp_path, damage, match):
    b = _copy(fp32_bundle, tmp_path / "b")
    if damage == "missing":
        (b / "item_vectors.npy").unlink()
    elif damage == "truncated":
        data = (b / "item_vectors.npy").read_bytes()
        (b / "item_vectors.npy").write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        data = bytearray((b / "user_tower.pt2").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (b / "user_tower.pt2").write_bytes(bytes(data))
    elif damage == "vocab":
        data = bytearray((b / "vocab/user_id.parquet").read_bytes())
        data[10] ^= 0x01
        (b / "vocab/user_id.parquet").write_bytes(bytes(data))
    elif damage == "version":
        m = json.loads((b / "manifest.json").read_text())
        m["format_version"] = 99
        (b / "manifest.json").write_text(json.dumps(m))
    elif damage == "manifest":
        (b / "manifest.json").write_text("{ not json")
    else:
        (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match=match):
        load_bundle(b)


def test_export_never_leaves_a_half_bundle(trained_run, tmp_path, monkeypatch):
    from serving import export as export_module

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module.np, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(trained_run[1], tmp_path / "b")
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary sibling


def test_export_refuses_bad_arguments(trained_run, fp32_bundle, tmp_path):
    with pytest.raises(FileExistsError, match="exists"):
        export_bundle(trained_run[1], fp32_bundle)
    with pytest.raises(ValueError, match="--precision: got 'int4'"):
        export_bundle(trained_run[1], tmp_path / "x", precision="int4")
    with pytest.raises(ValueError, match="--index: got 'lsh'"):
        export_bundle(trained_run[1], tmp_path / "x", index="lsh")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        export_bundle(tmp_path / "nope", tmp_path / "x")
    with pytest.raises(ValueError, match="not settings of the ivf index"):
        export_bundle(trained_run[1], tmp_path / "x", index="ivf", index_settings={"ef_search": 3})


def test_cli_export_prints_the_bundle_path(trained_run, tmp_path, capsys):
    from jobs.cli import main

    assert main(["export", str(trained_run[1]), "--out", str(tmp_path / "b"), "--index", "binary"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"bundle: {tmp_path / 'b'}"
    assert load_bundle(tmp_path / "b").item_codes.shape[1] == 2  # 16 dims -> 2 bytes
    with pytest.raises(SystemExit) as usage:  # a usage error: exit 2 (tests/unit/serving/test_cli_flags.py has every flag)
        main(["export", str(trained_run[1]), "--out", str(tmp_path / "c"), "--index-setting", "nprobe"])
    assert usage.value.code == 2


def test_an_impossible_ivf_setting_is_clamped_recorded_and_answers_hold_k(trained_run, tmp_path):
    """Issue 18: nlist=100000 over 301 items: the line says so, the manifest records 301, k=100 gives 100 items."""
    from serving.service import LoadedService, Query

    lines = []
    out = export_bundle(trained_run[1], tmp_path / "ivf", index="ivf", index_settings={"nlist": 100_000, "nprobe": 1},
                        log=lines.append)
    assert lines[0] == "index setting nlist=100000 is above the 301 items (k-means needs a point per cell): built with nlist=301"
    assert len(lines) == 2 and re.fullmatch(r"export: ivf index over 301 items built in \d+\.\d s", lines[1])  # progress
    service = LoadedService.from_path(out)
    assert service.bundle.manifest["index"]["settings"] == {"nlist": 301, "nprobe": 1, "train_size": 301}
    assert service.retriever.settings["nlist"] == 301 and service.notes == []
    users, _ = user_rows(trained_run[0], load_trained_run(trained_run[1]).spec, service.encoder.keys, 8)
    queries = [Query(service.encoder.parse(u), 100, np.empty(0, np.int64)) for u in users]
    answers = service.run(queries)
    assert all(len(a.items) == 100 for a in answers)  # 300 servable items; nprobe=1 scans one cell of ~1
    from serving.retriever import Retriever

    exact_items = Retriever(service.retriever.vectors, "exact").search(service.user_vectors([q.user for q in queries]), 100)[1]
    assert [a.indices.tolist() for a in answers] == exact_items.tolist()
    assert service.retriever.exact_fallbacks == len(queries)  # every query: nprobe=1 scans about one item
    from prometheus_client import generate_latest

    from serving.app import create_app

    app = create_app(out)
    app.state.recsys.service.run(queries[:3])
    assert "recsys_exact_fallbacks 3.0" in generate_latest(app.state.recsys.metrics.registry).decode()


def test_the_missing_feature_policy_is_in_the_manifest(trained_run, fp32_bundle, tmp_path):
    features = load_bundle(fp32_bundle).manifest["user_tower"]["features"]
    assert {f["name"]: f["missing"] for f in features} == {"user_id": "oov", "user_segment": "oov", "history_item_id": "empty"}
    strict = export_bundle(trained_run[1], tmp_path / "strict", require_all_features=True)
    features = load_bundle(strict).manifest["user_tower"]["features"]
    assert {f["name"]: f["missing"] for f in features} == {"user_id": "required", "user_segment": "required", "history_item_id": "empty"}
