"""Mutated images and malformed multipart bodies against a real server on the tiny models.

The inputs come from ``tests/fuzz/mutations.py``, seeded (``ORTSERVE_FUZZ_SEED``, default 32;
``ORTSERVE_FUZZ_MUTANTS`` random mutants per format for the truncated and bit-flipped kinds,
default 4). Every image mutant goes to /classify, /detect and /segment, base64 in JSON and as a
multipart file part; every multipart body to the same three. Each answer must be
- a 4xx in the service's error shape (``error``, ``error_type``, ``request_id`` matching the
  ``x-request-id`` header; for an image: 400 ``invalid_image`` or 413 ``payload_too_large``), or
- a 200 that is right: the response schema, one result per image, and what an independent
  Pillow decode of the same bytes says (the original size; for the classifier, the dominant
  colour where it is clear) — a server that answers 200 to bytes Pillow cannot decode fails;
never a 5xx, a hang (30 s client timeout), a traceback in the server's log or a dead server
(checked after each kind). The counts per kind and outcome are printed (``-s``).
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from pydantic import BaseModel, ValidationError

from service.schemas.vision import ClassifyResponse, DetectResponse, SegmentResponse
from tests.fuzz.mutations import (
    FORMATS,
    KINDS,
    RawBody,
    base_picture,
    framing_mutants,
    image_mutants,
    malformed_multipart,
    red_png,
    valid_image,
)
from tests.support.server import Server, running_server
from tests.support.tiny_models import COLOURS, TINY_DEFAULTS

SEED = int(os.environ.get("ORTSERVE_FUZZ_SEED", "32"))
MUTANTS = int(os.environ.get("ORTSERVE_FUZZ_MUTANTS", "4"))
TIMEOUT_S = 30.0  # a request that takes longer is a hang
ENDPOINTS: dict[str, type[BaseModel]] = {
    "/classify": ClassifyResponse,
    "/detect": DetectResponse,
    "/segment": SegmentResponse,
}
IMAGE_ERRORS = {400: "invalid_image", 413: "payload_too_large"}
ERROR_KEYS = {"error", "error_type", "request_id"}
# what the server must never log, whatever it was sent
LOG_ALARMS = ("Traceback", "Exception in ASGI application", "unexpected error")
CLEAR_MARGIN = 0.1  # dominant colour's mean over the next one (0..1) before its label is checked
DOCUMENTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
# the server's pixel limit, and this process's too: importing the service's schemas switches
# Pillow's own bomb check off here (service.tasks.imaging sets Image.MAX_IMAGE_PIXELS = None)
MAX_PIXELS = 40_000_000


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def record(self, name: str, response: httpx.Response | Exception, problem: str | None) -> None:
        if isinstance(response, Exception):
            outcome = type(response).__name__
        elif response.status_code >= 400 and problem is None:  # the service's shape: checked
            outcome = f"{response.status_code} {response.json()['error_type']}"
        else:
            outcome = str(response.status_code)
        self.outcomes[outcome] += 1
        if problem is not None:
            self.problems.append(f"{name}: {problem}")


@dataclass(frozen=True)
class Reference:
    """What an independent Pillow decode says of some bytes."""

    width: int
    height: int
    label: str | None  # the dominant colour, where it is clear


def reference(data: bytes) -> Reference | None:
    """Plain Pillow, the documented formats only, EXIF orientation applied; None when it
    cannot decode the bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=DOCUMENTED_FORMATS) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    return None  # the server must refuse it; this process must not decode it
                opened.load()
                picture = ImageOps.exif_transpose(opened)
    except Exception:  # anything Pillow raises: not decodable
        return None
    label = None
    plain = picture.mode in ("RGB", "L", "CMYK") or (
        picture.mode == "P" and "transparency" not in picture.info
    )
    if plain:  # alpha would be composited by the server: no simple reference colour
        means = np.asarray(picture.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) / 255.0
        first, second = np.sort(means)[::-1][:2]
        if first - second > CLEAR_MARGIN:
            label = COLOURS[int(np.argmax(means))]
    return Reference(picture.width, picture.height, label)


def error_problem(response: httpx.Response, allowed: dict[int, str] | None) -> str | None:
    """None when ``response`` is a 4xx in the service's shape (with the status's error type
    where ``allowed`` names them)."""
    status = response.status_code
    if not 400 <= status < 500:
        return f"status {status}: {response.text[:300]}"
    try:
        body = response.json()
    except ValueError:
        return f"{status} with a body that is not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict) or not ERROR_KEYS <= set(body) <= ERROR_KEYS | {"details"}:
        return f"{status} not in the service's error shape: {body}"
    if not body["error"] or body["request_id"] != response.headers.get("x-request-id"):
        return f"{status} with an empty message or a request_id unlike its header: {body}"
    if allowed is not None and allowed.get(status) != body["error_type"]:
        return f"{status} {body['error_type']}, expected one of {allowed}: {body['error']}"
    return None


def answer_problem(
    endpoint: str, response: httpx.Response, references: list[Reference | None]
) -> str | None:
    """None when a 200 is right for images whose independent decodes are ``references``
    (one per result)."""
    try:
        parsed = ENDPOINTS[endpoint].model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        return f"200 that does not fit {ENDPOINTS[endpoint].__name__}: {exc}"[:400]
    results = getattr(parsed, "results")  # noqa: B009 - every response model has it
    if len(results) != len(references):
        return f"200 with {len(results)} results for {len(references)} images"
    for index, (result, ref) in enumerate(zip(results, references, strict=True)):
        if ref is None:
            return f"200 for an image Pillow cannot decode (result {index}): {response.text[:200]}"
        if endpoint == "/classify":
            top = result.predictions[0].label
            if ref.label is not None and top != ref.label:
                return f"classified {top!r}, the picture is {ref.label!r}"
        elif (result.width, result.height) != (ref.width, ref.height):
            return f"size {result.width}×{result.height}, the picture is {ref.width}×{ref.height}"
    return None


def post_json(client: httpx.Client, endpoint: str, data: bytes) -> httpx.Response | Exception:
    try:
        return client.post(endpoint, json={"images": [base64.b64encode(data).decode()]})
    except httpx.HTTPError as exc:
        return exc


def post_multipart(
    client: httpx.Client, endpoint: str, data: bytes, fmt: str
) -> httpx.Response | Exception:
    files = [("file", (f"x.{fmt.lower()}", data, f"image/{fmt.lower()}"))]
    try:
        return client.post(endpoint, files=files)
    except httpx.HTTPError as exc:
        return exc


def post_raw(client: httpx.Client, endpoint: str, raw: RawBody) -> httpx.Response | Exception:
    try:
        return client.post(endpoint, content=raw.body, headers={"content-type": raw.content_type})
    except httpx.HTTPError as exc:
        return exc


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(
        tiny_repo,
        max_body_bytes=str(4 * 1024 * 1024),
        max_image_pixels=str(MAX_PIXELS),
        **TINY_DEFAULTS,
    ) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
        yield http


def still_well(server: Server, log_from: int) -> list[str]:
    """Problems with the server after a kind: dead, not answering, or alarms in its log."""
    if server.process.poll() is not None:
        return [f"the server exited with {server.process.returncode}"]
    problems = []
    try:
        if httpx.get(server.url + "/health/live", timeout=10).status_code != 200:
            problems.append("/health/live is not 200")
    except httpx.HTTPError as exc:
        problems.append(f"/health/live: {type(exc).__name__}")
    added = server.log()[log_from:]
    problems += [
        f"the server logged {alarm!r}:\n{added[-3000:]}" for alarm in LOG_ALARMS if alarm in added
    ]
    return problems


def report(kind: str, requests: int, tally: Tally) -> None:
    outcomes = ", ".join(f"{k} ×{n}" for k, n in sorted(tally.outcomes.items()))
    print(f"\nmutated inputs, {kind} (seed {SEED}): {requests} requests; {outcomes}")


def test_the_unmutated_images_are_answered_correctly(server: Server, client: httpx.Client) -> None:
    """The control: every format's base image decodes on both sides and is classified red."""
    tally = Tally()
    for fmt in FORMATS:
        data = valid_image(fmt)
        ref = reference(data)
        assert ref is not None and ref.label == "red", (fmt, ref)
        assert (ref.width, ref.height) == base_picture().size
        for endpoint in ENDPOINTS:
            for how, response in (
                ("json", post_json(client, endpoint, data)),
                ("multipart", post_multipart(client, endpoint, data, fmt)),
            ):
                if isinstance(response, Exception):
                    problem: str | None = f"no answer: {type(response).__name__} {response}"
                elif response.status_code != 200:
                    problem = f"{response.status_code}: {response.text[:200]}"
                else:
                    problem = answer_problem(endpoint, response, [ref])
                tally.record(f"{fmt} {how} {endpoint}", response, problem)
    report("control", 2 * len(FORMATS) * len(ENDPOINTS), tally)
    assert tally.problems == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_mutated_image_is_refused_or_answered_correctly(
    server: Server, client: httpx.Client, kind: str
) -> None:
    log_from = len(server.log())
    mutants = image_mutants(kind, SEED, MUTANTS)
    tally = Tally()
    for mutant in mutants:
        ref = reference(mutant.data)
        for endpoint in ENDPOINTS:
            for how, response in (
                ("json", post_json(client, endpoint, mutant.data)),
                ("multipart", post_multipart(client, endpoint, mutant.data, mutant.fmt)),
            ):
                if isinstance(response, Exception):
                    problem: str | None = f"no answer: {type(response).__name__} {response}"
                elif response.status_code == 200:
                    problem = answer_problem(endpoint, response, [ref])
                else:
                    problem = error_problem(response, IMAGE_ERRORS)
                tally.record(f"{mutant.name} {how} {endpoint}", response, problem)
    report(kind, len(mutants) * len(ENDPOINTS) * 2, tally)
    problems = tally.problems + still_well(server, log_from)
    assert problems == [], "\n".join(problems[:20])


def _multipart_problem(endpoint: str, response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return error_problem(response, None)
    # every image any of these bodies carries is the same red picture
    count = len(response.json().get("results", []))
    return answer_problem(endpoint, response, [reference(red_png())] * max(1, count))


@pytest.mark.parametrize("kind", ["malformed", "framing"])
def test_a_malformed_multipart_body_is_refused_or_answered_correctly(
    server: Server, client: httpx.Client, kind: str
) -> None:
    log_from = len(server.log())
    bodies = malformed_multipart() if kind == "malformed" else framing_mutants(SEED, 10 * MUTANTS)
    tally = Tally()
    by_body: dict[str, Counter[int]] = {}
    for raw in bodies:
        for endpoint in ENDPOINTS:
            response = post_raw(client, endpoint, raw)
            if isinstance(response, Exception):
                problem: str | None = f"no answer: {type(response).__name__} {response}"
            else:
                problem = _multipart_problem(endpoint, response)
                by_body.setdefault(raw.name, Counter())[response.status_code] += 1
            tally.record(f"{raw.name} {endpoint}", response, problem)
    report(f"multipart {kind}", len(bodies) * len(ENDPOINTS), tally)
    if kind == "malformed":
        print("  " + "; ".join(f"{name}: {dict(c)}" for name, c in by_body.items()))
        # the harness itself: a well-formed body is answered
        assert by_body["control-valid"] == Counter({200: len(ENDPOINTS)})
    problems = tally.problems + still_well(server, log_from)
    assert problems == [], "\n".join(problems[:20])
