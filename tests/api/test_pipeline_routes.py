"""POST /pipelines/{name} in process (the tiny repository's ``tiny-pipeline``: tiny-yolo → crop →
tiny-classifier). The end-to-end behaviour is in tests/e2e/test_pipelines.py."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from tests.api.conftest import b64, png


def red_quadrant() -> bytes:
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:32, :32] = (255, 0, 0)
    return png(arr)


def test_a_pipeline_answers_detections_with_classifications(client: TestClient) -> None:
    r = client.post("/pipelines/tiny-pipeline", json={"images": [b64(red_quadrant())]})
    assert r.status_code == 200, r.text
    [detection] = r.json()["results"][0]["detections"]
    assert detection["label"] == "red"
    assert detection["classification"]["predictions"][0]["label"] == "red"
    assert r.headers["x-crops"] == "1"


def test_the_route_is_documented_with_its_bodies_and_errors(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/pipelines/{name}"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "model" not in content["multipart/form-data"]["schema"]["properties"]
    assert {"200", "400", "404", "413", "415", "422", "503", "504"} <= set(operation["responses"])


def test_a_pipeline_is_listed_and_counts_for_readiness(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["tiny-pipeline"]["task"] == "pipeline"
    assert [s["step"] for s in models["tiny-pipeline"]["steps"]] == ["detect", "crop", "classify"]
    assert client.get("/health/ready").json()["models"]["tiny-pipeline"] == "ready"
