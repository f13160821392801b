"""Hostile connections against a real server over loopback sockets: slow headers, slow bodies,
idle connections, clients that vanish mid-body, and a flood past the connection limit.

The timeouts are shortened (headers 1 s, request 2 s, keep-alive 1 s) so each case ends in
seconds; every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

HEADER_S, REQUEST_S, KEEP_ALIVE_S = 1.0, 2.0, 1
MARGIN_S = 1.5
EMBED = b'{"inputs": ["cat dog"]}'


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(
        tiny_repo,
        header_timeout_s=str(HEADER_S),
        request_timeout_s=str(REQUEST_S),
        keep_alive_timeout_s=str(KEEP_ALIVE_S),
        **TINY_DEFAULTS,
    ) as srv:
        yield srv


def connect(server: Server) -> socket.socket:
    host, port = httpx.URL(server.url).host, httpx.URL(server.url).port
    sock = socket.create_connection((host, port), timeout=10)
    return sock


def until_closed(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def head(path: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def one_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read exactly one response (Content-Length framed) off a kept-alive connection."""
    sock.settimeout(10)
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    header, _, body = raw.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in header.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(header.split(b" ", 2)[1]), body


def status_and_body(raw: bytes) -> tuple[int, bytes]:
    header, _, body = raw.partition(b"\r\n\r\n")
    return int(header.split(b" ", 2)[1]), body


def test_slow_headers_are_cut_with_408_after_the_header_timeout(server: Server) -> None:
    sock = connect(server)
    sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Le")
    data, elapsed = until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert HEADER_S - 0.2 <= elapsed <= HEADER_S + MARGIN_S


def test_a_connection_that_never_speaks_is_dropped(server: Server) -> None:
    data, elapsed = until_closed(connect(server))
    assert data == b""
    assert elapsed <= HEADER_S + MARGIN_S


@pytest.mark.parametrize(
    ("path", "content_type", "start"),
    [
        ("/embed", "application/json", b'{"inputs": ["ca'),
        (
            "/classify",
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n",
        ),
    ],
)
def test_a_slow_body_gets_a_json_408_when_the_request_deadline_passes(
    server: Server, path: str, content_type: str, start: bytes
) -> None:
    sock = connect(server)
    sent = time.monotonic()
    sock.sendall(head(path, content_type, 100_000) + start)
    data, _ = until_closed(sock)
    elapsed = time.monotonic() - sent
    status, body = status_and_body(data)
    assert status == 408, data
    assert json.loads(body)["error_type"] == "request_timeout"
    assert REQUEST_S - 0.2 <= elapsed <= REQUEST_S + MARGIN_S


def test_a_slow_body_that_completes_in_time_is_answered(server: Server) -> None:
    sock = connect(server)
    sock.sendall(head("/embed", "application/json", len(EMBED)))
    for i in range(0, len(EMBED), 6):  # 4 pieces over about 1.2 s, inside the 2 s deadline
        time.sleep(0.3)
        sock.sendall(EMBED[i : i + 6])
    status, body = one_response(sock)
    assert status == 200, body
    sock.close()


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    server: Server,
) -> None:
    sock = connect(server)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert one_response(sock)[0] == 200
    data, elapsed = until_closed(sock)
    assert data == b""
    assert elapsed <= KEEP_ALIVE_S + MARGIN_S


def _five_xx(metrics: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("ortserve_requests_total{") and 'status="5' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_600_clients_vanishing_mid_body_are_499s_without_tracebacks(server: Server) -> None:
    before = _five_xx(httpx.get(server.url + "/metrics").text)
    socks = []
    for _ in range(600):
        sock = connect(server)
        sock.sendall(head("/embed", "application/json", 10_000) + b'{"inputs": [')
        socks.append(sock)
    time.sleep(0.5)  # the server has started every request and waits for its body
    for sock in socks:
        sock.close()
    started = time.monotonic()
    r = httpx.post(server.url + "/embed", content=EMBED, timeout=10)
    assert r.status_code == 200
    assert time.monotonic() - started <= 2.0
    time.sleep(0.5)
    metrics = httpx.get(server.url + "/metrics").text
    assert _five_xx(metrics) == before
    assert 'status="499"' in metrics
    log = server.log()
    assert "Traceback" not in log and "unexpected error" not in log


@pytest.fixture
def limited(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, max_connections="30", **TINY_DEFAULTS) as srv:
        yield srv


def test_a_flood_past_the_connection_limit_gets_503_while_the_probes_answer(
    limited: Server,
) -> None:
    flood = []
    for _ in range(50):
        sock = connect(limited)
        sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\n")  # headers that never end
        flood.append(sock)
    time.sleep(0.3)
    r = httpx.post(limited.url + "/embed", content=EMBED, timeout=10)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error_type"] == "too_many_connections"
    for path in ("/health/live", "/health/ready", "/v2/health/ready", "/metrics"):
        assert httpx.get(limited.url + path, timeout=10).status_code == 200, path
    for sock in flood:
        sock.close()
    time.sleep(0.3)
    assert httpx.post(limited.url + "/embed", content=EMBED, timeout=10).status_code == 200
