"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), seeded.

For every operation and every documented request media type (the vision endpoints take JSON and
multipart), requests are generated in three modes and sent to a real server running the tiny
models:
- ``positive``: anything the served schema allows. Every response must be documented (status,
  content type, headers, body schema) and never a 5xx; most are rightly a 4xx (a string that
  fits ``images`` is almost never an image, a random name almost never a model).
- ``negative``: requests that violate the schema; each must be refused with a 4xx
  (``negative_data_rejection``; JSON bodies and parameters, see MULTIPART_CHECKS).
- ``valid``: the inference requests a client could really send, from VALID_SPEC: the served
  schema narrowed to what the server must accept (``images`` are real PNG, JPEG, WebP, GIF, BMP
  and TIFF pictures of random sizes and modes, base64 in JSON or file parts in multipart; texts
  are words, some out of the vocabulary; model names, versions and ``dimensions`` the tiny
  models have). Every one must be a 200 whose body fits the schema and has one result per
  input (``positive_data_acceptance`` plus the checks in ``_check_valid_answer``).

Generation is seeded: ``ORTSERVE_FUZZ_SEED`` (default 32) and the test's id give each test its
own fixed stream, so a failure reproduces. ``ORTSERVE_FUZZ_EXAMPLES`` (default 15) bounds the
examples per test, so the suite's run is short; ``make fuzz`` runs many more.
"""

from __future__ import annotations

import base64
import copy
import io
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings
from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS, WORDS

EXAMPLES = int(os.environ.get("ORTSERVE_FUZZ_EXAMPLES", "15"))
SEED = int(os.environ.get("ORTSERVE_FUZZ_SEED", "32"))
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
VALID_CHECKS = [*MULTIPART_CHECKS, positive_data_acceptance]
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

# -- valid data ----------------------------------------------------------------------------------
IMAGE_B64 = "ortserve-image-base64"  # a real picture, base64 (sometimes as a data: URI)
IMAGE_BYTES = "ortserve-image-bytes"  # a real picture's bytes, for multipart file parts
TEXT = "ortserve-text"  # words the tiny embedder knows, and some it does not
MAX_IMAGES = 3  # per valid request: enough for batching, few enough for a quick run
MAX_TEXTS = 8
EMBED_DIMS = 8  # the tiny embedder's output
# the longest text: 14 words + [CLS] + [SEP] = the tiny embedder's max_length (16), so
# truncate=false is never rightly refused
MAX_WORDS = 14


@st.composite
def pictures(draw: st.DrawFn) -> tuple[str, bytes]:
    """(format, encoded bytes) of a small picture: smooth noise with a few solid blocks, in
    a mode the format can store."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]))
    modes = {
        "PNG": ["RGB", "RGBA", "L", "LA", "P"],
        "JPEG": ["RGB", "L", "CMYK"],
        "WEBP": ["RGB", "RGBA"],
        "GIF": ["P", "L"],
        "BMP": ["RGB", "L", "P"],
        "TIFF": ["RGB", "RGBA", "L", "CMYK"],
    }[fmt]
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    for _ in range(draw(st.integers(0, 3))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        picture.paste(
            colour, (x, y, min(width, x + width // 2 + 1), min(height, y + 1 + height // 2))
        )
    buf = io.BytesIO()
    picture.convert(mode).save(buf, format=fmt)
    return fmt, buf.getvalue()


@st.composite
def base64_pictures(draw: st.DrawFn) -> str:
    fmt, data = draw(pictures())
    encoded = base64.b64encode(data).decode()
    if draw(st.booleans()):  # the schema accepts a data: URI prefix
        encoded = f"data:image/{fmt.lower()};base64,{encoded}"
    return encoded


texts = st.lists(
    st.sampled_from([*WORDS, "Cat", "DOG", "zebra", "café", "日本", "naïve"]),
    min_size=1,
    max_size=MAX_WORDS,
).map(" ".join)

schemathesis.openapi.format(IMAGE_B64, base64_pictures())
schemathesis.openapi.format(IMAGE_BYTES, pictures().map(lambda picture: picture[1]))
schemathesis.openapi.format(TEXT, texts)

TASK_MODELS = {
    "/classify": ["tiny-classifier"],
    "/detect": ["tiny-yolo", "tiny-yolov5", "tiny-nanodet", "tiny-tv-detector"],
    "/segment": ["tiny-seg", "tiny-maskrcnn", "tiny-yolo-seg"],
    "/embed": ["tiny-embedder"],
    "/v1/embeddings": ["tiny-embedder"],
    "/pipelines/{name}": [],
}
MODEL_NAMES = sorted({m for models in TASK_MODELS.values() for m in models})
# the GET operations whose path names a model: valid when it names a served one
MODEL_GETS = [
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/config",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/versions/{version}/ready",
]
VALID_OPERATIONS = [("POST", path) for path in TASK_MODELS] + [("GET", p) for p in MODEL_GETS]


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` → ``X``: a valid request leaves an optional field out rather than sending
    null, which multipart could only spell as the text "null"."""
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1 and len(schema["anyOf"]) == 2:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**rest, **options[0]}
    return schema


def _valid_properties(properties: dict[str, Any], path: str) -> dict[str, Any]:
    """A request body's properties narrowed to values the server must accept."""
    models = TASK_MODELS[path]
    text = {"type": "string", "format": TEXT}
    narrowed: dict[str, Any] = {}
    for name, schema in properties.items():
        schema = _without_null(schema)
        if name == "images":
            item = {"type": "string", "format": IMAGE_B64}
            schema = {"type": "array", "minItems": 1, "maxItems": MAX_IMAGES, "items": item}
        elif name == "file":  # a file part, as schemathesis recognises one (OpenAPI 3.1)
            item = {
                "type": "string",
                "format": IMAGE_BYTES,
                "contentMediaType": "application/octet-stream",
            }
            schema = {"type": "array", "minItems": 1, "maxItems": MAX_IMAGES, "items": item}
        elif name == "model":
            schema = {"type": "string", "enum": models}
        elif name == "model_version":
            schema = {"type": "integer", "enum": [1]}
        elif name == "classes":  # labels differ per model: an unknown one is rightly a 400
            continue
        elif name in ("inputs", "input"):  # /embed, /v1/embeddings (token ids are a 400)
            texts_list = {"type": "array", "minItems": 1, "maxItems": MAX_TEXTS, "items": text}
            schema = {"anyOf": [text, texts_list]}
        elif name == "dimensions":
            schema = {"type": "integer", "minimum": 1, "maximum": EMBED_DIMS}
        narrowed[name] = schema
    return narrowed


def _valid_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The served schema narrowed to requests the tiny-model server must answer with a 200."""
    valid = copy.deepcopy(spec)
    components = valid["components"]["schemas"]
    for path in TASK_MODELS:
        operation = valid["paths"][path]["post"]
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "name":  # /pipelines/{name}
                parameter["schema"] = {"type": "string", "enum": ["tiny-pipeline"]}
        for content in operation["requestBody"]["content"].values():
            schema = content["schema"]
            if "$ref" in schema:
                schema = components[schema["$ref"].rsplit("/", 1)[1]]
            schema["properties"] = _valid_properties(schema["properties"], path)
            schema["additionalProperties"] = False  # the multipart form's unknown fields: a 422
    for path in MODEL_GETS:
        for parameter in valid["paths"][path]["get"]["parameters"]:
            values = MODEL_NAMES if parameter["name"] == "name" else ["1"]
            parameter["schema"] = {"type": "string", "enum": values}
    return valid


VALID_SPEC = _valid_spec(SPEC)
VALID_SCHEMA = schemathesis.openapi.from_dict(
    VALID_SPEC,
    config=schemathesis.Config.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": ["200"]}}}
    ),
)


def _body(case: schemathesis.Case[Any]) -> dict[str, Any]:
    return case.body if isinstance(case.body, dict) else {}


def _sendable(case: schemathesis.Case[Any]) -> bool:
    """render=true needs exactly one image (more is rightly a 400)."""
    body = _body(case)
    if body.get("render") is True:
        return len(body.get("images") or body.get("file") or []) == 1
    return True


def _check_valid_answer(case: schemathesis.Case[Any], response: Response) -> None:
    """A valid request's answer: 200, and one result per input."""
    assert response.status_code == 200, (response.status_code, response.text[:500])
    body = _body(case)
    content_type = response.headers.get("content-type", [""])[0]
    if body.get("render") is True:
        assert content_type.startswith(("image/png", "image/jpeg")), content_type
        with Image.open(io.BytesIO(response.content)) as rendered:
            rendered.verify()
        return
    assert content_type.startswith("application/json"), content_type
    answer = response.json()
    inputs = body.get("images") or body.get("file")
    if inputs is not None:
        assert len(answer["results"]) == len(inputs), answer
    texts = body.get("inputs", body.get("input"))
    if texts is not None:
        count = 1 if isinstance(texts, str) else len(texts)
        vectors = answer["embeddings"] if "embeddings" in answer else answer["data"]
        assert len(vectors) == count, answer


# -- the tests -----------------------------------------------------------------------------------
MODES = {"positive": GenerationMode.POSITIVE, "negative": GenerationMode.NEGATIVE}


def _targets() -> list[Any]:
    params = []
    for schema, modes in ((SCHEMA, ("positive", "negative")), (VALID_SCHEMA, ("valid",))):
        for result in schema.get_all_operations():
            operation = result.ok()
            method = operation.method.upper()
            if modes == ("valid",) and (method, operation.path) not in VALID_OPERATIONS:
                continue
            media_types = [body.media_type for body in operation.body] or [None]
            for media_type in media_types:
                for mode in modes:
                    label = f"{method} {operation.path} {media_type or '-'} {mode}"
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
    request: pytest.FixtureRequest,
    server: Server,
    method: str,
    path: str,
    media_type: str | None,
    mode: str,
) -> None:
    valid = mode == "valid"
    operation = (VALID_SCHEMA if valid else SCHEMA)[path][method]
    strategy = operation.as_strategy(
        MODES.get(mode, GenerationMode.POSITIVE), media_type=media_type
    )
    if valid:
        # as_strategy prefers media_type but may pick another documented one: keep each test
        # to its own here (both are covered, each by its test)
        strategy = strategy.filter(lambda case: case.media_type == media_type and _sendable(case))
    seen: Counter[int] = Counter()
    sent: Counter[str] = Counter()  # cases by the media type really sent

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failure report is enough
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case[Any]) -> None:
        # negative generation may switch the body to another documented media type
        multipart = (case.media_type or "").startswith("multipart/")
        checks = VALID_CHECKS if valid else MULTIPART_CHECKS if multipart else CHECKS
        response = case.call_and_validate(base_url=server.url, checks=checks, timeout=30)
        seen[response.status_code] += 1
        sent[case.media_type or "-"] += 1
        if valid:
            _check_valid_answer(case, response)

    # each test its own fixed stream: the same cases on every run with the same seed
    seeded = seed(SEED * 1_000_003 + zlib.crc32(request.node.callspec.id.encode()))(fuzz)
    try:
        seeded()
    except Unsatisfiable:
        # nothing in this operation can violate the schema (no parameters, or only free strings)
        assert mode == "negative"
        pytest.skip("no schema-invalid request exists for this operation")
    print(
        f"\nfuzz {request.node.callspec.id}: {sum(seen.values())} cases (seed {SEED}; "
        f"{', '.join(f'{k} {n}' for k, n in sorted(sent.items()))}), "
        f"statuses {dict(sorted(seen.items()))}"
    )
    assert seen
    assert all(code < 500 for code in seen)
    if valid:
        assert set(seen) == {200}, seen
