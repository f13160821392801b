"""Behaviours the README and docs/ promise, each against a real ``python -m service``.

- ``version_policy: {specific: [1, 3]}`` serves exactly those versions (README, "Model versions").
- v2 request bodies may be sent ``Content-Encoding: deflate`` (docs/protocols.md), bounded like
  gzip bodies.
- A full queue answers ``/v1/embeddings`` in OpenAI's shape: 429, ``type: rate_limit_error``,
  ``code: overloaded`` and ``Retry-After`` (docs/protocols.md), which the ``openai`` client maps
  to ``RateLimitError``.
- An unload racing a load of the same model leaves the server consistent: what ``/v1/models``
  says is what requests get, never a 5xx (README: "Unload answers 404 for new requests at once").
- A pipeline never mixes versions while a member model reloads (docs/architecture.md: both
  stage models are leased for the whole request): under continuous pipeline requests its
  detector and classifier are reloaded to new versions in turn, and every answer's detections
  and crop classes come from the versions its stages name, a pair that served together.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import helper
from PIL import Image

from tests.support import tiny_models
from tests.support.server import Server, running_server

openai = pytest.importorskip("openai", reason="needs openai (dev extra)")


def _red_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


RED = _red_png()
RED_TENSOR = {
    "inputs": [
        {
            "name": "input",
            "shape": [1, 3, 32, 32],
            "datatype": "FP32",
            "data": [1.0] * 1024 + [0.0] * 2048,
        }
    ]
}


def _classify(url: str, **extra: object) -> httpx.Response:
    return httpx.post(
        f"{url}/classify", json={"images": [RED], "model": "clf", **extra}, timeout=30
    )


# -- {specific: [...]} ---------------------------------------------------------------------------
def test_a_specific_version_policy_serves_exactly_the_listed_versions(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for version in (1, 2, 3):
        tiny_models.versioned_classifier(root / "clf" / str(version), version)
    newest = root / "clf" / "3" / "config.yaml"  # the highest version's config decides
    config = yaml.safe_load(newest.read_text())
    config["version_policy"] = {"specific": [1, 3]}
    newest.write_text(yaml.safe_dump(config))

    with running_server(root) as server:
        [info] = [
            m for m in httpx.get(f"{server.url}/v1/models").json()["models"] if m["name"] == "clf"
        ]
        assert info["status"] == "ready"
        assert [v["version"] for v in info["versions"]] == [1, 3]
        assert httpx.get(f"{server.url}/v2/models/clf").json()["versions"] == ["1", "3"]

        latest = _classify(server.url)  # no version named: the newest serving one
        assert latest.headers["x-model-version"] == "3"
        assert latest.json()["results"][0]["predictions"][0]["label"] == "v3-red"
        first = _classify(server.url, model_version=1)
        assert first.headers["x-model-version"] == "1"
        assert first.json()["results"][0]["predictions"][0]["label"] == "v1-red"

        # version 2 exists on disk but is not in the policy: not served, by any route
        skipped = _classify(server.url, model_version=2)
        assert skipped.status_code == 404, skipped.text
        assert skipped.json()["error_type"] == "model_not_found"
        assert "no version 2" in skipped.json()["error"]
        assert "[1, 3]" in skipped.json()["error"]
        v2_skipped = httpx.post(f"{server.url}/v2/models/clf/versions/2/infer", json=RED_TENSOR)
        assert v2_skipped.status_code == 404
        assert v2_skipped.json()["error_type"] == "model_not_found"
        assert httpx.get(f"{server.url}/v2/models/clf/versions/2/ready").status_code != 200

        for version in (1, 3):
            r = httpx.post(
                f"{server.url}/v2/models/clf/versions/{version}/infer", json=RED_TENSOR
            ).json()
            assert r["model_version"] == str(version)
            assert r["outputs"][0]["data"][0] == pytest.approx(20 + version, abs=1e-4)


# -- deflate request bodies ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(
        tiny_repo, max_body_bytes=str(1024 * 1024), **tiny_models.TINY_DEFAULTS
    ) as srv:
        yield srv


V2_EMBED = {
    "inputs": [
        {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [2, 4, 3, 2, 9, 3]},
        {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1] * 6},
    ]
}


def _v2_embed(server: Server, body: bytes, encoding: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if encoding:
        headers["content-encoding"] = encoding
    return httpx.post(
        f"{server.url}/v2/models/tiny-embedder/infer", content=body, headers=headers, timeout=30
    )


def test_a_deflate_body_is_answered_as_the_same_body_sent_plain(tiny_server: Server) -> None:
    plain = json.dumps(V2_EMBED).encode()
    want = _v2_embed(tiny_server, plain, None)
    assert want.status_code == 200, want.text
    got = _v2_embed(tiny_server, zlib.compress(plain), "deflate")  # RFC 9110: zlib-wrapped
    assert got.status_code == 200, got.text
    assert got.json()["outputs"] == want.json()["outputs"]
    data = np.array(got.json()["outputs"][0]["data"])
    assert data.shape == (16,) and np.abs(data).sum() > 0  # two real 8-d embeddings


def test_deflate_bodies_that_are_broken_or_too_big_are_refused(tiny_server: Server) -> None:
    plain = json.dumps(V2_EMBED).encode()
    garbage = _v2_embed(tiny_server, b"\x78\x9cgarbage", "deflate")
    assert garbage.status_code == 400, garbage.text
    assert garbage.json()["error_type"] == "bad_request"
    assert "not valid deflate data" in garbage.json()["error"]

    truncated = _v2_embed(tiny_server, zlib.compress(plain)[:20], "deflate")
    assert truncated.status_code == 400, truncated.text
    assert truncated.json()["error_type"] == "bad_request"

    bomb = zlib.compress(b" " * (32 * 1024 * 1024), 9)  # 32 MiB of spaces in ~32 KiB
    assert len(bomb) < 64 * 1024
    refused = _v2_embed(tiny_server, bomb, "deflate")
    assert refused.status_code == 413, refused.text
    assert refused.json()["error_type"] == "payload_too_large"
    assert "decompressed body is larger than 1048576 bytes" in refused.json()["error"]
    assert _v2_embed(tiny_server, plain, None).status_code == 200  # and it still serves


# -- OpenAI's 429 --------------------------------------------------------------------------------
QUEUE = 4


def slow_down(path: Path, reads: str, output: str, work: int, size: int) -> None:
    """Make the graph at ``path`` slow with the same answers: ``work`` ``size``×``size`` MatMuls
    on a value read from ``reads`` (input-dependent, so nothing folds them away), whose result
    is multiplied by 0 and added to ``output``."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        if output in node.output:
            node.output[0] = f"fast_{output}"
    a = np.random.default_rng(0).standard_normal((size, size)) / (2.0 * np.sqrt(size))
    nodes = [
        helper.make_node("ReduceMean", [reads], ["s"], keepdims=0),
        tiny_models.const("a", a.astype(np.float32)),
        helper.make_node("Mul", ["a", "s"], ["x0"]),
    ]
    nodes += [helper.make_node("MatMul", [f"x{i}", "a"], [f"x{i + 1}"]) for i in range(work)]
    nodes += [
        helper.make_node("ReduceSum", [f"x{work}"], ["total"], keepdims=0),
        tiny_models.const("zero", np.array(0.0, dtype=np.float32)),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", [f"fast_{output}", "nothing"], [output]),
    ]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def slow_embedder(folder: Path, work: int = 24, size: int = 512) -> None:
    """The tiny embedder (same vocabulary and vectors) plus ``work`` input-dependent
    ``size``×``size`` MatMuls whose result is multiplied by 0: slow, with the same answers. One
    text per run and a queue of ``QUEUE`` rows, so a burst overflows it."""
    tiny_models.embedder(folder)
    slow_down(folder / "model.onnx", "mask_f", "sentence_embedding", work, size)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["batching"] = {"max_batch_size": 1, "max_delay_ms": 0, "max_queue_size": QUEUE}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("slow-embed")
    slow_embedder(root / "slow-embedder")
    with running_server(root, intra_op_threads="1", default_embed_model="slow-embedder") as server:
        yield server


def test_a_full_queue_answers_openai_429_in_openais_shape(slow_server: Server) -> None:
    body = {"model": "slow-embedder", "input": "cat dog"}

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=60, limits=limits) as c:
            return await asyncio.gather(*(c.post("/v1/embeddings", json=body) for _ in range(40)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= QUEUE
    for r in responses:
        if r.status_code == 200:
            assert len(r.json()["data"][0]["embedding"]) == 8
            continue
        error = r.json()
        assert set(error) == {"error"}, error  # OpenAI's shape, not the service's
        assert error["error"]["type"] == "rate_limit_error"
        assert error["error"]["code"] == "overloaded"
        assert error["error"]["param"] is None
        assert "queue" in error["error"]["message"].lower(), error
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-request-id"]


def test_the_openai_client_raises_rate_limit_error_on_a_full_queue(slow_server: Server) -> None:
    async def burst() -> list[Any]:
        client = openai.AsyncOpenAI(
            base_url=slow_server.url + "/v1", api_key="unused", max_retries=0, timeout=60
        )
        calls = [client.embeddings.create(model="slow-embedder", input="cat") for _ in range(40)]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(burst())
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    others = [r for r in results if isinstance(r, BaseException) and r not in limited]
    assert not others, others
    assert limited, "no request was refused: the burst did not fill the queue"
    for exc in limited:
        assert exc.status_code == 429
        assert exc.code == "overloaded"
        assert exc.type == "rate_limit_error"
        assert int(exc.response.headers["retry-after"]) >= 1


# -- unload racing a load ------------------------------------------------------------------------
def _state(url: str) -> str:
    """What /v1/models says of clf: its status, or "absent"."""
    for model in httpx.get(f"{url}/v1/models", timeout=10).json()["models"]:
        if model["name"] == "clf":
            return str(model["status"])
    return "absent"


def test_an_unload_racing_a_load_leaves_a_consistent_server(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    tiny_models.versioned_classifier(root / "clf" / "1", 1)
    with running_server(root, model_control="explicit") as server:
        outcomes: list[tuple[str, int, str]] = []
        states: list[str] = []
        for round_ in range(12):
            barrier = threading.Barrier(2)
            # the first rounds race a reload of a loaded model, the later ones a fresh load
            if round_ >= 6 and _state(server.url) == "ready":
                httpx.post(f"{server.url}/v2/repository/models/clf/unload", timeout=60)

            def call(action: str, barrier: threading.Barrier) -> None:
                barrier.wait()
                r = httpx.post(f"{server.url}/v2/repository/models/clf/{action}", timeout=120)
                kind = r.json().get("error_type", "") if r.status_code != 200 else ""
                outcomes.append((action, r.status_code, kind))

            threads = [threading.Thread(target=call, args=(a, barrier)) for a in ("load", "unload")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

            # whatever won, what /v1/models says is what a request gets
            state = _state(server.url)
            states.append(state)
            answer = _classify(server.url)
            if state == "ready":
                assert answer.status_code == 200, (round_, state, answer.text)
                label = answer.json()["results"][0]["predictions"][0]["label"]
                assert label == "v1-red"
            else:
                assert answer.status_code == 404, (round_, state, answer.text)
                assert answer.json()["error_type"] == "model_not_found"

        print(f"\nload/unload race: {sorted(Counter(outcomes).items())}; after: {Counter(states)}")
        statuses = {status for _, status, _ in outcomes}
        assert statuses <= {200, 404}, outcomes
        assert all(kind in ("", "model_not_found") for _, _, kind in outcomes), outcomes
        # and afterwards the model loads, serves and unloads as ever
        assert httpx.post(f"{server.url}/v2/repository/models/clf/load", timeout=120).is_success
        assert _classify(server.url).status_code == 200
        assert httpx.post(f"{server.url}/v2/repository/models/clf/unload", timeout=60).is_success
        assert _classify(server.url).status_code == 404
        assert server.process.poll() is None
        log = server.log()
        assert "Exception in ASGI application" not in log
        assert "Traceback" not in log


# -- a pipeline never mixes versions while a member reloads --------------------------------------
RED_PX, GREEN_PX = (255, 0, 0), (0, 255, 0)


def _quadrants(*colours: tuple[int, int, int] | None) -> bytes:
    """A 64×64 PNG whose quadrants (top-left, top-right, bottom-left, bottom-right) have these
    colours (None: black): the tiny detector finds each red or green one, box and all."""
    arr = np.zeros((64, 64, 3), np.uint8)
    for (y, x), colour in zip([(0, 0), (0, 32), (32, 0), (32, 32)], colours, strict=False):
        if colour is not None:
            arr[y : y + 32, x : x + 32] = colour
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _box(x: int, y: int) -> dict[str, float]:
    return {"x1": float(x), "y1": float(y), "x2": float(x + 32), "y2": float(y + 32)}


# each picture with its detections: (colour, box)
PICTURES = [
    (_quadrants(RED_PX, None, None, GREEN_PX), {("red", 0, 0), ("green", 32, 32)}),
    (_quadrants(GREEN_PX, RED_PX), {("green", 0, 0), ("red", 32, 0)}),
    (_quadrants(None, None, RED_PX), {("red", 0, 32)}),
]


def versioned_detector(folder: Path, version: int, work: int = 40, size: int = 512) -> None:
    """``tiny-yolo`` whose labels name its version (``v2-red``), plus ``work`` input-dependent
    ``size``×``size`` MatMuls that add 0: the same boxes and scores, but a detect stage long
    enough that reloads land while requests are between their stages. Written by rename."""
    staging = folder.with_name(f".{folder.name}.tmp")
    tiny_models.yolo(staging)
    slow_down(staging / "model.onnx", "images", "output0", work, size)
    config = yaml.safe_load((staging / "config.yaml").read_text())
    config["labels"] = [f"v{version}-red", f"v{version}-green"]
    (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    staging.rename(folder)


def _pipeline_problems(body: dict[str, Any], picks: list[int]) -> tuple[tuple[int, int], list[str]]:
    """The (detector, classifier) versions an answer's stages name, and what in it disagrees
    with them or with the pictures: every detection, box and crop label must come from those
    two versions."""
    stages = {s["stage"]: s for s in body["stages"]}
    det, clf = stages["detect"]["model_version"], stages["classify"]["model_version"]
    problems = []
    if (stages["detect"]["model"], stages["classify"]["model"]) != ("det", "clf"):
        problems.append(f"stages {body['stages']}")
    if len(body["results"]) != len(picks):
        return (det, clf), [f"{len(body['results'])} results for {len(picks)} images"]
    for pick, result in zip(picks, body["results"], strict=True):
        found = set()
        for d in result["detections"]:
            version, _, colour = d["label"].partition("-")
            box = d["box"]
            found.add((colour, int(box["x1"]), int(box["y1"])))
            if version != f"v{det}":
                problems.append(f"detection {d['label']} from a detector at version {det}")
            if d["box"] != _box(int(box["x1"]), int(box["y1"])):
                problems.append(f"box {d['box']}")
            top = d["classification"]["predictions"][0]["label"]
            if top != f"v{clf}-{colour}":
                problems.append(f"a {colour} crop classified {top} by classifier version {clf}")
        if found != PICTURES[pick][1]:
            problems.append(f"picture {pick}: detections {sorted(found)}")
    return (det, clf), problems


def test_a_pipeline_never_mixes_member_versions_while_they_reload(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    versioned_detector(root / "det" / "1", 1)
    tiny_models.versioned_classifier(root / "clf" / "1", 1)
    tiny_models.pipeline(root / "pipe", detect="det", classify="clf")
    with running_server(root, model_control="explicit") as server:
        serving = [(1, 1)]  # every (detector, classifier) pair that served, in order
        answers: list[tuple[int, tuple[int, int] | None, list[str]]] = []
        stop = threading.Event()

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    picks = [int(p) for p in rng.integers(0, len(PICTURES), rng.integers(1, 3))]
                    images = [base64.b64encode(PICTURES[p][0]).decode() for p in picks]
                    r = http.post("/pipelines/pipe", json={"images": images})
                    if r.status_code != 200:
                        answers.append((r.status_code, None, [r.text[:300]]))
                        continue
                    pair, problems = _pipeline_problems(r.json(), picks)
                    answers.append((200, pair, problems))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            versions = {"det": 1, "clf": 1}
            # a new detector, then at once a new classifier: a request whose detect stage spans
            # both swaps would, were its classifier looked up only at the classify stage, pair
            # the old detector with the new classifier, which never served together
            for _ in range(4):
                time.sleep(0.3)
                for name in ("det", "clf"):
                    versions[name] += 1
                    version = versions[name]
                    if name == "det":
                        versioned_detector(root / "det" / str(version), version)
                    else:
                        tiny_models.versioned_classifier(root / "clf" / str(version), version)
                    r = httpx.post(f"{server.url}/v2/repository/models/{name}/load", timeout=120)
                    assert r.status_code == 200, r.text
                    assert r.json()["versions"] == [version]
                    serving.append((versions["det"], versions["clf"]))
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()

    statuses = Counter(status for status, _, _ in answers)
    pairs = Counter(pair for _, pair, _ in answers if pair is not None)
    print(
        f"\npipeline under member reloads: {statuses}; answers by (detector, classifier): {pairs}"
    )
    assert set(statuses) == {200}, [a for a in answers if a[0] != 200][:5]
    problems = [p for _, _, found in answers for p in found]
    assert problems == [], problems[:10]
    # each answer's pair of versions served together at some moment: never a detector of one
    # serving set with a classifier of another
    assert set(pairs) <= set(serving), (sorted(pairs), serving)
    assert len(pairs) >= 4, pairs  # the traffic really spanned the reloads
