"""The whole hostile corpus against one real server (``python -m service`` on the tiny models).

Every response must be the documented status: a 4xx JSON error with ``error``, ``error_type``
and ``request_id`` (OpenAI's shape on /v1/embeddings), or a 200 where the input is valid; never a
5xx, never a hang (every call has a client timeout). The last test checks that the server still
answers correctly afterwards and that its memory is back near where it started.
"""

from __future__ import annotations

import contextlib
import io
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageOps
from pydantic import BaseModel

from service.schemas.embed import EmbedResponse
from service.schemas.openai import EmbeddingsResponse
from service.schemas.v2 import InferResponse
from service.schemas.vision import ClassifyResponse, DetectResponse, SegmentResponse
from tests.hostile.corpus import BOMBS, IMAGES, VISION, Case, b64, request_cases
from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

MAX_BODY_BYTES = 4 * 1024 * 1024
TIMEOUT_S = 30.0  # no single corpus request may take longer (a hang fails the test)
SLOW_S = 10.0
# After the whole corpus the resident set may be this much above the warmed-up baseline:
# allocator arenas and ONNX Runtime's memory pattern caches keep some of what they grew.
RSS_TOLERANCE_MB = 64.0
BOMB_PEAK_TOLERANCE_MB = 25.0  # a decoded 50,000² bomb would be 7,500 MB
CASES = request_cases()
MEMORY: dict[str, float] = {}


def proc_status_mb(pid: int, key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise LookupError(key)


def _warm_up(client: httpx.Client) -> None:
    """Touch every valid code path a few times, so lazily grown pools are in the baseline."""
    for _ in range(3):
        for name in ("png", "jpeg", "gif_animated", "tall_1x5000", "png_16bit_grey"):
            data = IMAGES[name].make()
            for path, model in VISION:
                form = {"model": model} if model else {}
                files = [("file", ("a.png", data, "image/png"))]
                assert client.post(path, files=files, data=form).status_code == 200
                assert (
                    client.post(path, json={"images": [b64(data)] * 8, **form}).status_code == 200
                )
                if path != "/classify":
                    rendered = client.post(path, files=files, data={**form, "render": "true"})
                    assert rendered.status_code == 200
        for path, key in (("/embed", "inputs"), ("/v1/embeddings", "input")):
            assert client.post(path, json={key: ["cat dog"] * 64}).status_code == 200
            assert client.post(path, json={key: "cat " * 25_000}).status_code == 200


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, max_body_bytes=str(MAX_BODY_BYTES), **TINY_DEFAULTS) as srv:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT_S) as client:
            _warm_up(client)
        MEMORY["baseline_rss_mb"] = proc_status_mb(srv.process.pid, "VmRSS")
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as c:
        yield c


# what a 200 from each endpoint must be: its documented response schema, with a result
SUCCESS: dict[str, tuple[type[BaseModel], str]] = {
    "/classify": (ClassifyResponse, "results"),
    "/detect": (DetectResponse, "results"),
    "/segment": (SegmentResponse, "results"),
    "/embed": (EmbedResponse, "embeddings"),
    "/v1/embeddings": (EmbeddingsResponse, "data"),
}


def check(
    response: httpx.Response, status: int, error_type: str | None, path: str, says: str = ""
) -> None:
    """The status; for a JSON 200 the endpoint's response schema with at least one result; for
    errors the documented JSON body with the request's id, the case's error type (OpenAI's shape
    carries it as ``code``) and, where the case names one, a fragment of the message."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"
    assert response.elapsed.total_seconds() < SLOW_S
    if status < 400:
        if response.headers.get("content-type", "").startswith("application/json"):
            schema, results = SUCCESS.get(path, (InferResponse, "outputs"))
            if path in SUCCESS or path.endswith("/infer"):
                body = schema.model_validate(response.json())
                assert getattr(body, results), f"{path}: a 200 with no {results}"
        return
    assert error_type, f"an error case ({status}) must name the error type it expects"
    body = response.json()
    request_id = response.headers["x-request-id"]
    if path.startswith("/v1/embeddings"):  # OpenAI's error shape; the id is in the header
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        message = body["error"]["message"]
        assert body["error"]["type"] in ("invalid_request_error", "authentication_error")
        assert body["error"]["code"] == error_type, body
    else:
        message = body["error"]
        assert body["request_id"] == request_id
        assert body["error_type"] == error_type, body
    assert isinstance(message, str) and message
    assert says.lower() in message.lower(), f"{says!r} not in the message {message!r}"
    text = response.text.lower()
    for leak in ("traceback", "onnxruntime", 'file "/', "exception"):
        assert leak not in text, f"internal detail {leak!r} reached the client: {response.text}"


def oriented_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return (ImageOps.exif_transpose(img) or img).size


@pytest.mark.parametrize("name", list(IMAGES))
def test_every_vision_endpoint_answers_each_image_as_documented(
    client: httpx.Client, name: str
) -> None:
    case = IMAGES[name]
    data = case.make()
    size = oriented_size(data) if case.status == 200 else None
    for path, model in VISION:
        form = {"model": model} if model else {}
        as_form = client.post(path, files=[("file", ("x", data, "image/png"))], data=form)
        as_json = client.post(path, json={"images": [b64(data)], **form})
        check(as_form, case.status, case.error_type, path)
        check(
            as_json,
            case.json_status or case.status,
            case.json_error_type or case.error_type,
            path,
        )
        if case.status != 200:
            continue
        [result] = as_json.json()["results"]
        assert as_form.json() == as_json.json()
        if path != "/classify":  # sizes are of the original image after EXIF orientation
            assert (result["width"], result["height"]) == size
            rendered = client.post(
                path, files=[("file", ("x", data, "image/png"))], data={**form, "render": "true"}
            )
            check(rendered, 200, None, path)
            assert rendered.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(rendered.content)).size == size


def test_decompression_bombs_are_refused_before_any_allocation(
    server: Server, client: httpx.Client
) -> None:
    pid = server.process.pid
    peak_before = proc_status_mb(pid, "VmHWM")
    rss_before = proc_status_mb(pid, "VmRSS")
    for _ in range(3):
        for name in BOMBS:
            data = IMAGES[name].make()
            assert len(data) < 16_384  # small files that declare billions of pixels
            for path, model in VISION:
                form = {"model": model} if model else {}
                started = time.perf_counter()
                response = client.post(path, files=[("file", ("b", data, "image/png"))], data=form)
                check(response, 413, "payload_too_large", path)
                assert time.perf_counter() - started < 2.0
                assert "pixels" in response.json()["error"]
    peak_growth = proc_status_mb(pid, "VmHWM") - peak_before
    rss_growth = proc_status_mb(pid, "VmRSS") - rss_before
    print(
        f"\nbombs: {len(BOMBS)} kinds x 6 endpoints x 3; peak RSS +{peak_growth:.1f} MiB, "
        f"RSS +{rss_growth:.1f} MiB"
    )
    assert peak_growth < BOMB_PEAK_TOLERANCE_MB
    assert rss_growth < BOMB_PEAK_TOLERANCE_MB


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request_gets_its_documented_answer(client: httpx.Client, case: Case) -> None:
    response = client.request(case.method, case.path, **case.request_kwargs())
    check(response, case.status, case.error_type, case.path, case.says)


def _raw_exchange(server: Server, head: bytes, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head``, then body chunks until the server answers; returns (response, body bytes
    sent). Raw sockets: an HTTP client library would insist on sending the whole body first."""
    host, port = server.url.removeprefix("http://").split(":")
    sent = 0
    response = b""
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: read what it said
            sent += len(chunk)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while not (b"\r\n\r\n" in response and response.rstrip().endswith(b"}")):
                more = sock.recv(65536)
                if not more:
                    break
                response += more
    return response, sent


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body(
    server: Server,
) -> None:
    head = (
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000000\r\n\r\n"
    )
    started = time.perf_counter()
    response, sent = _raw_exchange(server, head, iter([b""]))  # no body byte is ever sent
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"error_type":"payload_too_large"' in response
    assert sent == 0
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("path", ["/embed", "/classify", "/v2/models/tiny-embedder/infer"])
def test_a_chunked_body_over_the_limit_is_refused_while_streaming(
    server: Server, path: str
) -> None:
    """No Content-Length: the server counts while it reads and answers 413 once the limit is
    passed, long before the client has sent everything (here: 64 MiB offered, 4 MiB allowed)."""
    content_type = (
        b"multipart/form-data; boundary=b" if path == "/classify" else b"application/json"
    )
    head = (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
        + content_type
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    prologue = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        if path == "/classify"
        else b'{"inputs": "'
    )
    piece = b"x" * 65536
    chunks = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (prologue, piece)]
    pid = server.process.pid
    rss_before = proc_status_mb(pid, "VmRSS")
    response, sent = _raw_exchange(server, head, iter([chunks[0], *[chunks[1]] * 1024]))
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"payload_too_large" in response
    print(f"\n{path}: 413 after {sent / 2**20:.1f} MiB of a 64 MiB chunked body")
    assert sent < 16 * MAX_BODY_BYTES  # refused long before the 64 MiB were sent
    assert proc_status_mb(pid, "VmRSS") - rss_before < 3 * MAX_BODY_BYTES / 2**20 + 16


def test_a_body_over_the_limit_sent_by_an_ordinary_client_is_413(client: httpx.Client) -> None:
    big = {"inputs": "cat " * (MAX_BODY_BYTES // 4)}
    check(client.post("/embed", json=big), 413, "payload_too_large", "/embed")

    def stream() -> Iterator[bytes]:  # httpx sends a generator chunked, without Content-Length
        yield b'{"inputs": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 4):
            yield b"cat " * 16384
        yield b'"}'

    try:
        response = client.post(
            "/embed", content=stream(), headers={"content-type": "application/json"}
        )
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return  # the server may close while we still write: that is also a refusal
    check(response, 413, "payload_too_large", "/embed")


def test_after_the_corpus_the_server_answers_correctly_and_memory_is_back(
    server: Server, client: httpx.Client
) -> None:
    red = IMAGES["png"].make()  # left half red
    classified = client.post("/classify", files=[("file", ("r.png", red, "image/png"))])
    assert classified.status_code == 200
    assert classified.json()["results"][0]["predictions"][0]["label"] == "red"
    embedded = client.post("/embed", json={"inputs": ["cat", "dog"]})
    assert embedded.status_code == 200
    assert len(embedded.json()["embeddings"]) == 2
    assert client.get("/health/ready").status_code == 200
    models = client.get("/v1/models").json()["models"]
    assert all(m["status"] == "ready" for m in models)
    # every model's queue drained (pipelines have none: their stages queue at their models)
    assert all(m["batching"]["queue_depth"] == 0 for m in models if m["task"] != "pipeline")
    time.sleep(0.5)  # let the last responses' buffers be freed
    baseline = MEMORY["baseline_rss_mb"]
    now = proc_status_mb(server.process.pid, "VmRSS")
    peak = proc_status_mb(server.process.pid, "VmHWM")
    requests = len(CASES) + len(IMAGES) * len(VISION) * 2
    print(
        f"\ncorpus: {len(CASES)} request cases + {len(IMAGES)} images x {len(VISION)} "
        f"endpoints x 2 encodings (~{requests} requests); RSS warmed-up {baseline:.1f} MiB, "
        f"after {now:.1f} MiB ({now - baseline:+.1f}), peak {peak:.1f} MiB; "
        f"tolerance +{RSS_TOLERANCE_MB:.0f} MiB"
    )
    assert now - baseline < RSS_TOLERANCE_MB
    assert server.process.poll() is None
    # nothing the corpus sent was an unexpected error on the server side either
    log = server.log()
    assert "Exception in ASGI application" not in log
    assert "unexpected error" not in log
