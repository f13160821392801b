"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis).

For every operation, every documented request media type (the vision endpoints take JSON and
multipart), schema-valid ("positive") and schema-violating ("negative") requests are generated
and sent to a real server running the tiny models. Every response must:
- never be a 5xx;
- use a status code, content type, headers and body that the schema documents for it;
- reject schema-invalid data with a 4xx (negative_data_rejection; JSON bodies and parameters,
  see MULTIPART_CHECKS for why not multipart).

Not checked: schemathesis' ``positive_data_acceptance``. A string that fits the schema's
``images`` items is almost never a base64 image, and a random text almost never a valid model
name, so the API rightly answers 400/404 to most schema-valid bodies.

The number of examples per operation is bounded (``ORTSERVE_FUZZ_EXAMPLES``, default 15) so the
file runs in well under a minute; raise it locally for a deeper search.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings
from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

EXAMPLES = int(os.environ.get("ORTSERVE_FUZZ_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Multipart cannot carry most schema violations: a negative ``model: []`` is serialised as no
# field at all, so the request is valid and rightly answered 200. Everything else is checked.
MULTIPART_CHECKS = [check for check in CHECKS if check is not negative_data_rejection]
# the same schema the server will serve (asserted below); built here so tests can be listed
SPEC: dict[str, Any] = create_app(Settings(model_repository=Path("unused"))).openapi()
# a body over ORTSERVE_MAX_BODY_BYTES (or with too many texts) is rightly refused with 413
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": ["400", "401", "404", "405", "413", "415", "422", "429"]
            }
        }
    }
)
SCHEMA = schemathesis.openapi.from_dict(SPEC, config=CONFIG)


def _targets() -> list[Any]:
    params = []
    for result in SCHEMA.get_all_operations():
        operation = result.ok()
        media_types = [body.media_type for body in operation.body] or [None]
        for media_type in media_types:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                label = (
                    f"{operation.method.upper()} {operation.path} {media_type or '-'} {mode.value}"
                )
                params.append(
                    pytest.param(operation.method, operation.path, media_type, mode, id=label)
                )
    return params


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, max_body_bytes=str(4 * 1024 * 1024), **TINY_DEFAULTS) as srv:
        yield srv


def test_the_server_serves_the_schema_under_test(server: Server) -> None:
    served = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert served == SPEC


@pytest.mark.parametrize(("method", "path", "media_type", "mode"), _targets())
def test_operation_conforms_to_its_schema(
    server: Server, method: str, path: str, media_type: str | None, mode: GenerationMode
) -> None:
    operation = SCHEMA[path][method]
    strategy = operation.as_strategy(mode, media_type=media_type)
    seen: list[int] = []

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failure report is enough
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        # negative generation may switch the body to another documented media type
        multipart = (case.media_type or "").startswith("multipart/")
        checks = MULTIPART_CHECKS if multipart else CHECKS
        response = case.call_and_validate(base_url=server.url, checks=checks, timeout=30)
        seen.append(response.status_code)

    try:
        fuzz()
    except Unsatisfiable:
        # nothing in this operation can violate the schema (no parameters, or only free strings)
        assert mode is GenerationMode.NEGATIVE
        pytest.skip("no schema-invalid request exists for this operation")
    assert seen
    assert all(code < 500 for code in seen)
