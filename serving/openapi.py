"""The HTTP API's OpenAPI 3.1 schema, written from the loaded bundle and the service's limits.

    curl -s localhost:8000/openapi.json
    .venv/bin/python -m pytest tests/unit/serving/test_api_fuzz.py -q

The retrieve endpoints are answered in front of FastAPI (:class:`serving.app.HotPaths`) and parse
their bodies themselves, so FastAPI cannot derive their schema; this module writes the whole
document instead, as the service validates it: the user features of the loaded bundle (their id
types, list lengths, which are required), ``k`` up to ``max_k``, ``exclude`` up to ``max_exclude``,
batches up to ``max_batch_requests``. The fuzz test generates requests from this document
(Schemathesis), so where the schema and the parser disagree, the test fails.
"""

from __future__ import annotations

from typing import Any

_INT64 = {"type": "integer", "minimum": -(1 << 63), "maximum": (1 << 63) - 1}
# a decimal string that always fits int64 (18 digits); longer ones are accepted by the parser when they fit
_DECIMAL_STRING = {"type": "string", "pattern": "^-?[0-9]{1,18}$"}

_ERROR = {
    "type": "object",
    "required": ["error", "errors"],
    "properties": {
        "error": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {"type": "object", "required": ["field", "message"],
                      "properties": {"field": {"type": "string"}, "message": {"type": "string"}}},
        },
    },
}


def _id_schema(string_ids: bool) -> dict[str, Any]:
    if string_ids:
        return {"anyOf": [{"type": "string"}, _INT64], "description": "the source's string token, or the raw id ingest gave it"}
    return {"anyOf": [_INT64, _DECIMAL_STRING], "description": "an integer id (or a string of its decimal digits)"}


def _user_schema(encoder) -> dict[str, Any]:
    properties, required = {}, []
    for f in encoder.features:
        one = _id_schema(f.string_ids)
        if f.multi_valued:
            properties[f.name] = {"type": "array", "items": one, "maxItems": f.max_length}
        else:
            properties[f.name] = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": 1}]}
        properties[f.name]["description"] = f"missing: {f.missing}"
        if f.missing == "required":
            required.append(f.name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, Any] | None, *errors: int, ok_type: str = "application/json") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ok is not None:
        out["200"] = {"description": "OK", "content": {ok_type: {"schema": ok}}}
    for status in errors:
        out[str(status)] = {"description": _REASONS[status], "content": {"application/json": {"schema": _ERROR}}}
    return out


_REASONS = {400: "body not JSON, or nested too deeply", 403: "admin endpoint from a non-loopback client",
            409: "reload refused (the bundle is missing or corrupt): the old one keeps serving",
            413: "body larger than max_body_bytes", 422: "a field is invalid (errors name each one)", 503: "no bundle loaded"}


def openapi_schema(service, config) -> dict[str, Any]:
    """The OpenAPI document of the service as it is now.

    Args:
        service (serving.service.LoadedService | None): the loaded bundle (None: no bundle, no user schema).
        config (serving.app.ServeConfig): the request limits.
    """
    if service is not None:
        user = _user_schema(service.encoder)
        item_id = _id_schema(bool(service.item_vocab.tokens))
    else:
        user, item_id = {"type": "object"}, {"anyOf": [{"type": "string"}, _INT64]}
    request = {
        "type": "object",
        "required": ["user"],
        "additionalProperties": False,
        "properties": {
            "user": user,
            "k": {"type": "integer", "minimum": 1, "maximum": config.max_k, "default": min(100, config.max_k)},
            "exclude": {"type": "array", "items": item_id, "maxItems": config.max_exclude, "default": []},
            "exclude_history": {"type": "boolean", "default": False},
        },
    }
    answer = {
        "type": "object",
        "required": ["items", "bundle", "oov_features", "missing_features"],
        "properties": {
            "items": {"type": "array", "items": {"type": "object", "required": ["item_id", "score"],
                                                 "properties": {"item_id": {"type": ["integer", "string"]}, "score": {"type": "number"}}}},
            "bundle": {"type": "string"},
            "oov_features": {"type": "array", "items": {"type": "string"}},
            "missing_features": {"type": "array", "items": {"type": "string"}},
        },
    }
    batch = {
        "type": "object",
        "required": ["requests"],
        "additionalProperties": False,
        "properties": {"requests": {"type": "array", "items": request, "minItems": 1, "maxItems": config.max_batch_requests}},
    }
    batch_answer = {"type": "object", "required": ["results", "bundle"],
                    "properties": {"results": {"type": "array", "items": answer}, "bundle": {"type": "string"}}}
    reload_result = {"type": "object", "required": ["ok", "bundle"],
                     "properties": {"ok": {"type": "boolean"}, "bundle": {"type": ["string", "null"]}}}
    anything = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "recsys retrieval", "version": "1",
                 "description": "Top-k items for a user's raw features (docs/serving.md)."},
        "paths": {
            "/v1/retrieve": {"post": {"operationId": "retrieve", "requestBody": _json_body(request),
                                      "responses": _responses(answer, 400, 413, 422, 503)}},
            "/v1/retrieve/batch": {"post": {"operationId": "retrieve_batch", "requestBody": _json_body(batch),
                                            "responses": _responses(batch_answer, 400, 413, 422, 503)}},
            "/healthz": {"get": {"operationId": "healthz", "responses": _responses(anything)}},
            "/readyz": {"get": {"operationId": "readyz", "responses": _responses(anything, 503)}},
            "/v1/metadata": {"get": {"operationId": "metadata", "responses": _responses(anything, 503)}},
            "/metrics": {"get": {"operationId": "metrics", "responses": _responses({"type": "string"}, ok_type="text/plain")}},
            "/admin/reload": {"post": {
                "operationId": "reload",
                "requestBody": _json_body({"type": "object", "properties": {"path": {"type": "string"}}, "additionalProperties": False},
                                          required=False),
                "responses": {**_responses(reload_result, 400, 403, 413, 422),
                              "409": {"description": _REASONS[409], "content": {"application/json": {"schema": {
                                  **reload_result, "required": ["ok", "bundle", "error", "errors"],
                                  "properties": {**reload_result["properties"], **_ERROR["properties"]}}}}}},
            }},
        },
    }
