"""HTTP/1.1 request-smuggling shapes over a raw socket against a real server: each is answered
one 400 and the request hidden behind it is never served (issue 32).

The hidden request is a GET of a path that would answer 200 (``/health/ready``); a server that
framed the body differently from the front end would answer it as a second response on the same
connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

HIDDEN = b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b'{"inputs": "a red circle"}'


def _post(headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + headers
        + b"\r\n"
        + body
    )


SHAPES = {
    "content-length and chunked": _post(
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (len(b"0\r\n\r\n") + len(HIDDEN)),
        b"0\r\n\r\n" + HIDDEN,
    ),
    "chunked and content-length": _post(
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"0\r\n\r\n" + HIDDEN
    ),
    "two content-lengths": _post(
        b"Content-Length: %d\r\nContent-Length: 0\r\n" % len(BODY), BODY + HIDDEN
    ),
    "bad chunk size": _post(
        b"Transfer-Encoding: chunked\r\n", b"zz\r\n" + BODY + b"\r\n0\r\n\r\n" + HIDDEN
    ),
    "chunk size overflow": _post(
        b"Transfer-Encoding: chunked\r\n",
        b"ffffffffffffffffff\r\n" + BODY + b"\r\n0\r\n\r\n" + HIDDEN,
    ),
    "obsolete line folding": _post(
        b"Content-Length: %d\r\n Transfer-Encoding: chunked\r\n" % len(BODY), BODY + HIDDEN
    ),
    "transfer-encoding with a space before the colon": _post(
        b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n" % len(BODY), BODY + HIDDEN
    ),
    "transfer-encoding: xchunked": _post(
        b"Transfer-Encoding: xchunked\r\nContent-Length: %d\r\n" % len(BODY), BODY + HIDDEN
    ),
}


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, header_timeout_s="3", **TINY_DEFAULTS) as srv:
        yield srv


def _exchange(server: Server, raw: bytes) -> bytes:
    url = httpx.URL(server.url)
    with socket.create_connection((url.host, url.port), timeout=5) as sock:
        sock.sendall(raw)
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except TimeoutError:
            pass  # kept open: whatever came back is all there is
    return b"".join(chunks)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_smuggling_shape_is_refused_and_nothing_behind_it_is_served(
    server: Server, shape: str
) -> None:
    answer = _exchange(server, SHAPES[shape])
    statuses = [line.split()[1] for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    # the hidden GET would answer a readiness body: it must not appear
    assert b'"status":"ready"' not in answer and b'"ready":true' not in answer, answer[:600]
    # httptools refuses every one of these shapes outright: one 400, then the connection closes
    assert statuses == [b"400"], answer[:600]
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200
