"""The real service over HTTP (uvicorn on a free loopback port): every endpoint, bad requests, OOV ids,
a corrupt bundle refused at start; answers equal offline exact top-k. Load and hot swap: test_serving_load.py."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
import torch

from recsys.retrieval_metrics import exact_topk
from serving.app import ServeConfig, create_app
from serving.bundle import BundleError, load_bundle
from serving.export import export_bundle, load_trained_run
from serving.features import UserEncoder
from serving.testing import ServerThread, make_run, user_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving_http")
    data, run_dir = make_run(root)
    exact = export_bundle(run_dir, root / "exact")
    return data, run_dir, exact, None


@pytest.fixture(scope="module")
def server(run):
    config = ServeConfig(max_k=200, max_batch_requests=16, max_body_bytes=20_000, max_batch=16, max_wait_ms=1.0, batch_thread=True)
    with ServerThread(create_app(run[2], config)) as s:
        yield s


def users_of(run, limit=64):
    data, run_dir, exact, _ = run
    trained = load_trained_run(run_dir)
    names = trained.model.user_tower.feature_names
    return user_rows(data, trained.spec, names, limit)


def test_http_answers_equal_offline_exact_topk(run, server):
    users, kjt = users_of(run, 40)
    trained = load_trained_run(run[1])
    bundle = load_bundle(run[2])
    with torch.no_grad():
        u = trained.model.user_tower(kjt)
    ref_scores, ref_items = exact_topk(u, torch.from_numpy(bundle.item_vectors), 100, excluded_items=[0])
    raw = bundle.vocabs["item_id"].raw_by_index
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i, user in enumerate(users):
            r = client.post("/v1/retrieve", json={"user": user, "k": 100})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["bundle"] == bundle.bundle_id and body["oov_features"] == []
            assert [x["item_id"] for x in body["items"]] == raw[ref_items[i].numpy()].tolist()
            np.testing.assert_allclose([x["score"] for x in body["items"]], ref_scores[i].numpy(), atol=1e-5)
        # the batch endpoint answers the same, in order
        r = client.post("/v1/retrieve/batch", json={"requests": [{"user": u, "k": 10} for u in users[:8]]})
        assert r.status_code == 200
        for i, res in enumerate(r.json()["results"]):
            assert [x["item_id"] for x in res["items"]] == raw[ref_items[i, :10].numpy()].tolist()


def test_exclusions_history_and_oov(run, server):
    users, _ = users_of(run, 5)
    user = dict(users[0])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        top = [x["item_id"] for x in client.post("/v1/retrieve", json={"user": user, "k": 20}).json()["items"]]
        r = client.post("/v1/retrieve", json={"user": user, "k": 20, "exclude": top[:5] + [987654321]}).json()
        assert [x["item_id"] for x in r["items"]][:15] == top[5:]
        history = user["history_item_id"]
        assert history, "the test row has a history"
        r = client.post("/v1/retrieve", json={"user": user, "k": 100, "exclude_history": True}).json()
        assert not set(history) & {x["item_id"] for x in r["items"]}
        r = client.post("/v1/retrieve", json={"user": {**user, "user_id": 10**12, "history_item_id": [10**12]}, "k": 5}).json()
        assert r["oov_features"] == ["user_id", "history_item_id"] and len(r["items"]) == 5
        metrics = client.get("/metrics").text
        assert 'recsys_oov_features_total{feature="user_id"}' in metrics and "recsys_oov_rate" in metrics


@pytest.mark.parametrize("body,status,field,message", [
    ({"user": {"nope": 1}}, 422, "user.nope", "unknown feature; the user tower takes"),
    ({"user": {"user_id": "x", "user_segment": 1.5}}, 422, "user.user_segment", "got float 1.5"),
    ({"user": {"user_id": 1, "user_segment": 1}, "k": 201}, 422, "k", r"give an integer in \[1, 200\] \(max_k\)"),
    ({"user": {"user_id": 1, "user_segment": 1}, "k": "ten"}, 422, "k", "got 'ten'"),
    ({"user": {"user_id": 1, "user_segment": 1}, "exclude": "all"}, 422, "exclude", "list of raw item ids"),
    ({"user": {"user_id": 1, "user_segment": 1}, "top": 3}, 422, "top", "unknown field; allowed"),
    ({"k": 3}, 422, "user", "missing"),
    ({"user": {"user_id": 1, "user_segment": 1, "history_item_id": list(range(10000))}}, 413, "body", r"bytes; at most 20,000 \(max_body_bytes\)"),
])
def test_bad_requests_get_4xx_with_the_field_and_the_service_keeps_serving(server, body, status, field, message):
    import re

    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/retrieve", json=body)
        assert r.status_code == status, r.text
        errors = r.json()["errors"]
        assert any(e["field"] == field and re.search(message, e["message"]) for e in errors), errors
        assert client.post("/v1/retrieve", json={"user": {"user_id": 1, "user_segment": 1}, "k": 3}).status_code == 200


def test_batch_limits_bad_json_and_other_endpoints(run, server):
    ok_user = {"user": {"user_id": 1, "user_segment": 1}, "k": 3}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/retrieve/batch", json={"requests": [ok_user] * 17})
        assert r.status_code == 422 and "give 1 to 16 (max_batch_requests)" in r.json()["errors"][0]["message"]
        r = client.post("/v1/retrieve/batch", json={"requests": [ok_user, {"user": {"bad": 1}}]})
        assert r.status_code == 422 and r.json()["errors"][0]["field"].startswith("requests[1].user")
        r = client.post("/v1/retrieve", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body"
        r = client.get("/v1/retrieve")  # only POST is answered in front of the router
        assert r.status_code == 405 and r.json()["errors"] == [{"field": "method", "message": "GET is not allowed on /v1/retrieve"}]
        r = client.get("/v2/retrieve")
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "path" and "the endpoints:" in r.json()["errors"][0]["message"]
        r = client.post("/v1/retrieve", content=b'{"user": {"user_id": 1, "user_segment": 1}, "k": 0}')
        assert r.status_code == 422 and r.headers["content-type"] == "application/json" and r.json()["error"] == "bad request"
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["ready"] is True
        meta = client.get("/v1/metadata").json()
        assert meta["items"]["count"] == 301 and meta["index"]["kind"] == "exact" and meta["request"]["max_k"] == 200
        assert set(meta["request"]["features"]) == {"user_id", "user_segment", "history_item_id"}
        text = client.get("/metrics").text
        for name in ("recsys_requests_total", "recsys_request_errors_total", "recsys_request_latency_seconds_bucket",
                     "recsys_batch_size_bucket", "recsys_oov_rate", "recsys_bundle_info"):
            assert name in text


def test_no_bundle_is_not_ready():
    with ServerThread(create_app(None)) as s:
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        assert httpx.get(f"{s.url}/readyz").status_code == 503
        assert httpx.post(f"{s.url}/v1/retrieve", json={"user": {}}).status_code == 503


def test_corrupt_bundle_refused_at_start(run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run[2], bad)
    (bad / "vocab" / "item_id.parquet").unlink()
    with pytest.raises(BundleError, match=r"vocab/item_id.parquet: missing"):
        create_app(bad)


def test_ids_are_matched_by_the_type_of_the_source_ids(run, server):
    """Issue 18: "exclude": ["24"] was ignored and "user_id": "110" silently became an unknown user."""
    users, _ = users_of(run, 3)
    user = users[0]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        top = client.post("/v1/retrieve", json={"user": user, "k": 10}).json()
        as_strings = {name: [str(x) for x in v] if isinstance(v, list) else str(v) for name, v in user.items()}
        same = client.post("/v1/retrieve", json={"user": as_strings, "k": 10}).json()
        assert same["items"] == top["items"] and same["oov_features"] == []  # decimal strings are the integers
        first = top["items"][0]["item_id"]
        r = client.post("/v1/retrieve", json={"user": user, "k": 10, "exclude": [str(first)]}).json()
        assert first not in [x["item_id"] for x in r["items"]]
        r = client.post("/v1/retrieve", json={"user": {**user, "user_id": "u110"}, "k": 10, "exclude": [24, "twenty-four", 1.5]})
        assert r.status_code == 422
        errors = {e["field"]: e["message"] for e in r.json()["errors"]}
        assert set(errors) == {"user.user_id", "exclude[1]", "exclude[2]"}
        assert "the ids of user_id are integers in the source" in errors["user.user_id"]
        assert "the ids of item_id are integers in the source" in errors["exclude[1]"]
        assert "got float 1.5" in errors["exclude[2]"]


def test_missing_features_get_the_oov_row_and_are_reported(run, server):
    users, _ = users_of(run, 1)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/retrieve", json={"user": {"user_id": users[0]["user_id"]}, "k": 5})
        assert r.status_code == 200, r.text
        assert r.json()["missing_features"] == ["user_segment", "history_item_id"] and len(r.json()["items"]) == 5
        r = client.post("/v1/retrieve", json={"user": {}, "k": 5})  # a new user with nothing known: still 5 items
        assert r.status_code == 200 and r.json()["missing_features"] == ["user_id", "user_segment", "history_item_id"]
        assert 'recsys_missing_features_total{feature="user_segment"}' in client.get("/metrics").text
        meta = client.get("/v1/metadata").json()["request"]["features"]
        assert meta["user_segment"].endswith("if missing: the OOV row") and meta["history_item_id"].endswith("if missing: an empty bag")
    # the OOV row is what the model gives an unknown id: a missing feature answers as an unknown one does
    bundle = run[2]
    from serving.service import LoadedService

    service = LoadedService.from_path(bundle)
    missing = service.encoder.parse({"user_id": users[0]["user_id"]})
    unknown = service.encoder.parse({"user_id": users[0]["user_id"], "user_segment": 10**15})
    assert torch.equal(service.user_vectors([missing]), service.user_vectors([unknown]))


def test_require_all_features_restores_the_strict_check(run):
    config = ServeConfig(require_all_features=True)
    with ServerThread(create_app(run[2], config)) as s:
        r = httpx.post(f"{s.url}/v1/retrieve", json={"user": {"user_id": 1}, "k": 5})
        assert r.status_code == 422
        assert r.json()["errors"] == [{"field": "user.user_segment", "message": r.json()["errors"][0]["message"]}]
        assert "missing; this single-valued feature is required" in r.json()["errors"][0]["message"]


@pytest.mark.parametrize("body", [
    b"[" * 9000 + b"]" * 9000,  # within the fixture's 20,000-byte limit; json.loads recursed past 1,000 levels
    b'{"user": {"user_id": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}}",
    b'{"requests": [' + b"{" * 3000 + b"}" * 3000 + b"]}",
])
def test_deeply_nested_json_gets_400_naming_the_body(server, body):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path in ("/v1/retrieve", "/v1/retrieve/batch"):
            r = client.post(path, content=body)
            assert r.status_code == 400, r.text
            assert r.json()["errors"][0]["field"] == "body" and "levels deep; at most 32" in r.json()["errors"][0]["message"]
        assert client.get("/healthz").status_code == 200


def test_port_0_prints_the_address_really_bound_once_it_answers(run):
    """Issue 18: `--port 0` never printed the port bound, and "serving on" came before the bind."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "serve", str(run[2]), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # the first line on stdout, printed once the server answers
        match = re.fullmatch(r"serving (\S+) on http://127\.0\.0\.1:(\d+)\n", line)
        assert match and match.group(1) == load_bundle(run[2]).bundle_id, line
        port = int(match.group(2))
        assert port > 0 and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["ready"] is True
    finally:
        proc.terminate()
        # uvicorn finishes in-flight requests, then re-raises the signal: the status a shell shows as 143
        assert proc.wait(timeout=30) == -15
