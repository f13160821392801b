"""OpenAI-compatible POST /v1/embeddings, in process (the real openai client is in tests/e2e)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.support.tiny_models import TINY_DEFAULTS

TEXTS = ["cat dog", "a red truck on the sea", "apple"]


def test_response_has_openais_shape_and_matches_embed(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": "tiny-embedder"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == "tiny-embedder"
    assert [d["object"] for d in body["data"]] == ["embedding"] * 3
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    ours = client.post("/embed", json={"inputs": TEXTS}).json()
    for d, want in zip(body["data"], ours["embeddings"], strict=True):
        np.testing.assert_allclose(d["embedding"], want, atol=1e-6)
    assert body["usage"] == ours["usage"]
    assert body["usage"]["prompt_tokens"] > 0
    assert "x-inference-time-ms" in r.headers


def test_a_single_string_and_the_default_model(client: TestClient) -> None:
    body = client.post("/v1/embeddings", json={"input": "cat"}).json()
    assert body["model"] == "tiny-embedder"
    assert len(body["data"]) == 1
    assert len(body["data"][0]["embedding"]) == 8


def test_base64_is_little_endian_float32(client: TestClient) -> None:
    floats = client.post("/v1/embeddings", json={"input": TEXTS}).json()
    packed = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"})
    for f, b in zip(floats["data"], packed.json()["data"], strict=True):
        vector = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(vector, np.asarray(f["embedding"], np.float32))


def test_dimensions_truncates_and_renormalises(client: TestClient) -> None:
    full = client.post("/v1/embeddings", json={"input": TEXTS}).json()
    short = client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": 3}).json()
    for f, s in zip(full["data"], short["data"], strict=True):
        head = np.asarray(f["embedding"][:3])
        np.testing.assert_allclose(s["embedding"], head / np.linalg.norm(head), atol=1e-6)
        assert np.linalg.norm(s["embedding"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"input": "cat", "dimensions": 9}, 400, "dimensions", "bad_request"),
        ({"input": "cat", "dimensions": 0}, 400, "dimensions", "invalid_value"),
        ({"input": [1, 2, 3]}, 400, "input", "bad_request"),
        ({"input": [[1, 2], [3]]}, 400, "input", "bad_request"),
        ({"input": []}, 400, "input", "invalid_value"),
        ({"input": "   "}, 400, None, "validation_error"),
        ({"input": "cat", "encoding_format": "int8"}, 400, "encoding_format", "invalid_value"),
        ({"input": "cat", "temperature": 1}, 400, "temperature", "invalid_value"),
        ({"input": "cat", "model": "text-embedding-3-small"}, 404, None, "model_not_found"),
        ({"input": "cat", "model": "tiny-classifier"}, 400, None, "bad_request"),
    ],
)
def test_errors_have_openais_shape(
    client: TestClient, body: dict, status: int, param: str | None, code: str
) -> None:
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


def test_invalid_json_is_an_openai_400(client: TestClient) -> None:
    r = client.post(
        "/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["code"] == "bad_request"
    assert "not valid JSON" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def keyed_client(tiny_repo: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=tiny_repo, api_keys="sk-test", **TINY_DEFAULTS))  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c


def test_a_missing_api_key_is_an_openai_401(keyed_client: TestClient) -> None:
    r = keyed_client.post("/v1/embeddings", json={"input": "cat"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.json()["error"]["code"] == "invalid_api_key"
    ok = keyed_client.post(
        "/v1/embeddings", json={"input": "cat"}, headers={"Authorization": "Bearer sk-test"}
    )
    assert ok.status_code == 200
