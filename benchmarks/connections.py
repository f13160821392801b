"""Slow clients: RSS while N of them are connected, how long until the server cuts them, and
whether a normal request is answered meanwhile and right after they all vanish.

    python -m benchmarks.connections --models models --connections 1000,10000 \
        [--server-root DIR]   # serve another checkout's code (a before/after comparison)

Each round opens N connections from this process: half send the headers of a ``POST /embed``
with ``Content-Length: 100000`` and a few body bytes, half send half a header line. It then reads
the server's RSS, times one normal ``/embed``, waits (at most ``--wait-s``) for the server to close
them, and closes whatever is left all at once (a mass disconnect) before timing a normal request
again. Prints one JSON object per round.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time
from pathlib import Path

import httpx

from devtools.server import free_port, launched, rss_mb

BODY_HEAD = (
    b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n" + b'{"inputs": ["'
)
HALF_HEADER = b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Le"


def timed_embed(url: str) -> tuple[int | str, float]:
    started = time.monotonic()
    try:
        status: int | str = httpx.post(
            url + "/embed", json={"inputs": ["a sentence"]}, timeout=30
        ).status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, round(time.monotonic() - started, 3)


def open_slow(port: int, count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(BODY_HEAD if i % 2 == 0 else HALF_HEADER)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def wait_closed(socks: list[socket.socket], limit_s: float) -> tuple[int, float]:
    """Until the server has closed every socket (or ``limit_s``): (how many it closed, when the
    last one closed, seconds from now)."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    started, closed, last = time.monotonic(), 0, 0.0
    while closed < len(socks) and time.monotonic() - started < limit_s:
        for key, _ in selector.select(timeout=0.5):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                selector.unregister(conn)
                closed += 1
                last = time.monotonic() - started
    selector.close()
    return closed, round(last, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--connections", default="1000,10000")
    parser.add_argument("--wait-s", type=float, default=60.0)
    parser.add_argument("--server-root", type=Path, help="checkout whose service/ to run")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    root = str((args.server_root or Path(__file__).resolve().parents[1]).resolve())
    code = f"import sys, runpy; sys.path.insert(0, {root!r}); runpy.run_module('service', run_name='__main__')"
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(args.models.resolve()),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_PORT": str(port),
        "ORTSERVE_GRPC_PORT": "0",
    }
    url = f"http://127.0.0.1:{port}"
    with launched([sys.executable, "-c", code], url, ready_path="/health/ready", env=env) as srv:
        for count in (int(c) for c in args.connections.split(",")):
            timed_embed(url)
            rss_before = rss_mb(srv.process.pid)
            socks = open_slow(port, count)
            time.sleep(1.0)
            rss_open = rss_mb(srv.process.pid)
            during = timed_embed(url)
            cut, cut_s = wait_closed(socks, args.wait_s)
            for sock in socks:
                sock.close()  # whatever the server left open goes at once
            after = timed_embed(url)
            time.sleep(1.0)
            print(
                json.dumps(
                    {
                        "connections": count,
                        "rss_mb_before": round(rss_before),
                        "rss_mb_open": round(rss_open),
                        "rss_mb_after": round(rss_mb(srv.process.pid)),
                        "cut_by_server": cut,
                        "last_cut_s": cut_s,
                        "embed_while_open": during,
                        "embed_after_close": after,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
