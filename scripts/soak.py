"""Correctness soak: every model and pipeline under mixed traffic from several processes, models
reloaded on a timer, hostile requests and misbehaving clients mixed in, and **every** 200 checked
against a reference computed in this process.

    python scripts/soak.py --duration-s 300                       # tiny test models
    python scripts/soak.py --repository models --duration-s 600   # the default models

1. A soak repository is made in a temporary folder: the repository's model folders (symlinks)
   plus ``soak-versioned``, a tiny classifier with versions 1 and 2 whose labels name the
   version (``v1-red``), so an answer says which version made it.
2. References (``scripts/soak_check.py``): a ``ModelRegistry`` built here from the same folders
   (every version of ``soak-versioned``) runs each fixed input alone: per model, version and
   input the /classify, /detect, /segment, /pipelines, /embed and v2 answer.
3. A server (``ORTSERVE_MODEL_CONTROL=explicit``) is started; ``--processes`` client processes,
   ``--concurrency`` requests each, send the MIX below until the time is up. Every 200 of a
   checked kind is compared with the references of its inputs and of the version its
   ``x-model-version`` header (pipelines: its stages) claims: classes and scores ± 1e-4, boxes
   ± 1 px, embeddings cosine ≥ 1 - 1e-5, masks IoU ≥ 0.99.
4. Meanwhile this process reloads a model every ``--reload-every-s`` (POST
   /v2/repository/models/{name}/load), in turn every model, the pipeline's members and the
   pipeline; for ``soak-versioned`` it parks or restores version 2's folder first, so the
   serving version flips between 1 and 2 under traffic. Reloads stop ``--settle-s`` before the
   end, so the last memory readings are not taken while a retired version drains.
5. Memory is the server's VmRSS every second after the warm-up.

Exit status 1 on any mismatch, any 5xx (seen by a client, or counted by the server's /metrics),
any transport error, any unexpected status, any failed reload, or RSS growth after the warm-up
over the bound: ``--max-rss-growth-mb`` or ``--max-rss-growth-pct`` of the post-warm-up RSS,
whichever is larger (growth = median of the last 10 readings - median of the first 10).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import multiprocessing
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# run as a file (python scripts/soak.py): the repository root holds the shared server launcher
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from soak_check import (  # noqa: E402
    CLASSIFY,
    DETECT,
    SEGMENT,
    References,
    compare,
    compare_tensors,
    compare_vector,
    compute_references,
)

from devtools.server import rss_mb, running_server  # noqa: E402 - needs the sys.path entry above

VERSIONED = "soak-versioned"
MAX_BODY_BYTES = 8 * 2**20
WORDS = ["cat", "dog", "car", "truck", "apple", "pear", "sky", "sea", "red", "blue", "a", "the"]
WORDS += ["on", "in", "runs", "eats", "small", "big"]


# -- inputs ----------------------------------------------------------------------------------
def _noise_image(seed: int, w: int, h: int, fmt: str) -> bytes:
    small = np.random.default_rng(seed).integers(0, 256, (max(1, h // 16), max(1, w // 16), 3))
    img = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def soak_images() -> list[bytes]:
    """The fixed inputs of the vision models: shapes scenes (the shapes models find things in
    them), photos (the COCO detector and the pipeline do), smooth noise of odd sizes (JPEG and
    PNG, one of 7×9 px)."""
    from training.heldout import png, scenes

    images = [png(s.image) for s in scenes(3, seed=7)]
    with contextlib.suppress(ImportError):
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        for name in ("chelsea", "astronaut", "coffee"):
            path = folder / f"{name}.png"
            if path.is_file():
                images.append(path.read_bytes())
    images += [
        _noise_image(1, 640, 480, "JPEG"),
        _noise_image(2, 200, 180, "PNG"),
        _noise_image(3, 7, 9, "PNG"),
    ]
    return images


def soak_texts() -> list[str]:
    rng = random.Random(11)
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in (1, 2, 3, 5, 8, 12, 30, 60, 200)]


def bomb_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# -- the soak repository -------------------------------------------------------------------------
def versioned_model(folder: Path, policy_all: bool) -> None:
    from tests.support.tiny_models import versioned_classifier

    folder.mkdir(parents=True)
    for version in (1, 2):
        versioned_classifier(folder / str(version), version)
        if policy_all:  # the references serve both versions side by side
            config_path = folder / str(version) / "config.yaml"
            config = yaml.safe_load(config_path.read_text())
            config["version_policy"] = "all"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def soak_repository(source: Path, target: Path, *, policy_all: bool) -> Path:
    target.mkdir(parents=True)
    for folder in sorted(source.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            (target / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    versioned_model(target / VERSIONED, policy_all)
    return target


# -- the clients -------------------------------------------------------------------------------
@dataclass
class Tally:
    by_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    checked: Counter[str] = field(default_factory=Counter)  # answers (results) compared
    mismatched: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)  # the first few, in words
    unexpected: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)  # VERSIONED's answers by version

    def merge(self, other: Tally) -> None:
        self.by_status.update(other.by_status)
        self.errors.update(other.errors)
        for label, values in other.latency.items():
            self.latency[label].extend(values)
        self.checked.update(other.checked)
        self.mismatched.update(other.mismatched)
        self.mismatches += other.mismatches[: max(0, 30 - len(self.mismatches))]
        self.unexpected += other.unexpected[: max(0, 30 - len(self.unexpected))]
        self.versions.update(other.versions)

    @property
    def requests(self) -> int:
        return sum(self.by_status.values()) + sum(self.errors.values())

    def check(self, label: str, problems: list[str], what: str) -> None:
        self.checked[label] += 1
        if problems:
            self.mismatched[label] += 1
            if len(self.mismatches) < 30:
                self.mismatches.append(f"{label} {what}: " + "; ".join(problems[:4]))


@dataclass
class Ctx:
    client: httpx.AsyncClient
    rng: random.Random
    refs: References
    tally: Tally


def _images_request(
    ctx: Ctx, path: str, fields: dict[str, Any], images: list[bytes]
) -> Awaitable[httpx.Response]:
    """JSON with base64 images or multipart ``file`` parts with form fields, at random."""
    if ctx.rng.random() < 0.5:
        body = {"images": [base64.b64encode(i).decode() for i in images], **fields}
        return ctx.client.post(path, json=body)
    files = [
        ("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)
    ]
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return ctx.client.post(path, files=files, data=form)


def _version(response: httpx.Response) -> int | None:
    value = response.headers.get("x-model-version")
    return int(value) if value and value.isdigit() else None


def _check_results(
    ctx: Ctx, label: str, model: str, response: httpx.Response, picks: list[int]
) -> None:
    body = response.json()
    version = _version(response)
    results = body.get("results")
    if body.get("model") != model or not isinstance(results, list) or len(results) != len(picks):
        ctx.tally.check(label, [f"answer shape: model {body.get('model')!r}"], model)
        return
    for index, result in zip(picks, results, strict=True):
        expected = ctx.refs.vision.get((model, version or -1, index))
        if expected is None:
            problems = [
                f"x-model-version {version} has no reference (serving {ctx.refs.versions[model]})"
            ]
        else:
            problems = compare(expected, result, "result")
        ctx.tally.check(label, problems, f"{model} v{version} input {index}")
    if model == VERSIONED:
        ctx.tally.versions[f"v{version}"] += 1


async def vision(ctx: Ctx) -> tuple[str, httpx.Response]:
    task = ctx.rng.choice([t for t in ("classify", "detect", "segment") if ctx.refs.models.get(t)])
    model = ctx.rng.choice([m for m in ctx.refs.models[task] if m != VERSIONED])
    params = {"classify": CLASSIFY, "detect": DETECT, "segment": SEGMENT}[task]
    picks = [ctx.rng.randrange(len(ctx.refs.images)) for _ in range(ctx.rng.choice([1, 1, 2, 3]))]
    response = await _images_request(
        ctx, f"/{task}", {"model": model, **params}, [ctx.refs.images[i] for i in picks]
    )
    if response.status_code == 200:
        _check_results(ctx, task, model, response, picks)
    return task, response


async def versioned(ctx: Ctx) -> tuple[str, httpx.Response]:
    picks = [ctx.rng.randrange(len(ctx.refs.images)) for _ in range(ctx.rng.choice([1, 2]))]
    response = await _images_request(
        ctx, "/classify", {"model": VERSIONED, **CLASSIFY}, [ctx.refs.images[i] for i in picks]
    )
    if response.status_code == 200:
        _check_results(ctx, "versioned", VERSIONED, response, picks)
    return "versioned", response


async def pipeline(ctx: Ctx) -> tuple[str, httpx.Response]:
    name = ctx.rng.choice(ctx.refs.models["pipeline"])
    picks = [ctx.rng.randrange(len(ctx.refs.images)) for _ in range(ctx.rng.choice([1, 1, 2]))]
    response = await _images_request(
        ctx, f"/pipelines/{name}", {}, [ctx.refs.images[i] for i in picks]
    )
    if response.status_code == 200:
        body = response.json()
        results = body.get("results", [])
        for i, index in enumerate(picks):
            expected = ctx.refs.pipeline[(name, index)]
            # the stages name each member's version: a stale member version shows here
            problems = compare(expected["stages"], body.get("stages"), "stages")
            got = results[i] if i < len(results) else None
            problems += compare(expected["result"], got, "result")
            ctx.tally.check("pipeline", problems, f"{name} input {index}")
    return "pipeline", response


async def embed(ctx: Ctx) -> tuple[str, httpx.Response]:
    model = ctx.rng.choice(ctx.refs.models["embed"])
    picks = [ctx.rng.randrange(len(ctx.refs.texts)) for _ in range(ctx.rng.choice([1, 1, 4, 8]))]
    texts = [ctx.refs.texts[i] for i in picks]
    openai = ctx.rng.random() < 0.3
    if openai:
        label = "/v1/embeddings"
        response = await ctx.client.post("/v1/embeddings", json={"input": texts, "model": model})
    else:
        label = "/embed"
        response = await ctx.client.post(
            "/embed", json={"inputs": texts, "model": model, "truncate": True}
        )
    if response.status_code == 200:
        body = response.json()
        vectors = (
            [d.get("embedding") for d in body.get("data", [])] if openai else body["embeddings"]
        )
        version = _version(response) or ctx.refs.versions[model][-1]
        if len(vectors) != len(picks):
            ctx.tally.check(label, [f"{len(vectors)} vectors for {len(picks)} texts"], model)
        for index, vector in zip(picks, vectors, strict=False):
            expected = ctx.refs.embed.get((model, version, index))
            problems = (
                [f"version {version} has no reference"]
                if expected is None
                else compare_vector(expected, vector, "embedding")
            )
            ctx.tally.check(label, problems, f"{model} v{version} text {index}")
    return label, response


async def v2(ctx: Ctx) -> tuple[str, httpx.Response]:
    model = ctx.rng.choice(ctx.refs.models["embed"])
    index = ctx.rng.randrange(len(ctx.refs.token_cases[model]))
    row = ctx.refs.token_cases[model][index]
    inputs = [
        {"name": name, "shape": [1, len(data)], "datatype": "INT64", "data": data}
        for name, data in row.items()
    ]
    response = await ctx.client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    if response.status_code == 200:
        body = response.json()
        version = int(body.get("model_version") or _version(response) or -1)
        expected = ctx.refs.tensors.get((model, version, index))
        problems = (
            [f"version {version} has no reference"]
            if expected is None
            else compare_tensors(expected, body.get("outputs"), "outputs")
        )
        ctx.tally.check("/v2/infer", problems, f"{model} v{version} case {index}")
    return "/v2/infer", response


async def listing(ctx: Ctx) -> tuple[str, httpx.Response]:
    path = ctx.rng.choice(["/v1/models", "/health/live", "/health/ready", "/metrics", "/v2"])
    return path, await ctx.client.get(path)


async def hostile(ctx: Ctx) -> tuple[str, httpx.Response]:
    """Bad requests: each must be a 4xx."""
    kind = ctx.rng.choice(["corrupt", "bomb", "json", "empty", "garbage", "oversized", "model"])
    client = ctx.client
    if kind == "corrupt":
        data = ctx.refs.images[ctx.rng.randrange(len(ctx.refs.images))]
        files = [("file", ("x.jpg", data[: len(data) // 2], "image/jpeg"))]
        return "bad:corrupt", await client.post("/classify", files=files)
    if kind == "garbage":
        data = ctx.rng.randbytes(ctx.rng.choice([1, 100, 5000]))
        body = {"images": [base64.b64encode(data).decode()]}
        return "bad:garbage", await client.post(ctx.rng.choice(["/detect", "/segment"]), json=body)
    if kind == "bomb":
        files = [("file", ("b.png", bomb_png(), "image/png"))]
        return "bad:bomb", await client.post("/detect", files=files)
    if kind == "json":
        return "bad:json", await client.post(
            "/embed", content=b'{"inputs": [', headers={"content-type": "application/json"}
        )
    if kind == "empty":
        return "bad:empty", await client.post("/segment", json={"images": [""]})
    if kind == "oversized":
        return "bad:oversized", await oversized(client.base_url)
    return "bad:model", await client.post("/embed", json={"inputs": "cat", "model": "no-such"})


async def oversized(url: httpx.URL) -> httpx.Response:
    """A body over the server's limit, on a raw socket: the server answers 413 from the
    Content-Length header alone, before any of the body (were the body sent, the server's close
    with it unread would reset the connection and lose the answer)."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {MAX_BODY_BYTES + 1024}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        return httpx.Response(int(line.split()[1]) if line else 0)
    finally:
        writer.close()


async def abuse(ctx: Ctx) -> tuple[str, httpx.Response]:
    """Connection-level abuse on a raw socket: clients that vanish mid-header or mid-body (the
    server's side is checked in /metrics: a 499, never a 500), a body sent slowly and an answer
    read slowly (both must be a 200)."""
    rng = ctx.rng
    kind = rng.choice(["vanish-headers", "vanish-body", "slow-body", "slow-read"])
    url = ctx.client.base_url
    body = json.dumps({"inputs": [rng.choice(ctx.refs.texts)]}).encode()
    path = "/embed"
    if kind == "slow-read":  # a large answer: many embeddings
        body = json.dumps({"inputs": ctx.refs.texts * 2}).encode()
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        if kind == "vanish-headers":
            writer.write(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Le")
            await writer.drain()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            return "abuse:vanish-headers", httpx.Response(499)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        if kind == "slow-read":
            writer.write(head + body)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 60)
            while chunk := await asyncio.wait_for(reader.read(512), 60):
                del chunk
                await asyncio.sleep(0.01)
            return "abuse:slow-read", httpx.Response(int(status_line.split()[1]))
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


MIX: list[tuple[Callable[[Ctx], Awaitable[tuple[str, httpx.Response]]], int]] = [
    (vision, 34),
    (versioned, 8),
    (pipeline, 8),
    (embed, 20),
    (v2, 6),
    (listing, 5),
    (hostile, 12),
    (abuse, 7),
]


def expected(label: str, status: int) -> bool:
    if label.startswith("bad:"):
        return 400 <= status < 500
    if label.startswith("abuse:vanish"):
        return status == 499
    return status in (200, 429)  # 429: the queue was full, which a soak may well cause


def client_process(
    url: str, refs: References, seconds: float, concurrency: int, seed: int
) -> Tally:
    """One client process: ``concurrency`` requests at a time for ``seconds``."""
    return asyncio.run(_clients(url, refs, seconds, concurrency, seed))


async def _clients(
    url: str, refs: References, seconds: float, concurrency: int, seed: int
) -> Tally:
    tally = Tally()
    mix = [(kind, weight) for kind, weight in MIX if _available(kind, refs)]
    kinds, weights = zip(*mix, strict=True)
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker(index: int) -> None:
            ctx = Ctx(client, random.Random(seed * 1000 + index), refs, tally)
            while time.monotonic() < stop_at:
                kind = ctx.rng.choices(kinds, weights)[0]
                t0 = time.perf_counter()
                try:
                    label, response = await kind(ctx)
                except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
                    tally.errors[(kind.__name__, type(exc).__name__)] += 1
                    continue
                tally.latency[label].append(time.perf_counter() - t0)
                tally.by_status[(label, response.status_code)] += 1
                if not expected(label, response.status_code) and len(tally.unexpected) < 30:
                    text = response.text[:200] if response.stream is not None else ""
                    tally.unexpected.append(f"{label} {response.status_code} {text}")

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally


def _available(kind: Callable[..., Any], refs: References) -> bool:
    needs = {
        vision: any(refs.models.get(t) for t in ("classify", "detect", "segment")),
        versioned: VERSIONED in refs.versions,
        pipeline: bool(refs.models.get("pipeline")),
        embed: bool(refs.models.get("embed")),
        v2: bool(refs.models.get("embed")),
        abuse: bool(refs.texts),
    }
    return needs.get(kind, True)


# -- reloads and memory ---------------------------------------------------------------------------
@dataclass
class Reloads:
    done: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)


def reload_order(refs: References) -> list[str]:
    """Every model in turn, the pipeline's members (every model is one) and the pipelines,
    with the versioned model's flip every third reload."""
    names = sorted(n for n in refs.versions if n != VERSIONED) + refs.models.get("pipeline", [])
    order: list[str] = []
    for i, name in enumerate(names):
        order.append(name)
        if i % 2 == 1 and VERSIONED in refs.versions:
            order.append(VERSIONED)
    return order or [VERSIONED]


async def reloader(
    client: httpx.AsyncClient,
    repository: Path,
    order: list[str],
    every_s: float,
    stop_at: float,
    reloads: Reloads,
) -> None:
    i = 0
    while time.monotonic() + every_s < stop_at:
        await asyncio.sleep(every_s)
        name = order[i % len(order)]
        i += 1
        if name == VERSIONED:  # park or restore version 2: the serving version flips
            two, parked = repository / VERSIONED / "2", repository / VERSIONED / "parked-2"
            if two.exists():
                two.rename(parked)
            else:
                parked.rename(two)
        try:
            response = await client.post(f"/v2/repository/models/{name}/load", timeout=300)
        except httpx.HTTPError as exc:
            reloads.failed.append(f"{name}: {type(exc).__name__}")
            continue
        if response.status_code == 200:
            reloads.done[name] += 1
        else:
            reloads.failed.append(f"{name}: {response.status_code} {response.text[:200]}")


async def sampler(
    pid: int | None, started: float, warmup_s: float, stop_at: float
) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    while time.monotonic() < stop_at and pid:
        elapsed = time.monotonic() - started
        value = rss_mb(pid)
        if not math.isnan(value) and elapsed >= warmup_s:
            samples.append((elapsed - warmup_s, value))
        await asyncio.sleep(1.0)
    return samples


def server_5xx(metrics: str) -> float:
    """The server's own count of 5xx answers (ortserve_requests_total)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ortserve_requests_total{") and 'status="5' in line
    )


@dataclass
class Run:
    tally: Tally
    samples: list[tuple[float, float]]
    reloads: Reloads
    server_5xx: float
    seconds: float


async def soak(
    args: argparse.Namespace, url: str, pid: int | None, refs: References, repository: Path
) -> Run:
    total_s = args.warmup_s + args.duration_s
    started = time.monotonic()
    stop_at = started + total_s
    reloads = Reloads()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        five_xx_before = server_5xx((await client.get("/metrics")).text)
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.processes, mp_context=spawn) as pool:
            loop = asyncio.get_running_loop()
            clients = [
                asyncio.wrap_future(
                    pool.submit(
                        client_process, url, refs, total_s, args.concurrency, args.seed * 100 + p
                    ),
                    loop=loop,
                )
                for p in range(args.processes)
            ]
            tasks: list[Awaitable[Any]] = [sampler(pid, started, args.warmup_s, stop_at)]
            if args.reload_every_s > 0:
                tasks.append(
                    reloader(
                        client,
                        repository,
                        reload_order(refs),
                        args.reload_every_s,
                        stop_at - args.settle_s,
                        reloads,
                    )
                )
            samples, *_ = await asyncio.gather(*tasks)
            tally = Tally()
            for each in await asyncio.gather(*clients):
                tally.merge(each)
        await asyncio.sleep(1.0)  # the last vanished requests end on the server
        five_xx = server_5xx((await client.get("/metrics")).text) - five_xx_before
    if pid:
        value = rss_mb(pid)
        if not math.isnan(value):
            samples.append((time.monotonic() - started - args.warmup_s, value))
    return Run(tally, samples, reloads, five_xx, time.monotonic() - started)


# -- report ---------------------------------------------------------------------------------------
def report(run: Run, refs: References, args: argparse.Namespace) -> list[str]:
    """Print the report; returns the reasons the soak failed (none: it passed)."""
    tally, failures = run.tally, []
    print(
        f"\n{tally.requests} requests in {run.seconds:.0f} s ({tally.requests / run.seconds:.1f}/s)"
    )
    statuses: Counter[int] = Counter()
    for (_, status), n in tally.by_status.items():
        statuses[status] += n
    print("by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    print(f"{'kind':<22}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for label in sorted(tally.latency):
        lat = sorted(tally.latency[label])
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        codes = ", ".join(
            f"{s}×{n}" for (lb, s), n in sorted(tally.by_status.items()) if lb == label
        )
        print(f"{label:<22}{len(lat):>9}{p50:>9.1f}{p99:>9.1f}  {codes}")
    checked, mismatched = sum(tally.checked.values()), sum(tally.mismatched.values())
    print(
        f"answers checked against the references: {checked} "
        f"({', '.join(f'{k} {n}' for k, n in sorted(tally.checked.items()))}); "
        f"references: {refs.count} computed in {refs.seconds:.0f} s"
    )
    print(f"mismatches: {mismatched}")
    for line in tally.mismatches:
        print("  mismatch:", line)
    if tally.versions:
        print(f"{VERSIONED} answers by version: {dict(sorted(tally.versions.items()))}")
    print(
        f"reloads: {sum(run.reloads.done.values())} "
        f"({', '.join(f'{k} {n}' for k, n in sorted(run.reloads.done.items()))}), "
        f"failed: {len(run.reloads.failed)}"
    )
    for line in run.reloads.failed[:10]:
        print("  reload failed:", line)
    if tally.errors:
        print(
            "transport errors: " + ", ".join(f"{k[0]}/{k[1]}: {n}" for k, n in tally.errors.items())
        )
    for line in tally.unexpected:
        print("unexpected:", line)
    client_5xx = sum(n for (_, s), n in tally.by_status.items() if s >= 500)
    print(f"5xx: {client_5xx} seen by clients, {run.server_5xx:.0f} counted by the server")
    if mismatched:
        failures.append(f"{mismatched} mismatches")
    if checked == 0:
        failures.append("no answer was checked")
    if client_5xx or run.server_5xx:
        failures.append("5xx answers")
    if tally.errors:
        failures.append("transport errors")
    if tally.unexpected:
        failures.append("unexpected statuses")
    if run.reloads.failed:
        failures.append("failed reloads")
    failures += memory(run.samples, args)
    return failures


def memory(samples: list[tuple[float, float]], args: argparse.Namespace) -> list[str]:
    if len(samples) < 4:
        print("memory: not measured (give --pid, or run the server on this machine)")
        return []
    values = [v for _, v in samples]
    head, tail = values[: min(10, len(values) // 2)], values[-min(10, len(values) // 2) :]
    first, last = statistics.median(head), statistics.median(tail)
    growth = last - first
    bound = max(args.max_rss_growth_mb, first * args.max_rss_growth_pct / 100)
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    slope = 0.0
    if len(half) >= 2:
        xs, ys = [s[0] for s in half], [s[1] for s in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        denom = sum((x - mx) ** 2 for x in xs) or 1.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / denom * 60
    print(
        f"memory (VmRSS, {len(samples)} readings after the warm-up): {first:.1f} MiB → "
        f"{last:.1f} MiB ({growth:+.1f}, bound {bound:.0f} MiB = max({args.max_rss_growth_mb:.0f} "
        f"MiB, {args.max_rss_growth_pct:.0f} %)), peak {max(values):.1f}; "
        f"trend over the second half {slope:+.2f} MiB/min"
    )
    step = max(1, len(samples) // 12)
    print("  over time: " + ", ".join(f"{t:.0f}s {v:.0f}" for t, v in samples[::step]))
    return [f"RSS grew {growth:.1f} MiB > {bound:.0f} MiB"] if growth > bound else []


def tamper(refs: References) -> None:
    """--tamper-references: shift every reference score (and embedding) a little more than the
    tolerance, to show the checker fails the soak on answers that are off by that much."""

    def shift(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (v + 2e-3 if k == "score" else shift(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [shift(v) for v in value]
        return value

    for key, ref in refs.vision.items():
        refs.vision[key] = shift(ref)
    for key, vector in refs.embed.items():
        refs.embed[key] = [v + (0.05 if i % 2 else -0.05) for i, v in enumerate(vector)]


@contextlib.contextmanager
def own_server(repository: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    with running_server(repository, **env) as server:
        print(f"server: {server.url} (pid {server.process.pid}, log {server.log_path})")
        yield server.url, server.process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository", type=Path, help="model repository (default: tiny test models)"
    )
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=10.0, help="traffic before memory counts")
    parser.add_argument("--processes", type=int, default=3, help="client processes")
    parser.add_argument("--concurrency", type=int, default=4, help="requests at a time per process")
    parser.add_argument("--reload-every-s", type=float, default=10.0, help="0: no reloads")
    parser.add_argument("--settle-s", type=float, default=15.0, help="no reloads at the end")
    parser.add_argument("--max-rss-growth-mb", type=float, default=100.0)
    parser.add_argument("--max-rss-growth-pct", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tamper-references", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        env = {"max_body_bytes": str(MAX_BODY_BYTES), "model_control": "explicit"}
        source = args.repository
        if source is None:
            from tests.support.tiny_models import TINY_DEFAULTS, build_repository

            source = build_repository(tmp / "tiny")
            env.update(TINY_DEFAULTS)
        repository = soak_repository(source, tmp / "served", policy_all=False)
        reference_repo = soak_repository(source, tmp / "reference", policy_all=True)
        print("computing the references in this process ...", flush=True)
        overrides = {k: v for k, v in env.items() if k.startswith("default_")}
        refs = compute_references(
            reference_repo, soak_images(), soak_texts(), settings_overrides=overrides
        )
        print(
            f"{refs.count} references ({len(refs.images)} images, {len(refs.texts)} texts) for "
            f"{dict(refs.models)} in {refs.seconds:.0f} s",
            flush=True,
        )
        if args.tamper_references:
            tamper(refs)
        url, pid = stack.enter_context(own_server(repository, env))
        run = asyncio.run(soak(args, url, pid, refs, repository))
        failures = report(run, refs, args)
        print("stopping the server (SIGTERM)...")
        shutil.rmtree(tmp / "tiny", ignore_errors=True)
    print("FAIL: " + "; ".join(failures) if failures else "OK")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
