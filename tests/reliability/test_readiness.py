"""/health/ready is 503 while models load and warm up, once a model's batcher has died, and
during shutdown; /v1/models says which model and why."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.api.conftest import b64, png, solid
from tests.reliability.models import slow_classifier
from tests.support.server import free_port, launched, running_server
from tests.support.tiny_models import TINY_DEFAULTS, classifier


def test_the_port_opens_at_once_live_while_the_start_up_models_warm_up(tmp_path: Path) -> None:
    """Control mode none (the default): /health/live answers from the start, /health/ready is
    503 naming the loading model until every model is warm, then 200 (issue 30)."""
    classifier(tmp_path / "tiny-classifier")
    slow_classifier(tmp_path / "slow", work=400, max_batch_size=8)  # its warm-up takes seconds
    port = free_port()
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(tmp_path),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_PORT": str(port),
        "ORTSERVE_GRPC_PORT": "0",
        "ORTSERVE_INTRA_OP_THREADS": "1",
        "ORTSERVE_DEFAULT_CLASSIFY_MODEL": "tiny-classifier",
    }
    url = f"http://127.0.0.1:{port}"
    with launched(
        [sys.executable, "-m", "service"], url, ready_path="/health/live", env=env
    ) as srv:
        seen: list[tuple[int, int]] = []
        while not seen or seen[-1][1] != 200:
            live = httpx.get(url + "/health/live", timeout=5).status_code
            ready = httpx.get(url + "/health/ready", timeout=5)
            seen.append((live, ready.status_code))
            if ready.status_code == 503:
                assert ready.json()["status"] == "not_ready"
            assert srv.process.poll() is None, srv.log_tail()
            time.sleep(0.05)
        classified = httpx.post(
            url + "/classify", json={"images": [b64(png(solid((255, 0, 0))))]}, timeout=10
        )
    assert all(live == 200 for live, _ in seen), seen
    assert (200, 503) in seen, "never saw the server live but not ready while models warmed up"
    assert classified.status_code == 200


def test_ready_is_503_naming_the_loading_model_until_its_warm_up_is_done(tmp_path: Path) -> None:
    # a load at runtime (explicit mode) shows the model itself as loading
    classifier(tmp_path / "tiny-classifier")
    with running_server(
        tmp_path,
        model_control="explicit",
        intra_op_threads="1",
        default_classify_model="tiny-classifier",
    ) as srv:
        slow_classifier(tmp_path / "slow", work=400, max_batch_size=8)
        loader = threading.Thread(
            target=lambda: httpx.post(srv.url + "/v2/repository/models/slow/load", timeout=120)
        )
        loader.start()
        seen: list[tuple[int, dict[str, str]]] = []
        listed: list[str] = []
        while loader.is_alive():
            r = httpx.get(srv.url + "/health/ready", timeout=5)
            seen.append((r.status_code, r.json()["models"]))
            models = httpx.get(srv.url + "/v1/models", timeout=5).json()["models"]
            listed += [m["status"] for m in models if m["name"] == "slow"]
            time.sleep(0.05)
        loader.join()
        done = httpx.get(srv.url + "/health/ready", timeout=5)
    assert (done.status_code, done.json()["models"]) == (
        200,
        {"slow": "ready", "tiny-classifier": "ready"},
    )
    loading = [models for status, models in seen if status == 503]
    assert loading, "never saw the server unready while the model warmed up"
    assert all(models.get("slow") == "loading" for models in loading), loading
    assert "loading" in listed


def test_ready_is_503_and_the_model_unhealthy_once_its_batcher_has_died(tiny_repo: Path) -> None:
    app = create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))
    with TestClient(app) as client:
        assert client.get("/health/ready").status_code == 200
        batcher = app.state.registry.models["tiny-classifier"].latest.batcher
        # not an item: the collector fails on it as it would on any bug, and dies
        client.portal.call(batcher._queue.put_nowait, None)
        for _ in range(100):
            if not batcher.healthy:
                break
            time.sleep(0.01)
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["models"]["tiny-classifier"] == "unhealthy"
        assert ready.json()["models"]["tiny-yolo"] == "ready"
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["tiny-classifier"]["status"] == "unhealthy"
        assert listed["tiny-classifier"]["versions"][0]["status"] == "unhealthy"
        # the others keep serving
        assert client.post("/embed", json={"inputs": "cat dog"}).status_code == 200


def test_ready_is_503_once_shutdown_has_begun(tiny_repo: Path) -> None:
    app = create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))
    with TestClient(app) as client:
        assert client.get("/health/ready").status_code == 200
    # the lifespan has shut down (as on SIGTERM); a request still reaching the app hears 503

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            return await c.get("/health/ready")

    response = asyncio.run(ask())
    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert app.state.core.started is False
