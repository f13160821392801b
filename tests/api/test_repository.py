"""A repository that is still being filled: poll mode without a task's default model yet."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import b64, png, solid
from tests.support import tiny_models


def test_a_default_not_built_yet_is_503_being_built_and_the_rest_serves(tmp_path: Path) -> None:
    tiny_models.classifier(tmp_path / "clf")
    settings = Settings(
        model_repository=tmp_path,
        model_control="poll",
        repository_poll_s=3600,
        default_classify_model="clf",
        default_detect_model="coco-detector",
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/health/ready").status_code == 200
        image = b64(png(solid((255, 0, 0))))
        assert client.post("/classify", json={"images": [image]}).status_code == 200
        pending = client.post("/detect", json={"images": [image]})
        assert pending.status_code == 503
        assert "'coco-detector' is not in the repository yet" in pending.json()["error"]
        assert client.get("/v1/models").status_code == 200


def test_without_poll_mode_a_missing_default_is_404(tmp_path: Path) -> None:
    tiny_models.classifier(tmp_path / "clf")
    settings = Settings(model_repository=tmp_path, default_classify_model="clf")
    # from loopback: management is allowed there (service.auth) and the mode is what refuses
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        image = b64(png(solid((255, 0, 0))))
        assert client.post("/detect", json={"images": [image]}).status_code == 404
        refused = client.post("/v2/repository/models/clf/load")
        assert refused.status_code == 400
        assert "ORTSERVE_MODEL_CONTROL=none" in refused.json()["error"]
