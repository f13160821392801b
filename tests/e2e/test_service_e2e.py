"""A real ``python -m service`` process on a free port, called over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.server import Server, assert_close, running_server
from tests.support.tiny_models import TINY_DEFAULTS


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, **TINY_DEFAULTS) as srv:
        yield srv


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img = rng.integers(0, 60, (48 + 8 * i, 64, 3), dtype=np.uint8)
        img[: img.shape[0] // 2, 32:, i % 2] = 250  # a red or green top-right quadrant
        out.append(img)
    return out


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/classify", {"top_k": 3}), ("/detect", {"confidence": 0.2}), ("/segment", {})],
)
def test_vision_endpoints_single_and_batched_agree(server: Server, path: str, extra: dict) -> None:
    batch = images(4)
    together = httpx.post(
        server.url + path, json={"images": [b64(jpeg(a)) for a in batch], **extra}, timeout=30
    )
    assert together.status_code == 200, together.text
    for i, arr in enumerate(batch):
        files = [("file", (f"{i}.jpg", jpeg(arr), "image/jpeg"))]
        alone = httpx.post(
            server.url + path, files=files, data={k: str(v) for k, v in extra.items()}, timeout=30
        )
        assert alone.status_code == 200, alone.text
        assert_close(alone.json()["results"][0], together.json()["results"][i], atol=1e-4)


def test_embed_over_http_single_and_batched(server: Server) -> None:
    texts = ["cat dog", "a truck on the sea", "apple"]
    together = httpx.post(server.url + "/embed", json={"inputs": texts}, timeout=30).json()
    assert together["dimensions"] == 8
    for i, text in enumerate(texts):
        alone = httpx.post(server.url + "/embed", json={"inputs": text}, timeout=30).json()
        np.testing.assert_allclose(alone["embeddings"][0], together["embeddings"][i], atol=1e-6)


async def test_concurrent_requests_are_batched(server: Server) -> None:
    payload = {"images": [b64(jpeg(images(1)[0]))]}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post("/classify", json=payload) for _ in range(48))
        )
        models = (await client.get("/v1/models")).json()["models"]
        scraped = (await client.get("/metrics")).text
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["results"][0]["predictions"][0]["label"] for r in responses}) == 1
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
    clf = next(m for m in models if m["name"] == "tiny-classifier")
    assert clf["batching"]["mean_batch_size"] > 1.0
    # the Prometheus histogram agrees: some runs held more than one item
    one_or_less = _metric(scraped, 'ortserve_batch_size_bucket{le="1.0",model="tiny-classifier"}')
    runs = _metric(scraped, 'ortserve_batch_size_count{model="tiny-classifier"}')
    assert runs > one_or_less
    ok = _metric(
        scraped,
        'ortserve_requests_total{endpoint="/classify",model="tiny-classifier",status="200"}',
    )
    assert ok >= 48


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


def test_docs_and_health(server: Server) -> None:
    assert httpx.get(server.url + "/docs").status_code == 200
    assert httpx.get(server.url + "/health/live").json()["status"] == "ok"
    assert httpx.get(server.url + "/health/ready").status_code == 200


def test_sigterm_finishes_accepted_requests_then_exits(tiny_repo: Path) -> None:
    payload = {"inputs": "cat dog car"}  # 40 items: within the queue bound of 64
    count = 40

    async def burst(url: str, proc: subprocess.Popen[bytes]) -> tuple[list[object], int]:
        sent = asyncio.Event()
        written = 0

        async def trace(event: str, info: object) -> None:
            nonlocal written
            if event == "http11.send_request_body.complete":
                written += 1
                if written == count:
                    sent.set()

        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            tasks = [
                asyncio.create_task(
                    client.post("/embed", json=payload, extensions={"trace": trace})
                )
                for _ in range(count)
            ]
            # SIGTERM once every request is on the wire (so none can meet a closed listener),
            # plus a moment for the server to read them
            await asyncio.wait_for(sent.wait(), timeout=20)
            await asyncio.sleep(0.05)
            unanswered = sum(not t.done() for t in tasks)
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return list(results), unanswered

    with running_server(tiny_repo, **TINY_DEFAULTS) as srv:
        results, unanswered = asyncio.run(burst(srv.url, srv.process))
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete
        assert srv.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in srv.log()
    # every request reached the server before SIGTERM, so every one completes in full: no
    # transport error of any kind, no status but 200, a whole embedding in each body
    outcomes = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results]
    assert outcomes == [200] * count, outcomes
    for r in results:
        assert isinstance(r, httpx.Response)
        assert len(r.json()["embeddings"][0]) == 8
    print(f"\nSIGTERM with {unanswered}/{count} requests unanswered; all {count} answered 200")
