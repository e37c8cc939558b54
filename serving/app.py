"""The retrieval HTTP service: FastAPI app over a :class:`~serving.service.LoadedService`.

    recsys serve bundles/tt --port 8000
    .venv/bin/python -m pytest tests/integration/test_serving.py -q

Endpoints::

    POST /v1/retrieve        {"user": {<feature>: id or [ids]}, "k": 100, "exclude": [ids], "exclude_history": false}
                             -> {"items": [{"item_id": id, "score": s}], "bundle": id, "oov_features": [...],
                                 "missing_features": [...]}
    POST /v1/retrieve/batch  {"requests": [<retrieve body>, ...]} -> {"results": [<retrieve answer>], "bundle": id}
    GET  /healthz            200 while the process serves
    GET  /readyz             200 with a bundle loaded, else 503
    GET  /v1/metadata        the bundle's summary and the request limits
    GET  /metrics            Prometheus text: requests, errors, latency, batch sizes, OOV rate
    POST /admin/reload       {"path": BUNDLE} (default: the bundle's own path): verify, then swap
                             atomically; loopback clients only unless admin_anywhere

    GET  /openapi.json       the API's OpenAPI schema (the request features of the loaded bundle)

Bad requests get a 4xx and ``{"error": ..., "errors": [{"field": "user.user_id", "message": ...}]}``:
400 body not JSON (or nested deeper than JSON_MAX_DEPTH), 413 body too large, 422 a field
(unknown feature, wrong type, k or batch above the limit), 403 admin from a non-loopback
address, 409 a reload refused. Nothing a request sends stops the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.features import FieldError, RequestError, short_repr
from serving.service import LoadedService, MicroBatcher, Query

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_RETRIEVE_KEYS = ("user", "k", "exclude", "exclude_history")
# No valid body nests deeper than 4 (batch > request > user > list); json.loads recurses per level and
# a few thousand levels raise RecursionError, so depth is checked on the raw bytes first.
JSON_MAX_DEPTH = 32
DEFAULT_K = 100  # a request without k gets min(DEFAULT_K, max_k) items


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of the service (``recsys serve`` flags).

    Args:
        max_k: the largest ``k`` a request may ask for.
        max_batch_requests: requests in one ``/v1/retrieve/batch`` body at most.
        max_exclude: items in one ``exclude`` list at most.
        max_body_bytes: request bodies above it get 413.
        max_batch: queries per micro-batch (one tower forward + one search).
        max_wait_ms: how long a micro-batch waits for more queries after its first (0: batches
            form from what queued up while the previous one computed).
        batch_thread: compute batches on a worker thread instead of inline on the event loop.
        admin_anywhere: allow ``/admin/*`` from non-loopback clients.
        index_overrides: serve-time index settings (``nprobe``, ``ef_search``, ``rerank``).
        require_all_features: every single-valued user feature required (422 when missing), whatever
            the bundle's missing-feature policy.
    """

    max_k: int = 1000
    max_batch_requests: int = 256
    max_exclude: int = 10000
    max_body_bytes: int = 1 << 20
    max_batch: int = 32
    max_wait_ms: float = 0.0
    batch_thread: bool = False
    admin_anywhere: bool = False
    index_overrides: dict[str, Any] = field(default_factory=dict)
    require_all_features: bool = False


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recsys_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.errors = Counter("recsys_request_errors", "requests answered with an error, by endpoint and reason", ["endpoint", "reason"], registry=r)
        self.latency = Histogram(
            "recsys_request_latency_seconds", "request latency by endpoint", ["endpoint"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.batch_size = Histogram("recsys_batch_size", "queries per micro-batch", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_latency = Histogram(
            "recsys_batch_latency_seconds", "tower forward + search per micro-batch", registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
        )
        self.feature_values = Counter("recsys_feature_values", "user feature ids received", registry=r)
        self.oov_values = Counter("recsys_oov_values", "user feature ids not in their vocabulary (mapped to the OOV index)", registry=r)
        self.oov_features = Counter("recsys_oov_features", "queries with an unknown id, by feature", ["feature"], registry=r)
        self.oov_rate = Gauge("recsys_oov_rate", "oov_values / feature_values since start", registry=r)
        self.missing_features = Counter("recsys_missing_features", "queries without a user feature (its policy applied), by feature",
                                        ["feature"], registry=r)
        self.reloads = Counter("recsys_reloads", "bundle reloads by result", ["result"], registry=r)
        self.exact_fallbacks = Gauge("recsys_exact_fallbacks", "queries the ANN index left short of k items, answered by exact "
                                     "search (since the serving bundle loaded)", registry=r)
        self.bundle_info = Gauge("recsys_bundle_info", "the serving bundle (1)", ["bundle_id"], registry=r)
        self._values = 0
        self._oov = 0

    def observe_users(self, users) -> None:
        for u in users:
            self._values += u.num_values
            self._oov += u.num_oov
            for f in u.oov_features:
                self.oov_features.labels(f).inc()
            for f in u.missing_features:
                self.missing_features.labels(f).inc()
        self.feature_values.inc(sum(u.num_values for u in users))
        self.oov_values.inc(sum(u.num_oov for u in users))
        self.oov_rate.set(self._oov / self._values if self._values else 0.0)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def _max_depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays / objects (brackets inside strings do not count); cheap when it holds few."""
    if raw.count(b"[") + raw.count(b"{") <= JSON_MAX_DEPTH:
        return 0
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _json(body: Any, status: int = 200) -> Response:
    """A JSON response encoded by orjson: a 100-item answer in ~6 us where ``json.dumps`` took ~90 us.

    The bytes equal ``json.dumps(body, separators=(",", ":"), ensure_ascii=False)`` (floats by their
    shortest round-trip repr, as ``json`` writes them).
    """
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, error: str, errors: list[FieldError] | None = None) -> Response:
    return _json({"error": error, "errors": [e.to_json() for e in errors or []]}, status)


class App:
    """The app's state: the current service (swapped atomically), the batcher, config, metrics."""

    def __init__(self, bundle_path: str | Path | None, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.bundle_path = Path(bundle_path) if bundle_path is not None else None
        self.service: LoadedService | None = None
        if self.bundle_path is not None:
            self._set(self._load(self.bundle_path))
        self.batcher = MicroBatcher(config.max_batch, config.max_wait_ms / 1000.0, on_batch=self._on_batch, thread=config.batch_thread)
        self.metrics.exact_fallbacks.set_function(lambda: self.service.retriever.exact_fallbacks if self.service else 0)
        self._reload_lock = asyncio.Lock()

    def _load(self, path: Path) -> LoadedService:
        return LoadedService.from_path(path, self.config.index_overrides or None, self.config.require_all_features)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_latency.observe(seconds)

    def _set(self, service: LoadedService) -> None:
        old = self.service
        self.service = service  # one reference assignment: requests admitted from now on use it
        if old is not None:
            self.metrics.bundle_info.remove(old.bundle_id)
        self.metrics.bundle_info.labels(service.bundle_id).set(1)

    # -- request parsing --------------------------------------------------------------------

    async def read_json(self, scope: dict[str, Any], receive) -> Any:
        """The request body as JSON, read from the ASGI ``receive`` channel within ``max_body_bytes``."""
        limit = self.config.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError([FieldError("body", f"{int(declared):,} bytes; at most {limit:,} (max_body_bytes)")], 413)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError([FieldError("body", "the client disconnected before sending all of it")], 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError([FieldError("body", f"more than {limit:,} bytes; at most {limit:,} (max_body_bytes)")], 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        depth = _max_depth(raw)
        if depth > JSON_MAX_DEPTH:
            raise RequestError([FieldError("body", f"nested {depth:,} levels deep; at most {JSON_MAX_DEPTH} (JSON_MAX_DEPTH)")], 400)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RequestError([FieldError("body", f"not JSON ({short_repr(str(exc))})")], 400) from None

    def parse_query(self, service: LoadedService, body: Any, path: str) -> Query:
        """A retrieve body -> :class:`Query` (raises :class:`RequestError` with every problem)."""
        prefix = f"{path}." if path else ""
        if not isinstance(body, dict):
            raise RequestError([FieldError(path or "body", f"got {type(body).__name__}; give an object with keys {list(_RETRIEVE_KEYS)}")])
        errors = [FieldError(f"{prefix}{key or chr(34) * 2}", f"unknown field; allowed: {list(_RETRIEVE_KEYS)}")  # "" named as ""
                  for key in body if key not in _RETRIEVE_KEYS]
        k = body.get("k", min(DEFAULT_K, self.config.max_k))  # the default never exceeds the service's own limit
        if isinstance(k, float) and k.is_integer():
            k = int(k)  # 15.0 is an integer to JSON Schema (and to the OpenAPI document)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.config.max_k:
            errors.append(FieldError(f"{prefix}k", f"got {short_repr(k)}; give an integer in [1, {self.config.max_k}] (max_k)"))
        exclude = body.get("exclude", [])
        excluded = np.empty(0, np.int64)
        if not isinstance(exclude, list):
            errors.append(FieldError(f"{prefix}exclude", f"got {type(exclude).__name__}; give a list of raw item ids"))
        elif len(exclude) > self.config.max_exclude:
            errors.append(FieldError(f"{prefix}exclude", f"got {len(exclude)} ids; at most {self.config.max_exclude} (max_exclude)"))
        elif exclude:
            try:
                excluded = service.item_indices(exclude, f"{prefix}exclude")
            except RequestError as exc:
                errors.extend(exc.errors)
        exclude_history = body.get("exclude_history", False)
        if not isinstance(exclude_history, bool):
            errors.append(FieldError(f"{prefix}exclude_history", f"got {short_repr(exclude_history)}; give true or false"))
        if "user" not in body:
            errors.append(FieldError(f"{prefix}user", "missing; give an object {feature: id or list of ids}"))
            raise RequestError(errors)
        try:
            user = service.encoder.parse(body["user"], f"{prefix}user")
        except RequestError as exc:
            errors.extend(exc.errors)
        if errors:
            raise RequestError(errors)
        if exclude_history and user.history_items is not None:
            excluded = np.union1d(excluded, user.history_items)
        return Query(user, k, excluded)

    @staticmethod
    def answer_json(answer, service: LoadedService, user) -> dict[str, Any]:
        return {
            "items": [{"item_id": i, "score": s} for i, s in zip(answer.items, answer.scores)],
            "bundle": service.bundle_id,
            "oov_features": user.oov_features,
            "missing_features": user.missing_features,
        }

    # -- endpoints --------------------------------------------------------------------------

    async def retrieve(self, scope: dict[str, Any], receive) -> Response:
        service = self.service
        if service is None:
            return _error(503, "no bundle loaded")
        body = await self.read_json(scope, receive)
        query = self.parse_query(service, body, "")
        self.metrics.observe_users([query.user])
        answer = await self.batcher.submit(service, query)
        return _json(self.answer_json(answer, service, query.user))

    async def retrieve_batch(self, scope: dict[str, Any], receive) -> Response:
        service = self.service
        if service is None:
            return _error(503, "no bundle loaded")
        body = await self.read_json(scope, receive)
        if not isinstance(body, dict) or set(body) != {"requests"} or not isinstance(body["requests"], list):
            raise RequestError([FieldError("requests", "give {\"requests\": [<retrieve body>, ...]}, no other keys")])
        requests = body["requests"]
        limit = self.config.max_batch_requests
        if not 1 <= len(requests) <= limit:
            raise RequestError([FieldError("requests", f"got {len(requests)} requests; give 1 to {limit} (max_batch_requests)")])
        errors, queries = [], []
        for i, item in enumerate(requests):
            try:
                queries.append(self.parse_query(service, item, f"requests[{i}]"))
            except RequestError as exc:
                errors.extend(exc.errors)
        if errors:
            raise RequestError(errors)
        self.metrics.observe_users([q.user for q in queries])
        answers = await asyncio.gather(*(self.batcher.submit(service, q) for q in queries))
        return _json({
            "results": [self.answer_json(a, service, q.user) for a, q in zip(answers, queries)],
            "bundle": service.bundle_id,
        })

    def metadata(self) -> Response:
        service = self.service
        if service is None:
            return _error(503, "no bundle loaded")
        c = self.config
        return JSONResponse({
            **service.bundle.summary(),
            "request": {"features": service.encoder.describe(), "max_k": c.max_k, "max_batch_requests": c.max_batch_requests,
                        "max_exclude": c.max_exclude, "max_body_bytes": c.max_body_bytes},
            "batching": {"max_batch": c.max_batch, "max_wait_ms": c.max_wait_ms},
            "index_settings": service.retriever.settings,
        })

    async def reload(self, request: Request) -> Response:
        host = request.client.host if request.client else ""
        if not self.config.admin_anywhere and host not in LOOPBACK:
            return _error(403, "forbidden", [FieldError("client", f"admin endpoints answer loopback clients only (this client: {host}); "
                                                             "start with --admin-anywhere to allow others")])
        raw = await self.read_json(request.scope, request.receive) if int(request.headers.get("content-length") or 0) else {}
        if not isinstance(raw, dict) or set(raw) - {"path"}:
            raise RequestError([FieldError("body", "give {\"path\": BUNDLE} or an empty body (reload the current path)")])
        path = raw.get("path", str(self.bundle_path) if self.bundle_path else None)
        if not isinstance(path, str):
            raise RequestError([FieldError("path", "give the bundle folder as a string")])
        result = await self.reload_path(Path(path))
        if not result["ok"]:
            result = {**result, "error": "reload refused", "errors": [{"field": "path", "message": result["reason"]}]}
        return JSONResponse(result, status_code=200 if result["ok"] else 409)

    async def reload_path(self, path: Path) -> dict[str, Any]:
        """Load + verify ``path`` off the event loop, then swap; a bad bundle leaves the old one serving."""
        async with self._reload_lock:
            old = self.service.bundle_id if self.service else None
            try:
                service = await asyncio.to_thread(self._load, path)
            except Exception as exc:  # BundleError names the file; anything else is reported as is
                self.metrics.reloads.labels("refused").inc()
                return {"ok": False, "reason": str(exc), "bundle": old}
            self._set(service)
            self.bundle_path = path
            self.metrics.reloads.labels("ok").inc()
            return {"ok": True, "bundle": service.bundle_id, "previous": old}


def _request_error(exc: RequestError) -> Response:
    return _error(exc.status, "bad request" if exc.status != 413 else "body too large", exc.errors)


class RetrievalApp(FastAPI):
    """FastAPI with the retrieve endpoints in front of its stack (:class:`HotPaths`) and every
    request counted and timed (:class:`ObserveMiddleware`, outermost)."""

    def build_middleware_stack(self):
        state = self.state.recsys
        return ObserveMiddleware(HotPaths(super().build_middleware_stack(), state), state.metrics)


class HotPaths:
    """ASGI: ``POST /v1/retrieve`` and ``POST /v1/retrieve/batch`` answered directly, everything else by FastAPI.

    FastAPI's route (per-request dependency solving: ~0.7 ms of CPU here), then Starlette's
    router, exception middlewares and ``Request`` objects, cost more than the answer's JSON; these
    two endpoints parse and validate their bodies themselves, so they skip all of it. Other
    methods on these paths fall through (405 from the router).
    """

    def __init__(self, app, state: App):
        self.app = app
        self.state = state
        self.routes = {"/v1/retrieve": state.retrieve, "/v1/retrieve/batch": state.retrieve_batch}

    async def __call__(self, scope, receive, send):
        handler = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            return await self.app(scope, receive, send)
        try:
            response = await handler(scope, receive)
        except RequestError as exc:
            response = _request_error(exc)
        except Exception:  # a bug, not the request: logged with its traceback, the service keeps serving
            logging.getLogger("recsys.serve").exception("%s failed", scope["path"])
            response = _error(500, "internal error (logged by the service)")
        await response(scope, receive, send)


def create_app(bundle_path: str | Path | None, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``bundle_path`` (loaded and verified here: a bad bundle raises)."""
    state = App(bundle_path, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.batcher.start()
        yield
        await state.batcher.stop()

    app = RetrievalApp(title="recsys retrieval", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.recsys = state
    m = state.metrics

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError):
        return _request_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # the router's 404 / 405 in the service's error shape, naming what was wrong
        field, message = ("method", f"{request.method} is not allowed on {request.url.path}") if exc.status_code == 405 else (
            "path", f"{request.url.path}: {exc.detail}; the endpoints: {sorted(_ENDPOINTS)}")
        return _error(exc.status_code, str(exc.detail), [FieldError(field, message)])

    # Routes of the hot paths only for the router's 405 on other methods (HotPaths answers POST).
    app.router.routes.append(Route("/v1/retrieve", _not_reached, methods=["POST"]))
    app.router.routes.append(Route("/v1/retrieve/batch", _not_reached, methods=["POST"]))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if state.service is None:
            return _error(503, "no bundle loaded")
        return {"ready": True, "bundle": state.service.bundle_id}

    @app.get("/v1/metadata")
    async def metadata():
        return state.metadata()

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload(request: Request):
        return await state.reload(request)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi():
        from serving.openapi import openapi_schema

        return JSONResponse(openapi_schema(state.service, state.config))

    return app


async def _not_reached(_request: Request) -> Response:
    raise RuntimeError("POST /v1/retrieve* is answered by HotPaths before the router")


class ObserveMiddleware:
    """Counts and times every request (a plain ASGI middleware: Starlette's BaseHTTPMiddleware
    costs a task and a stream per request)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            m = self.metrics
            m.latency.labels(endpoint).observe(time.perf_counter() - start)
            m.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                m.errors.labels(endpoint, str(status)).inc()


_ENDPOINTS = {"/v1/retrieve", "/v1/retrieve/batch", "/healthz", "/readyz", "/v1/metadata", "/metrics", "/admin/reload", "/openapi.json"}
