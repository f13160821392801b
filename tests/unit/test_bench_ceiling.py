"""benchmarks.ceiling: the no-op twin passes the service's own graph check and answers with the
real model's shapes and constants, and the ceiling arithmetic adds core time per item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from benchmarks.ceiling import ceiling, noop_twin
from service.app import create_app
from service.settings import Settings
from tests.support import tiny_models


def test_noop_twins_serve_through_the_service_with_the_real_shapes(tmp_path: Path) -> None:
    real, twins = tmp_path / "real", tmp_path / "twins"
    tiny_models.classifier(real / "clf")
    tiny_models.embedder(real / "emb", dims=8)
    for name in ("clf", "emb"):
        noop_twin(real / name, twins / name)
    settings = Settings(
        model_repository=twins, default_classify_model="clf", default_embed_model="emb"
    )
    with TestClient(create_app(settings)) as client:
        classified = client.post("/classify", json={"images": [red_png_b64()], "top_k": 3})
        assert classified.status_code == 200
        scores = [p["score"] for p in classified.json()["results"][0]["predictions"]]
        assert scores == pytest.approx([1 / 3] * 3)  # softmax of zero logits: uniform
        embedded = client.post("/embed", json={"inputs": ["one text", "two"]})
        assert embedded.status_code == 200
        vectors = np.asarray(embedded.json()["embeddings"])
        assert vectors.shape == (2, 8)
        assert np.allclose(vectors, 1 / np.sqrt(8))  # ones, normalised


def test_a_model_without_a_batch_axis_has_no_twin(tmp_path: Path) -> None:
    tiny_models.maskrcnn(tmp_path / "mrcnn")
    with pytest.raises(ValueError, match="only batched models"):
        noop_twin(tmp_path / "mrcnn", tmp_path / "twin")


def test_the_ceiling_adds_each_items_core_time() -> None:
    assert ceiling(100.0, 100.0) == pytest.approx(50.0)
    assert ceiling(1000.0, 100.0) == pytest.approx(1000 / 11)
    assert ceiling(100.0, 1e12) == pytest.approx(100.0)


def red_png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (250, 0, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
