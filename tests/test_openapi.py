"""The OpenAPI document matches what the running app really answers (schemathesis)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from vectorize.http.openapi import SPEC

schema = schemathesis.openapi.from_dict(SPEC)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(case, live_api: str) -> None:
    # Valid-looking input may still be refused (an unknown job is a documented 404), so the
    # "positive data must be accepted" check does not apply; everything else does, including
    # no 5xx, documented status codes, content types and response schemas.
    case.call_and_validate(base_url=live_api, excluded_checks=[schemathesis.checks.positive_data_acceptance])


def test_document_is_served(live_api: str) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{live_api}/api/v1/openapi.json") as response:
        served = json.loads(response.read())
    assert served["openapi"].startswith("3.") and set(served["paths"]) >= {"/api/v1/table", "/api/v1/search", "/health"}
