"""Soak test: mixed traffic on every endpoint for a while; prints requests, errors by status and
the server's memory growth.

    python scripts/soak.py --duration-s 300                       # own server, tiny test models
    python scripts/soak.py --repository models --duration-s 600   # own server, real models
    python scripts/soak.py --url http://host:8000 --pid 1234      # a running server

Traffic (weights in MIX): the vision endpoints with JSON and multipart images of random size and
aspect, /embed and /v1/embeddings with random texts, v2 inference, listing and health calls, and
a share of bad requests (corrupt images, decompression bombs, invalid JSON) that must be 4xx, and
connection abuse over raw sockets: clients that vanish mid-header or mid-body, and slow bodies
that complete in time (these must be answered 200). At the end the server's own 5xx count
(/metrics) must not have grown: a vanished client is a 499 there, never a 500.
Memory is the server's VmRSS (Linux /proc), sampled every second once a warm-up is over.

Exit status 1 when a 5xx or a transport error occurred, or when RSS grew by more than
``--max-rss-growth-mb`` between the end of the warm-up and the end of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import random
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# run as a file (python scripts/soak.py): the repository root holds the shared server launcher
sys.path.insert(0, str(ROOT))

from devtools.server import rss_mb, running_server  # noqa: E402 - needs the sys.path entry above

WORDS = [
    "cat",
    "dog",
    "car",
    "truck",
    "apple",
    "pear",
    "sky",
    "sea",
    "red",
    "blue",
    "a",
    "the",
    "on",
    "in",
    "runs",
    "eats",
    "small",
    "big",
]


@dataclass
class Models:
    by_task: dict[str, list[str]]
    embed_inputs: dict[str, list[str]]  # v2 input names of each embed model

    def pick(self, task: str, rng: random.Random) -> str | None:
        names = self.by_task.get(task, [])
        return rng.choice(names) if names else None


@dataclass
class Tally:
    by_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    unexpected: list[str] = field(default_factory=list)
    server_5xx: float = 0.0  # growth of the server's own 5xx count over the run

    @property
    def requests(self) -> int:
        return sum(self.by_status.values()) + sum(self.errors.values())


def _make_image(seed: int, fmt: str) -> bytes:
    rng = random.Random(seed)
    w = rng.choice([1, 7, 32, 64, 200, 640, 1280])
    h = rng.choice([1, 9, 32, 64, 180, 480, 960])
    # smooth noise: compresses like a photo, not like random bytes
    small = np.random.default_rng(seed).integers(0, 256, (max(1, h // 16), max(1, w // 16), 3))
    img = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# made once: encoding images must not be what limits the client
IMAGES = {fmt: [_make_image(seed, fmt) for seed in range(24)] for fmt in ("PNG", "JPEG")}


def image_bytes(rng: random.Random, fmt: str = "PNG") -> bytes:
    return rng.choice(IMAGES[fmt])


def bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 12, 60, 400])))


Request = Callable[
    [httpx.AsyncClient, random.Random, Models], Awaitable[tuple[str, httpx.Response]]
]


async def vision(
    client: httpx.AsyncClient, rng: random.Random, models: Models
) -> tuple[str, httpx.Response]:
    path, task = rng.choice(
        [("/classify", "classify"), ("/detect", "detect"), ("/segment", "segment")]
    )
    model = models.pick(task, rng)
    n = rng.choice([1, 1, 1, 2, 4])
    images = [image_bytes(rng, rng.choice(["PNG", "JPEG"])) for _ in range(n)]
    fields: dict[str, str] = {"model": model} if model else {}
    if rng.random() < 0.5:
        body: dict[str, Any] = {"images": [base64.b64encode(i).decode() for i in images], **fields}
        return path, await client.post(path, json=body)
    files = [
        ("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)
    ]
    return path, await client.post(path, files=files, data=fields)


async def render(
    client: httpx.AsyncClient, rng: random.Random, models: Models
) -> tuple[str, httpx.Response]:
    path, task = rng.choice([("/detect", "detect"), ("/segment", "segment")])
    model = models.pick(task, rng)
    fields = {"render": "true", **({"model": model} if model else {})}
    files = [("file", ("x.png", image_bytes(rng), "image/png"))]
    return path + "?render", await client.post(path, files=files, data=fields)


async def embed(
    client: httpx.AsyncClient, rng: random.Random, models: Models
) -> tuple[str, httpx.Response]:
    model = models.pick("embed", rng)
    texts = [text(rng) for _ in range(rng.choice([1, 1, 4, 32]))]
    if rng.random() < 0.5:
        return "/embed", await client.post("/embed", json={"inputs": texts, "model": model})
    return "/v1/embeddings", await client.post(
        "/v1/embeddings", json={"input": texts, "model": model}
    )


async def v2(
    client: httpx.AsyncClient, rng: random.Random, models: Models
) -> tuple[str, httpx.Response]:
    model = models.pick("embed", rng)
    if model is None:
        return "/v2/health/ready", await client.get("/v2/health/ready")
    n = rng.randint(2, 12)
    inputs = []
    for name in models.embed_inputs[model]:
        data = (
            [1] * n
            if name == "attention_mask"
            else (
                [0] * n
                if name == "token_type_ids"
                else [2] + [rng.randint(4, 9) for _ in range(n - 2)] + [3]
            )
        )
        inputs.append({"name": name, "shape": [1, n], "datatype": "INT64", "data": data})
    return "/v2/infer", await client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})


async def listing(
    client: httpx.AsyncClient, rng: random.Random, models: Models
) -> tuple[str, httpx.Response]:
    path = rng.choice(["/v1/models", "/health/live", "/health/ready", "/metrics", "/v2"])
    return path, await client.get(path)


async def hostile(
    client: httpx.AsyncClient, rng: random.Random, models: Models
) -> tuple[str, httpx.Response]:
    kind = rng.choice(["corrupt", "bomb", "json", "empty", "unknown-model"])
    if kind == "corrupt":
        data = image_bytes(rng, "JPEG")
        files = [("file", ("x.jpg", data[: len(data) // 2], "image/jpeg"))]
        return "bad:corrupt", await client.post("/classify", files=files)
    if kind == "bomb":
        return "bad:bomb", await client.post(
            "/detect", files=[("file", ("b.png", bomb_png(), "image/png"))]
        )
    if kind == "json":
        return "bad:json", await client.post(
            "/embed", content=b'{"inputs": [', headers={"content-type": "application/json"}
        )
    if kind == "empty":
        return "bad:empty", await client.post("/segment", json={"images": [""]})
    return "bad:model", await client.post(
        "/embed", json={"inputs": "cat", "model": "no-such-model"}
    )


async def abuse(
    client: httpx.AsyncClient, rng: random.Random, models: Models
) -> tuple[str, httpx.Response]:
    """Connection-level abuse on a raw socket. The client never sees what the server made of a
    vanished request; that is checked in /metrics at the end. The vanishing kinds report 499."""
    kind = rng.choice(["vanish-headers", "vanish-body", "slow-body"])
    body = json.dumps({"inputs": [text(rng)]}).encode()
    reader, writer = await asyncio.open_connection(client.base_url.host, client.base_url.port)
    try:
        if kind == "vanish-headers":
            writer.write(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Le")
            await writer.drain()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            return "abuse:vanish-headers", httpx.Response(499)
        head = (
            "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body[:4])
        await writer.drain()
        if kind == "vanish-body":
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            return "abuse:vanish-body", httpx.Response(499)
        for i in range(4, len(body), 8):  # the rest in pieces, 20 ms apart
            await asyncio.sleep(0.02)
            writer.write(body[i : i + 8])
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 60)
        return "abuse:slow-body", httpx.Response(int(status_line.split()[1]))
    finally:
        writer.close()


def server_5xx(metrics: str) -> float:
    """The server's own count of 5xx answers (ortserve_requests_total)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ortserve_requests_total{") and 'status="5' in line
    )


MIX: list[tuple[Request, int]] = [
    (vision, 40),
    (render, 5),
    (embed, 30),
    (v2, 8),
    (listing, 7),
    (hostile, 10),
    (abuse, 5),
]


def find_pid(url: str) -> int | None:
    """The local process listening on the URL's port (needs psutil), or None."""
    try:
        import psutil
    except ImportError:
        return None
    port = httpx.URL(url).port or 80
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


async def discover(client: httpx.AsyncClient) -> Models:
    listed = (await client.get("/v1/models")).json()["models"]
    by_task: dict[str, list[str]] = defaultdict(list)
    embed_inputs: dict[str, list[str]] = {}
    for m in listed:
        if m["status"] != "ready" or not m["task"]:
            continue
        by_task[m["task"]].append(m["name"])
        if m["task"] == "embed":
            embed_inputs[m["name"]] = [t["name"] for t in m["inputs"]]
    return Models(dict(by_task), embed_inputs)


def expected(label: str, status: int) -> bool:
    if label.startswith("bad:"):
        return 400 <= status < 500
    if label.startswith("abuse:vanish"):
        return status == 499
    return status in (200, 429)  # 429: the queue was full, which a soak may well cause


async def soak(
    url: str, duration_s: float, concurrency: int, warmup_s: float, pid: int | None, seed: int
) -> tuple[Tally, list[tuple[float, float]]]:
    tally = Tally()
    samples: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        models = await discover(client)
        print(f"models: {dict(models.by_task)}")
        five_xx_before = server_5xx((await client.get("/metrics")).text)
        requests, weights = zip(*MIX, strict=True)
        started = time.monotonic()
        stop_at = started + warmup_s + duration_s

        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.monotonic() < stop_at:
                request = rng.choices(requests, weights)[0]
                t0 = time.perf_counter()
                try:
                    label, response = await request(client, rng, models)
                except httpx.HTTPError as exc:
                    tally.errors[(request.__name__, type(exc).__name__)] += 1
                    continue
                tally.latency[label].append(time.perf_counter() - t0)
                tally.by_status[(label, response.status_code)] += 1
                if not expected(label, response.status_code) and len(tally.unexpected) < 20:
                    tally.unexpected.append(f"{label} {response.status_code} {response.text[:200]}")

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                elapsed = time.monotonic() - started
                value = rss_mb(pid) if pid else math.nan
                if not math.isnan(value) and elapsed >= warmup_s:
                    samples.append((elapsed - warmup_s, value))
                await asyncio.sleep(1.0)

        await asyncio.gather(*(worker(i) for i in range(concurrency)), sampler())
        await asyncio.sleep(1.0)  # the last vanished requests end on the server
        tally.server_5xx = server_5xx((await client.get("/metrics")).text) - five_xx_before
        if pid:
            await asyncio.sleep(1.0)
            value = rss_mb(pid)
            if not math.isnan(value):
                samples.append((time.monotonic() - started - warmup_s, value))
    return tally, samples


def report(tally: Tally, samples: list[tuple[float, float]], seconds: float) -> float | None:
    print(f"\n{tally.requests} requests in {seconds:.0f} s ({tally.requests / seconds:.1f}/s)")
    statuses: Counter[int] = Counter()
    for (_, status), n in tally.by_status.items():
        statuses[status] += n
    print("by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    print(f"{'endpoint':<18}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for label in sorted(tally.latency):
        lat = sorted(tally.latency[label])
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        codes = ", ".join(
            f"{s}×{n}" for (lb, s), n in sorted(tally.by_status.items()) if lb == label
        )
        print(f"{label:<18}{len(lat):>9}{p50:>9.1f}{p99:>9.1f}  {codes}")
    if tally.errors:
        print(
            "transport errors: " + ", ".join(f"{k[0]}/{k[1]}: {n}" for k, n in tally.errors.items())
        )
    for line in tally.unexpected:
        print("unexpected:", line)
    print(f"5xx counted by the server: {tally.server_5xx:.0f}")
    if len(samples) < 2:
        print("memory: not measured (give --pid, or run the server on this machine)")
        return None
    first, last = samples[0][1], samples[-1][1]
    peak = max(v for _, v in samples)
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    slope = 0.0
    if len(half) >= 2:
        xs, ys = [s[0] for s in half], [s[1] for s in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        denom = sum((x - mx) ** 2 for x in xs) or 1.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / denom * 60
    print(
        f"memory (VmRSS): {first:.1f} MiB after warm-up → {last:.1f} MiB at the end "
        f"({last - first:+.1f}), peak {peak:.1f}; trend over the second half {slope:+.2f} MiB/min"
    )
    return last - first


@contextlib.contextmanager
def own_server(repository: Path | None, extra_env: dict[str, str]) -> Iterator[tuple[str, int]]:
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = dict(extra_env)
        if repository is None:
            from tests.support.tiny_models import TINY_DEFAULTS, build_repository

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-models-")))
            repository = build_repository(folder)
            env.update(TINY_DEFAULTS)
        server = stack.enter_context(running_server(repository, **env))
        print(
            f"server: {server.url} (pid {server.process.pid}, models from {repository}, log {server.log_path})"
        )
        yield server.url, server.process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="soak a running server (default: start one)")
    parser.add_argument(
        "--pid", type=int, help="the server's pid, for memory (found for local URLs)"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        help="model repository for the own server (default: tiny test models)",
    )
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=10.0, help="traffic before memory counts")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-rss-growth-mb", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid or find_pid(args.url)
        else:
            env = {"max_body_bytes": str(8 * 2**20)}
            url, pid = stack.enter_context(own_server(args.repository, env))
        started = time.monotonic()
        tally, samples = asyncio.run(
            soak(url, args.duration_s, args.concurrency, args.warmup_s, pid, args.seed)
        )
        growth = report(tally, samples, time.monotonic() - started)
        if pid and not args.url and os.path.exists(f"/proc/{pid}"):
            print("stopping the server (SIGTERM)...")
    server_errors = sum(n for (_, s), n in tally.by_status.items() if s >= 500)
    failed = (
        server_errors > 0
        or tally.server_5xx > 0
        or bool(tally.errors)
        or (growth is not None and growth > args.max_rss_growth_mb)
    )
    print("FAIL" if failed else "OK")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
