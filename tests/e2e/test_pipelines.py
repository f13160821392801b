"""Pipelines (detect → crop → classify) against a real ``python -m service``, on tiny real models.

``tiny-yolo`` finds red and green quadrants of a 64×64 image (one fixed candidate box per
quadrant), and the colour classifiers name a crop's mean colour, so every answer is predictable:
a red top-left quadrant is a "red" detection at 0,0–32,32 whose crop is classified "red".
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.reliability.models import slow_classifier
from tests.support import tiny_models
from tests.support.server import Server, running_server

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def quadrants(*colours: tuple[int, int, int] | None, size: int = 64) -> bytes:
    """A PNG whose quadrants (top-left, top-right, bottom-left, bottom-right) have these colours
    (None: black)."""
    half = size // 2
    arr = np.zeros((size, size, 3), np.uint8)
    corners = [(0, 0), (0, half), (half, 0), (half, half)]
    for (y, x), colour in zip(corners, colours, strict=False):
        if colour is not None:
            arr[y : y + half, x : x + half] = colour
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipelines")
    tiny_models.yolo(root / "tiny-yolo")
    tiny_models.classifier(root / "tiny-classifier")
    # a classifier only the batching test's pipeline uses, so its batch sizes are its own
    batching = {"max_batch_size": 16, "max_delay_ms": 10, "max_queue_size": 256}
    tiny_models.save_model(
        root / "clf-batch",
        tiny_models.classifier_graph(_colour_head(), "clf-batch"),
        tiny_models.classifier_config(batching),
    )
    # one run ≈ 1.6 s on one core (0.8 on two): a 250 ms deadline expires in the classify stage
    slow_classifier(root / "slow-clf", work=384, max_batch_size=1)
    tiny_models.pipeline(root / "colours")
    tiny_models.pipeline(root / "one-crop", crop={"max_crops": 1, "min_size": 4})
    tiny_models.pipeline(root / "only-red", detect_options={"classes": ["red"]})
    tiny_models.pipeline(root / "shared", classify="clf-batch", top_k=1)
    tiny_models.pipeline(root / "slow", classify="slow-clf")
    return root


def _colour_head() -> list[object]:
    from onnx import helper

    return [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        tiny_models.const("w", np.eye(3, dtype=np.float32) * 20.0),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with running_server(repo, default_classify_model="tiny-classifier") as srv:
        yield srv


def post(server: Server, name: str, images: list[bytes], **fields: object) -> httpx.Response:
    body = {"images": [b64(i) for i in images], **fields}
    return httpx.post(f"{server.url}/pipelines/{name}", json=body, timeout=30)


def items_run(server: Server, model: str) -> int:
    for info in httpx.get(server.url + "/v1/models", timeout=10).json()["models"]:
        if info["name"] == model:
            return int(info["batching"]["items"])
    raise AssertionError(f"{model} not listed")


def test_each_detection_carries_its_crops_classification(server: Server) -> None:
    r = post(server, "colours", [quadrants(RED, None, None, GREEN)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "colours"
    assert [(s["stage"], s["model"]) for s in body["stages"]] == [
        ("detect", "tiny-yolo"),
        ("crop", None),
        ("classify", "tiny-classifier"),
    ]
    [result] = body["results"]
    assert (result["width"], result["height"]) == (64, 64)
    found = {d["label"]: d for d in result["detections"]}
    assert set(found) == {"red", "green"}
    assert found["red"]["box"] == {"x1": 0.0, "y1": 0.0, "x2": 32.0, "y2": 32.0}
    assert found["red"]["crop"] == found["red"]["box"]  # padding 0
    assert found["red"]["classification"]["predictions"][0]["label"] == "red"
    assert found["green"]["classification"]["predictions"][0]["label"] == "green"
    assert len(found["red"]["classification"]["predictions"]) == 2  # the pipeline's top_k
    assert all(d["skipped"] is None for d in result["detections"])
    # timing per stage
    for stage in ("detect", "crop", "classify"):
        assert float(r.headers[f"x-{stage}-time-ms"]) >= 0
    assert r.headers["x-crops"] == "2"
    assert re.fullmatch(
        r"detect;dur=[\d.]+, crop;dur=[\d.]+, classify;dur=[\d.]+", r.headers["server-timing"]
    )


def test_the_detections_are_those_detect_returns(server: Server) -> None:
    image = quadrants(GREEN, RED, None, RED)
    detect = httpx.post(
        server.url + "/detect", json={"images": [b64(image)], "model": "tiny-yolo"}, timeout=30
    ).json()
    piped = post(server, "colours", [image]).json()
    plain = [
        {k: d[k] for k in ("label", "class_id", "score", "box")}
        for d in piped["results"][0]["detections"]
    ]
    assert plain == detect["results"][0]["detections"]


def test_zero_detections_give_an_empty_list_and_never_call_the_classifier(server: Server) -> None:
    before = items_run(server, "tiny-classifier")
    r = post(server, "colours", [quadrants(BLUE, BLUE, BLUE, BLUE), quadrants()])
    assert r.status_code == 200, r.text
    assert [res["detections"] for res in r.json()["results"]] == [[], []]
    assert r.headers["x-crops"] == "0"
    assert "x-classify-batch-size" not in r.headers
    assert items_run(server, "tiny-classifier") == before


def test_detections_over_the_crop_limit_come_back_unclassified(server: Server) -> None:
    r = post(server, "one-crop", [quadrants(RED, GREEN, RED, GREEN)])
    assert r.status_code == 200, r.text
    detections = r.json()["results"][0]["detections"]
    assert len(detections) == 4
    classified = [d for d in detections if d["classification"] is not None]
    assert len(classified) == 1
    assert classified[0] is detections[0]  # the highest score is cropped first
    rest = detections[1:]
    assert all(d["skipped"] == "over_limit" and d["crop"] is None for d in rest)
    assert r.headers["x-crops"] == "1"


def test_the_class_filter_of_the_config_and_of_the_request(server: Server) -> None:
    image = quadrants(RED, GREEN, None, RED)
    only_red = post(server, "only-red", [image]).json()["results"][0]["detections"]
    assert [d["label"] for d in only_red] == ["red", "red"]
    narrowed = post(server, "colours", [image], classes=["green"]).json()
    assert [d["label"] for d in narrowed["results"][0]["detections"]] == ["green"]
    outside = post(server, "only-red", [image], classes=["green"])
    assert outside.status_code == 400
    assert "outside this pipeline's class filter" in outside.json()["error"]
    unknown = post(server, "colours", [image], classes=["purple"])
    assert unknown.status_code == 400
    assert "stage detect" in unknown.json()["error"]


def test_a_request_may_change_confidence_and_top_k(server: Server) -> None:
    image = quadrants(RED, (128, 0, 0))  # scores 1.0 and about 0.5
    assert len(post(server, "colours", [image]).json()["results"][0]["detections"]) == 2
    r = post(server, "colours", [image], top_k=1, confidence=0.75).json()
    [detection] = r["results"][0]["detections"]
    assert detection["box"]["x1"] == 0.0
    assert len(detection["classification"]["predictions"]) == 1


def test_the_deadline_expires_in_the_classify_stage_with_a_clear_504(server: Server) -> None:
    image = b64(quadrants(RED))
    started = time.perf_counter()
    r = httpx.post(
        f"{server.url}/pipelines/slow",
        json={"images": [image]},
        headers={"x-request-timeout-ms": "250"},
        timeout=30,
    )
    elapsed = time.perf_counter() - started
    assert r.status_code == 504, r.text
    assert r.headers["x-pipeline-stage"] == "classify"
    body = r.json()
    assert body["error_type"] == "deadline_exceeded"
    assert "pipeline 'slow', stage classify (model 'slow-clf')" in body["error"]
    assert elapsed < 0.25 + 0.6, elapsed  # within the deadline, plus HTTP and a busy host
    # the run that outlived the deadline is dropped, not answered; the next request gets its own
    ok = httpx.post(f"{server.url}/pipelines/slow", json={"images": [image]}, timeout=30)
    assert ok.status_code == 200, ok.text


def _batch_mean(metrics: str, model: str) -> tuple[float, float]:
    def value(name: str) -> float:
        match = re.search(rf'^{name}{{model="{re.escape(model)}"}} ([\d.e+]+)$', metrics, re.M)
        assert match, f"{name} for {model} not in /metrics"
        return float(match.group(1))

    return value("ortserve_batch_size_sum"), value("ortserve_batch_size_count")


def test_crops_of_concurrent_requests_share_classifier_batches(server: Server) -> None:
    """One crop per request: a classifier batch larger than 1 can only hold crops of several
    requests."""
    image = b64(quadrants(None, RED))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/pipelines/shared", json={"images": [image]}) for _ in range(48))
            )

    before = _batch_mean(httpx.get(server.url + "/metrics", timeout=10).text, "clf-batch")
    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    after = _batch_mean(httpx.get(server.url + "/metrics", timeout=10).text, "clf-batch")
    items, batches = after[0] - before[0], after[1] - before[1]
    assert items == 48
    assert items / batches > 1, f"{items} crops in {batches} classifier batches"
    assert max(int(r.headers["x-classify-batch-size"]) for r in responses) > 1


def test_render_draws_both_labels_as_a_png(server: Server) -> None:
    r = post(server, "colours", [quadrants(RED, None, None, GREEN)], render=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(r.content))
    assert picture.size == (64, 64)
    assert r.headers["x-crops"] == "2"
    jpeg = post(server, "colours", [quadrants(RED)], render=True, render_format="jpeg")
    assert jpeg.headers["content-type"] == "image/jpeg"
    two = post(server, "colours", [quadrants(RED), quadrants(RED)], render=True)
    assert two.status_code == 400


def test_multipart_input_with_form_fields(server: Server) -> None:
    files = [
        ("file", ("a.png", quadrants(RED), "image/png")),
        ("file", ("b.png", quadrants(None, GREEN), "image/png")),
    ]
    r = httpx.post(f"{server.url}/pipelines/colours", files=files, data={"top_k": "1"}, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [
        [d["classification"]["predictions"][0]["label"] for d in res["detections"]]
        for res in results
    ] == [["red"], ["green"]]
    assert len(results[0]["detections"][0]["classification"]["predictions"]) == 1


def test_the_model_list_shows_the_pipeline_with_its_steps(server: Server) -> None:
    models = {
        m["name"]: m for m in httpx.get(server.url + "/v1/models", timeout=10).json()["models"]
    }
    info = models["only-red"]
    assert info["task"] == "pipeline"
    assert info["status"] == "ready"
    assert [s["step"] for s in info["steps"]] == ["detect", "crop", "classify"]
    assert info["steps"][0]["model"] == "tiny-yolo"
    assert info["steps"][0]["classes"] == ["red"]
    assert info["steps"][2]["model"] == "tiny-classifier"
    ready = httpx.get(server.url + "/health/ready", timeout=10).json()
    assert ready["models"]["only-red"] == "ready"


@pytest.mark.parametrize(
    ("send", "status"),
    [
        (
            lambda url: httpx.post(
                url + "/pipelines/colours", json={"images": [b64(b"not an image")]}
            ),
            400,
        ),
        (lambda url: httpx.post(url + "/pipelines/colours", json={"images": ["%%%"]}), 400),
        (
            lambda url: httpx.post(
                url + "/pipelines/colours",
                content=b"{",
                headers={"content-type": "application/json"},
            ),
            400,
        ),
        (
            lambda url: httpx.post(
                url + "/pipelines/colours", json={"images": [b64(quadrants(RED))], "model": "x"}
            ),
            422,
        ),
        (
            lambda url: httpx.post(
                url + "/pipelines/colours", json={"images": [b64(quadrants(RED))], "top_k": 0}
            ),
            422,
        ),
        (lambda url: httpx.post(url + "/pipelines/colours", json={"images": []}), 422),
        (
            lambda url: httpx.post(
                url + "/pipelines/colours", content=b"x", headers={"content-type": "text/plain"}
            ),
            415,
        ),
        (
            lambda url: httpx.post(url + "/pipelines/nope", json={"images": [b64(quadrants(RED))]}),
            404,
        ),
        (
            lambda url: httpx.post(
                url + "/pipelines/tiny-yolo", json={"images": [b64(quadrants(RED))]}
            ),
            404,
        ),
        (
            lambda url: httpx.post(
                url + "/pipelines/-bad-", json={"images": [b64(quadrants(RED))]}
            ),
            422,
        ),
    ],
    ids=[
        "not-an-image",
        "bad-base64",
        "bad-json",
        "unknown-field",
        "top-k-0",
        "no-images",
        "media-type",
        "unknown",
        "a-model",
        "bad-name",
    ],
)
def test_bad_input_gets_a_4xx(
    server: Server, send: Callable[[str], httpx.Response], status: int
) -> None:
    r = send(server.url)
    assert r.status_code == status, r.text
    assert r.json()["error_type"]
    if r.json()["error_type"] == "invalid_image":  # the image is the detect stage's input
        assert r.headers["x-pipeline-stage"] == "detect"


# -- loading: refused, waiting, following its models -------------------------------------------
def _small_repo(root: Path) -> Path:
    tiny_models.yolo(root / "tiny-yolo")
    tiny_models.classifier(root / "tiny-classifier")
    return root


def test_startup_refuses_a_pipeline_naming_a_missing_model(tmp_path: Path) -> None:
    repo = _small_repo(tmp_path / "repo")
    tiny_models.pipeline(repo / "broken", classify="no-such-model")
    with pytest.raises(RuntimeError) as failed, running_server(repo, ready_timeout_s=60):
        pass
    assert (
        "pipeline 'broken': field steps.2.model: no model 'no-such-model' in the repository"
        in str(failed.value)
    )


def test_a_load_refuses_a_wrong_task_model_naming_the_field(tmp_path: Path) -> None:
    repo = _small_repo(tmp_path / "repo")
    with running_server(repo, model_control="explicit") as server:
        tiny_models.pipeline(repo / "p", classify="tiny-yolo")
        r = httpx.post(f"{server.url}/v2/repository/models/p/load", timeout=30)
        assert r.status_code == 400
        assert r.json()["error"] == (
            "pipeline 'p': field steps.2.model: model 'tiny-yolo' serves task 'detect'; "
            "a classify step needs a classify model"
        )
        assert post(server, "p", [quadrants(RED)]).status_code == 503
        tiny_models.pipeline(repo / "p")  # fixed
        r = httpx.post(f"{server.url}/v2/repository/models/p/load", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["versions"] == [1]
        assert post(server, "p", [quadrants(RED)]).status_code == 200
        # a model it names goes: the pipeline cannot serve, and says which step
        assert (
            httpx.post(
                f"{server.url}/v2/repository/models/tiny-classifier/unload", timeout=30
            ).status_code
            == 200
        )
        gone = post(server, "p", [quadrants(RED)])
        assert gone.status_code == 503
        assert "steps.2.model" in gone.json()["error"]
        # and it follows it back
        assert (
            httpx.post(
                f"{server.url}/v2/repository/models/tiny-classifier/load", timeout=30
            ).status_code
            == 200
        )
        assert post(server, "p", [quadrants(RED)]).status_code == 200
        assert (
            httpx.post(f"{server.url}/v2/repository/models/p/unload", timeout=30).status_code == 200
        )
        assert post(server, "p", [quadrants(RED)]).status_code == 404


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.1)


def _status(server: Server, name: str) -> tuple[str, str | None]:
    for info in httpx.get(server.url + "/v1/models", timeout=10).json()["models"]:
        if info["name"] == name:
            return info["status"], info["error"]
    return "absent", None


def test_poll_mode_serves_a_pipeline_once_its_models_land(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tiny_models.yolo(repo / "tiny-yolo")
    with running_server(repo, model_control="poll", repository_poll_s="0.2") as server:
        tiny_models.pipeline(repo / "waits", classify="late-clf")
        _wait(lambda: _status(server, "waits")[0] != "absent", 30, "the pipeline's load")
        # its classifier is not in the repository yet: failed, naming the field
        status, error = _status(server, "waits")
        assert status == "failed"
        assert error is not None and "steps.2.model" in error and "'late-clf'" in error
        r = post(server, "waits", [quadrants(RED)])
        assert r.status_code == 503
        assert "late-clf" in r.json()["error"]
        staging = repo / ".late-clf.tmp"
        tiny_models.classifier(staging)
        staging.rename(repo / "late-clf")
        _wait(lambda: _status(server, "waits")[0] == "ready", 30, "the pipeline serving")
        r = post(server, "waits", [quadrants(RED)])
        assert r.status_code == 200, r.text
        assert (
            r.json()["results"][0]["detections"][0]["classification"]["predictions"][0]["label"]
            == "red"
        )
        # a changed config is reloaded; a removed folder unloads the pipeline
        config = yaml.safe_load((repo / "waits" / "config.yaml").read_text())
        config["steps"][2]["top_k"] = 1
        (repo / "waits" / "config.yaml").write_text(yaml.safe_dump(config))
        _wait(
            lambda: (
                len(
                    post(server, "waits", [quadrants(RED)]).json()["results"][0]["detections"][0][
                        "classification"
                    ]["predictions"]
                )
                == 1
            ),
            30,
            "the new top_k",
        )
        shutil.rmtree(repo / "waits")
        _wait(lambda: _status(server, "waits")[0] == "absent", 30, "the pipeline's unload")
        assert post(server, "waits", [quadrants(RED)]).status_code == 404
