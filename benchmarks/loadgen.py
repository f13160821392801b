"""A lean closed-loop HTTP/1.1 load generator (one process, asyncio streams, keep-alive).

Requests are pre-encoded bytes and responses are parsed only as far as the status line,
Content-Length and ``x-batch-size``, so the generator spends little CPU that the server could use
(on a 2-core machine this matters more than the choice of client library).

    python -m benchmarks.loadgen --url http://127.0.0.1:8000/embed --bodies bodies.json \
        --content-type application/json --concurrency 32 --duration-s 10
prints one JSON object: requests, errors by status, throughput, latency percentiles (ms),
mean x-batch-size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    stop_at: float,
    out: dict[str, list[Any]],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            status_line = await reader.readline()
            if not status_line:
                out["errors"].append("closed")
                reader, writer = await asyncio.open_connection(host, port)
                continue
            status = int(status_line.split()[1])
            length = 0
            batch = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"x-batch-size":
                    batch = int(value)
            await reader.readexactly(length)
            out["latency"].append(time.perf_counter() - started)
            if status == 200:
                out["batch"].append(batch)
            else:
                out["errors"].append(str(status))
    finally:
        writer.close()


async def run(
    url: str, bodies: list[bytes], content_type: str, concurrency: int, duration_s: float
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    out: dict[str, list[Any]] = {"latency": [], "errors": [], "batch": []}
    started = time.perf_counter()
    stop_at = started + duration_s
    await asyncio.gather(
        *(_worker(host, port, requests, k, stop_at, out) for k in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    lat = np.asarray(out["latency"]) * 1000.0
    errors: dict[str, int] = {}
    for e in out["errors"]:
        errors[e] = errors.get(e, 0) + 1
    ok = len(lat) - len(out["errors"])
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "ok": ok,
        "errors": errors,
        "throughput_rps": ok / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "mean_batch_size": float(np.mean(out["batch"])) if out["batch"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--bodies", required=True, help="JSON file: a list of request bodies (strings)"
    )
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()
    with open(args.bodies, encoding="utf-8") as f:
        bodies = [b.encode() for b in json.load(f)]
    result = asyncio.run(
        run(args.url, bodies, args.content_type, args.concurrency, args.duration_s)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
