"""Faults: a model whose run raises, a model that cannot load (strict and non-strict start-up).

Real processes throughout: exit codes, logs and the HTTP answers are what operators see.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.errors import InferenceFailedError
from service.runtime.batcher import DynamicBatcher
from tests.reliability.models import faulty_classifier, unloadable_model
from tests.support.server import REPO_ROOT, Server, free_port, running_server
from tests.support.tiny_models import TINY_DEFAULTS, build_repository, classifier, embedder


def png_b64(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


RED, BLUE = png_b64((255, 0, 0)), png_b64((0, 0, 255))  # red breaks the faulty graph


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = build_repository(tmp_path_factory.mktemp("faulty-repo"))
    faulty_classifier(root / "faulty")
    with running_server(root, **TINY_DEFAULTS) as srv:
        yield srv


def _stats(server: Server, name: str) -> dict[str, float]:
    models = httpx.get(server.url + "/v1/models", timeout=10).json()["models"]
    return next(m for m in models if m["name"] == name)["batching"]


async def _classify_together(url: str, images: list[str], model: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/classify",
                    json={"images": [image], "model": model},
                    headers={"x-request-id": f"fault-test-{i}"},
                )
                for i, image in enumerate(images)
            )
        )


def test_a_failing_run_fails_only_the_request_that_broke_it(faulty_server: Server) -> None:
    """Seven good images and one that breaks the graph arrive together and share a batch. The
    run fails; the batch is retried in halves, so only the culprit gets the 500 (with its own
    request id, no ONNX Runtime text) and its neighbours their normal answers.

    Concurrent requests usually share a batch but need not (the first can start alone), so the
    round is repeated until the log shows a bisected batch; every round must answer correctly."""
    images = [BLUE] * 3 + [RED] + [BLUE] * 4
    for _ in range(5):
        before, bisected = _stats(faulty_server, "faulty"), _bisections(faulty_server)
        responses = asyncio.run(_classify_together(faulty_server.url, images, "faulty"))
        for i, response in enumerate(responses):
            assert response.headers["x-request-id"] == f"fault-test-{i}"
            if images[i] is RED:
                assert response.status_code == 500, response.text
                body = response.json()
                assert body["error_type"] == "inference_failed"
                assert body["request_id"] == f"fault-test-{i}"
                assert "faulty" in body["error"]
                for internal in ("Reshape", "ONNXRuntimeError", "onnxruntime", "Traceback"):
                    assert internal not in response.text
            else:
                assert response.status_code == 200, response.text
                assert response.json()["results"][0]["predictions"][0]["label"] == "blue"
        after = _stats(faulty_server, "faulty")
        assert after["failed_batches"] > before["failed_batches"]
        assert after["items"] - before["items"] == 7  # every good image ran once it was isolated
        if _bisections(faulty_server) > bisected:
            break  # the culprit really shared a batch with the others
    else:
        pytest.fail("in 5 rounds the failing image never shared a batch with the good ones")
    log = faulty_server.log()
    assert "Reshape" in log  # the operator sees the real error...
    assert "fault-test-3" in log  # ...and the id the client was given


def _bisections(server: Server) -> int:
    return server.log().count("retrying in halves")


def test_the_model_keeps_serving_and_other_models_are_unaffected(faulty_server: Server) -> None:
    for _ in range(3):  # broken runs, then good ones, on the same model
        responses = asyncio.run(_classify_together(faulty_server.url, [RED, RED], "faulty"))
        assert [r.status_code for r in responses] == [500, 500]
        good = asyncio.run(_classify_together(faulty_server.url, [BLUE] * 4, "faulty"))
        assert [r.status_code for r in good] == [200] * 4
    other = asyncio.run(_classify_together(faulty_server.url, [RED] * 4, "tiny-classifier"))
    assert [r.status_code for r in other] == [200] * 4
    assert other[0].json()["results"][0]["predictions"][0]["label"] == "red"
    assert httpx.get(faulty_server.url + "/health/ready", timeout=10).status_code == 200
    models = httpx.get(faulty_server.url + "/v1/models", timeout=10).json()["models"]
    assert {m["name"]: m["status"] for m in models}["faulty"] == "ready"


async def test_batcher_isolates_the_item_that_breaks_a_batch() -> None:
    """The same rule in-process: a run that raises is bisected until the culprit runs alone."""
    runs: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        runs.append(list(items))
        if 13 in items:
            raise ValueError("cannot take 13")
        return [2 * i for i in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        "m", run, max_batch_size=8, max_delay_ms=50, max_queue_size=16
    )
    batcher.start()
    deadline = asyncio.get_running_loop().time() + 5
    outcomes = await asyncio.gather(
        *(batcher.submit(i, deadline) for i in (1, 2, 13, 4, 5, 6, 7, 8)), return_exceptions=True
    )
    await batcher.stop()
    assert isinstance(outcomes[2], InferenceFailedError)
    assert [o.value for i, o in enumerate(outcomes) if i != 2] == [2, 4, 8, 10, 12, 14, 16]  # type: ignore[union-attr]
    assert runs[0] == [1, 2, 13, 4, 5, 6, 7, 8]
    assert [13] in runs
    assert len(runs) <= 1 + 2 * 3  # a bisection, not one run per item
    assert batcher.stats.failed_batches == 1


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken-repo")
    classifier(root / "good-classifier")
    embedder(root / "good-embedder")
    unloadable_model(root / "broken")
    return root


def test_strict_start_up_refuses_to_start_and_names_the_model_and_reason(
    broken_repo: Path,
) -> None:
    env = dict(
        os.environ,
        ORTSERVE_MODEL_REPOSITORY=str(broken_repo),
        ORTSERVE_HOST="127.0.0.1",
        ORTSERVE_PORT=str(free_port()),
        ORTSERVE_GRPC_PORT="0",
    )
    env.pop("ORTSERVE_STRICT_STARTUP", None)  # the default is strict
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    assert "'broken'" in log
    assert "could not load model.onnx" in log
    assert "Application startup failed" in log


def test_non_strict_start_up_serves_the_others_and_reports_the_failed_model(
    broken_repo: Path,
) -> None:
    with running_server(
        broken_repo,
        strict_startup="false",
        default_classify_model="good-classifier",
        default_embed_model="good-embedder",
    ) as srv:
        ready = httpx.get(srv.url + "/health/ready", timeout=10)
        assert ready.status_code == 200
        assert ready.json()["models"] == {
            "broken": "failed",
            "good-classifier": "ready",
            "good-embedder": "ready",
        }
        models = {
            m["name"]: m for m in httpx.get(srv.url + "/v1/models", timeout=10).json()["models"]
        }
        assert models["broken"]["status"] == "failed"
        assert "could not load model.onnx" in models["broken"]["error"]
        assert models["good-classifier"]["status"] == "ready"
        ok = httpx.post(srv.url + "/classify", json={"images": [RED]}, timeout=30)
        assert ok.status_code == 200
        assert ok.json()["results"][0]["predictions"][0]["label"] == "red"
        assert httpx.post(srv.url + "/embed", json={"inputs": "cat"}, timeout=30).status_code == 200
        refused = httpx.post(
            srv.url + "/classify", json={"images": [RED], "model": "broken"}, timeout=30
        )
        assert refused.status_code == 503
        assert refused.json()["error_type"] == "not_ready"
        # the load error (ONNX Runtime text, file paths) is for the operator, not the client
        assert "ONNXRuntime" not in refused.text
        assert str(broken_repo) not in refused.text
        assert httpx.get(srv.url + "/v2/models/broken/ready", timeout=10).status_code == 503


def test_the_file_descriptor_limit_is_raised_to_the_hard_limit_at_start(tmp_path: Path) -> None:
    """The README's promise: a soft RLIMIT_NOFILE below the hard one is raised to it at start,
    and the log says so. The server starts from a shell that lowered its soft limit to 256."""
    import resource

    from tests.support.server import launched
    from tests.support.tiny_models import classifier

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.fail(f"this host's hard limit ({hard}) leaves nothing to raise")
    classifier(tmp_path / "tiny-classifier")
    port = free_port()
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(tmp_path),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_PORT": str(port),
        "ORTSERVE_GRPC_PORT": "0",
        "ORTSERVE_DEFAULT_CLASSIFY_MODEL": "tiny-classifier",
    }
    command = ["sh", "-c", f'ulimit -Sn 256 && exec "{sys.executable}" -m service']
    with launched(command, f"http://127.0.0.1:{port}", ready_path="/health/ready", env=env) as srv:
        limits = Path(f"/proc/{srv.process.pid}/limits").read_text()
        log = srv.log()
    row = next(r for r in limits.splitlines() if r.startswith("Max open files")).split()
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert row[3] == want, row  # the soft limit, raised from 256
    assert f"file descriptors: {row[3]}" in log or "file descriptors:" in log
