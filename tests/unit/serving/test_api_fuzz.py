"""The HTTP API fuzzed from its own OpenAPI schema (Schemathesis, property-based, seeded, bounded):
every endpoint, valid and invalid bodies; no 5xx, responses as the schema says, every 4xx names a field.

    .venv/bin/python -m pytest tests/unit/serving/test_api_fuzz.py -q

The app runs in process (Schemathesis' ASGI transport, lifespan started); /admin/reload is fuzzed
with ``admin_anywhere`` (the in-process client is not a loopback address), so random paths are tried
and refused (409) while the bundle keeps serving. Cases are drawn with ``schema.as_strategy`` under
``hypothesis.given`` (Schemathesis' own ``from_fixture`` parametrisation reads a pytest node attribute
that pytest 9 removed).
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from serving.app import ServeConfig, create_app

OPERATIONS = {("POST", "/v1/retrieve"), ("POST", "/v1/retrieve/batch"), ("GET", "/healthz"), ("GET", "/readyz"),
              ("GET", "/v1/metadata"), ("GET", "/metrics"), ("POST", "/admin/reload")}


def client_errors_name_a_field(ctx, response, case):
    """Every 4xx carries ``errors: [{field, message}]``, each with a non-empty field."""
    if 400 <= response.status_code < 500:
        body = response.json()
        fields = [e.get("field") for e in body.get("errors", [])]
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise AssertionError(f"{response.status_code} without a named field: {body}")


@pytest.mark.filterwarnings("ignore")
def test_api_fuzz(fp32_bundle):
    config = ServeConfig(max_k=50, max_batch_requests=8, max_exclude=20, max_body_bytes=50_000, admin_anywhere=True)
    app = create_app(fp32_bundle, config)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert {(m.upper(), p) for p, ops in schema.raw_schema["paths"].items() for m in ops} == OPERATIONS
    bundle_id = app.state.recsys.service.bundle_id
    seen: Counter = Counter()

    @given(case=st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)))
    @seed(18)
    @settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        response = case.call_and_validate(additional_checks=[client_errors_name_a_field])
        seen[(case.method, case.path, response.status_code)] += 1

    fuzz()
    assert {(m, p) for m, p, _ in seen} == OPERATIONS, seen
    assert all(status < 500 for _, _, status in seen)
    assert seen[("POST", "/v1/retrieve", 200)] and seen[("POST", "/v1/retrieve", 422)], seen
    assert app.state.recsys.service.bundle_id == bundle_id  # no reload of a random path replaced the bundle
