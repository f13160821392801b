"""The correctness soak's traffic (``scripts/soak.py`` drives it): its fixed inputs, the soak
repository with a two-version model, and the client processes that send every kind of request
and check each 200 against ``soak_check``'s references."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import struct
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from PIL import Image
from soak_check import (
    CLASSIFY,
    DETECT,
    SEGMENT,
    References,
    compare,
    compare_tensors,
    compare_vector,
)

VERSIONED = "soak-versioned"
MAX_BODY_BYTES = 8 * 2**20
# the server's request deadline (the soak starts it with ORTSERVE_REQUEST_TIMEOUT_S at this): a
# request still unanswered then is a 504, the overload answer of a model whose queue holds more
# work than fits in it (see ``deadline_problem``)
DEADLINE_S = 30.0
# how late after the deadline a 504 may arrive: a busy loop and the client's own scheduling
DEADLINE_SLACK_S = 10.0
KEEPALIVE_EXPIRY_S = 2.0  # below the server's keep-alive timeout (5 s by default)
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
    transport: list[str] = field(default_factory=list)  # the first few transport errors, in words
    versions: Counter[str] = field(default_factory=Counter)  # VERSIONED's answers by version
    deadline: Counter[str] = field(default_factory=Counter)  # 504s that were deadline answers

    def merge(self, other: Tally) -> None:
        self.by_status.update(other.by_status)
        self.errors.update(other.errors)
        for label, values in other.latency.items():
            self.latency[label].extend(values)
        self.checked.update(other.checked)
        self.mismatched.update(other.mismatched)
        self.mismatches += other.mismatches[: max(0, 30 - len(self.mismatches))]
        self.unexpected += other.unexpected[: max(0, 30 - len(self.unexpected))]
        self.transport += other.transport[: max(0, 30 - len(self.transport))]
        self.versions.update(other.versions)
        self.deadline.update(other.deadline)

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
            answer = b""
            while chunk := await asyncio.wait_for(reader.read(512), 60):
                answer += chunk
                await asyncio.sleep(0.01)
            return "abuse:slow-read", _raw_response(answer)
        writer.write(head + body[:4])
        await writer.drain()
        if kind == "vanish-body":
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            return "abuse:vanish-body", httpx.Response(499)
        for i in range(4, len(body), 8):  # the rest in pieces, 20 ms apart
            await asyncio.sleep(0.02)
            writer.write(body[i : i + 8])
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)  # Connection: close
        return "abuse:slow-body", _raw_response(answer)
    finally:
        writer.close()


def _raw_response(answer: bytes) -> httpx.Response:
    """A raw HTTP/1.1 answer (status line, headers, body; Connection: close) as a Response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return httpx.Response(status, content=body)


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


def deadline_problem(response: httpx.Response, took_s: float) -> str | None:
    """None when a 504 is an overload answer: the service's deadline error, after the request
    waited its whole deadline (not earlier: that would be a wrong 504; not much later: that
    would be a request the server held past its deadline).

    Why a 504 is allowed beside 429: a model whose queue holds more work than its deadline
    covers (all-MiniLM-L6-v2 queues 4096 texts, seconds each for 256 tokens on two busy cores)
    never fills it under a soak's closed loop, so when the host cannot keep up (another job on
    its cores) it answers what it cannot finish with the deadline's 504 instead of a 429. That
    is the promise ("every request ends, with a result or a typed error, within its
    deadline"); a model that stops working is told apart by the stall check (``soak.py``: a
    non-empty queue that makes no progress) and by the 200s every other request must get."""
    try:
        kind = response.json().get("error_type")
    except ValueError:
        kind = None
    if kind != "deadline_exceeded":
        return f"a 504 that is not the deadline's error ({kind!r})"
    if took_s < DEADLINE_S - 0.5:
        return f"a 504 after {took_s:.1f} s, before the {DEADLINE_S:.0f} s deadline"
    if took_s > DEADLINE_S + DEADLINE_SLACK_S:
        return f"a 504 after {took_s:.1f} s, long past the {DEADLINE_S:.0f} s deadline"
    return None


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
    # an idle connection is dropped here before the server's keep-alive timeout can close it
    # (ORTSERVE_KEEP_ALIVE_TIMEOUT_S, 5 s by default), as deploy/nginx/nginx.conf does upstream:
    # with the same 5 s on both sides a request now and then went out on a connection the server
    # was closing (2 ReadErrors in 73,716 requests over an hour, none in the server's log)
    limits = httpx.Limits(max_connections=concurrency * 2, keepalive_expiry=KEEPALIVE_EXPIRY_S)
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
                    if len(tally.transport) < 30:
                        took = time.perf_counter() - t0
                        tally.transport.append(
                            f"{time.strftime('%H:%M:%S')} {kind.__name__}: "
                            f"{type(exc).__name__} {exc!r} after {took:.2f} s"
                        )
                    continue
                took = time.perf_counter() - t0
                tally.latency[label].append(took)
                tally.by_status[(label, response.status_code)] += 1
                if expected(label, response.status_code):
                    continue
                problem = None
                if response.status_code == 504 and not label.startswith(("bad:", "abuse:van")):
                    problem = deadline_problem(response, took)
                    if problem is None:
                        tally.deadline[label] += 1
                        continue
                if len(tally.unexpected) < 30:
                    text = response.text[:200] if response.stream is not None else ""
                    tally.unexpected.append(
                        f"{label} {response.status_code} after {took:.1f} s: {problem or text}"
                    )

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
