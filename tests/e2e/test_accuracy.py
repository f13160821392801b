"""Accuracy of the trained shapes models, measured over HTTP on held-out generated images."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.support.server import MODELS, Server, running_server
from training.evaluate import (
    DETECTION_IMAGES,
    INSTANCE_IMAGES,
    SEMANTIC_IMAGES,
    evaluate_detection,
    evaluate_instance,
    evaluate_semantic,
)

# The accuracy README.md and docs/detection-segmentation.md publish, measured by this file (run
# with -s to print it) on the image counts they state; each is asserted a few points under it,
# room for a retrain on another machine, not for a regression.
PUBLISHED = {
    "map50": 0.972,  # shapes-yolo, 80 images
    "map50_95": 0.828,
    "heldout_precision": 0.858,  # shapes-yolo, training.heldout, 240 images, seed 18
    "heldout_recall": 0.938,
    "miou": 0.932,  # shapes-unet, 60 images
    "mask_map50": 0.914,  # shapes-maskrcnn, 40 images
    "mask_map50_95": 0.744,
}
PUBLISHED_IOU = {"background": 0.992, "circle": 0.965, "square": 0.929, "triangle": 0.842}
MARGIN = 0.04


def need(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (MODELS / name / "model.onnx").is_file(), reason=f"{name} not built: run `make models`"
    )


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if not (MODELS / "shapes-yolo" / "model.onnx").is_file():
        pytest.skip("shapes models not built: run `make models`")
    # the shapes models, not the COCO default
    with running_server(MODELS, default_detect_model="shapes-yolo") as srv:
        yield srv


@need("shapes-yolo")
def test_detection_map_through_the_api(server: Server) -> None:
    result = evaluate_detection(server.url, images=DETECTION_IMAGES)
    print("detection", result)
    assert result["images"] == DETECTION_IMAGES == 80
    assert result["map50"] >= PUBLISHED["map50"] - MARGIN
    assert result["map50_95"] >= PUBLISHED["map50_95"] - MARGIN


@need("shapes-yolo")
def test_detector_keeps_its_precision_on_an_independent_generator_and_unseen_backgrounds() -> None:
    # training.heldout shares no code with the training generator; half its images are uniform
    # RGB noise, on which a model trained on plain/gradient/noise backgrounds alone reported
    # false triangles everywhere (precision 0.46). Through the service's own DetectProcessor
    # and ONNX Runtime, at the API's default confidence 0.25; IoU >= 0.5 for a hit.
    from training.heldout import evaluate

    result = evaluate(MODELS / "shapes-yolo", images=240, seed=18)
    print("held-out", result)
    assert result["images"] == 240
    assert result["precision"] >= PUBLISHED["heldout_precision"] - MARGIN
    assert result["recall"] >= PUBLISHED["heldout_recall"] - MARGIN


@need("shapes-unet")
def test_semantic_miou_through_the_api(server: Server) -> None:
    result = evaluate_semantic(server.url, images=SEMANTIC_IMAGES)
    print("semantic", result)
    assert result["images"] == SEMANTIC_IMAGES == 60
    assert result["miou"] >= PUBLISHED["miou"] - MARGIN
    for label, iou in PUBLISHED_IOU.items():
        assert result["iou"][label] >= iou - MARGIN, label


@need("shapes-maskrcnn")
def test_instance_mask_map_through_the_api(server: Server) -> None:
    result = evaluate_instance(server.url, images=INSTANCE_IMAGES)
    print("instance", result)
    assert result["images"] == INSTANCE_IMAGES == 40
    assert result["mask_map50"] >= PUBLISHED["mask_map50"] - MARGIN
    assert result["mask_map50_95"] >= PUBLISHED["mask_map50_95"] - MARGIN


def _canvas(w: int, h: int, circle: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", (w, h), (235, 235, 235))
    cx, cy, r = circle
    ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@need("shapes-yolo")
@pytest.mark.parametrize(
    ("w", "h", "circle"),
    [
        (640, 360, (500, 200, 60)),
        (360, 640, (120, 500, 60)),
        (2400, 300, (2000, 150, 140)),  # 8:1; the circle is 41 px after the letterbox
        # a 220 px circle after the letterbox: larger than the full-size training pictures
        # hold; the trainer's small pictures (training.common.varied_samples) cover it
        (96, 96, (48, 48, 30)),
        (32, 32, (15, 17, 7)),
    ],
    ids=["wide", "tall", "huge-panorama", "small", "tiny"],
)
def test_letterboxed_boxes_land_on_the_object_in_the_original_image(
    server: Server, w: int, h: int, circle: tuple[int, int, int]
) -> None:
    r = httpx.post(
        server.url + "/detect",
        files=[("file", ("x.png", _canvas(w, h, circle), "image/png"))],
        timeout=60,
    )
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert (result["width"], result["height"]) == (w, h)
    best = result["detections"][0]
    cx, cy, rad = circle
    box = best["box"]
    assert best["label"] == "circle"
    tolerance = 0.15 * 2 * rad + 2
    assert box["x1"] == pytest.approx(cx - rad, abs=tolerance)
    assert box["x2"] == pytest.approx(cx + rad, abs=tolerance)
    assert box["y1"] == pytest.approx(cy - rad, abs=tolerance)
    assert box["y2"] == pytest.approx(cy + rad, abs=tolerance)


def _square_image(w: int, h: int, box: tuple[int, int, int, int]) -> tuple[bytes, np.ndarray]:
    """A grey canvas with one filled axis-aligned square; returns PNG bytes and its bool mask."""
    img = Image.new("RGB", (w, h), (40, 90, 160))
    ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(250, 210, 40))
    truth = np.zeros((h, w), bool)
    truth[box[1] : box[3], box[0] : box[2]] = True
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@need("shapes-unet")
@pytest.mark.parametrize(
    ("w", "h", "box"),
    [(1200, 300, (900, 60, 1080, 240)), (300, 900, (40, 80, 200, 240))],
    ids=["wide", "tall"],
)
def test_semantic_masks_land_on_the_object_in_the_original_image(
    server: Server, w: int, h: int, box: tuple[int, int, int, int]
) -> None:
    png, truth = _square_image(w, h, box)
    r = httpx.post(
        server.url + "/segment",
        files=[("file", ("x.png", png, "image/png"))],
        data={"model": "shapes-unet"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    mask = _mask(r.json()["results"][0])
    assert mask.shape == (h, w)
    assert _iou(mask == 2, truth) >= 0.85  # 2: square


@need("shapes-maskrcnn")
def test_instance_masks_land_on_the_object_in_the_original_image(server: Server) -> None:
    from pycocotools import mask as mask_utils

    png, truth = _square_image(1400, 500, (1000, 150, 1250, 400))  # scaled to fit 512 first
    r = httpx.post(
        server.url + "/segment",
        files=[("file", ("x.png", png, "image/png"))],
        # an atypical, plain picture: the trained model scores it lower than its shapes (≈ 0.4)
        data={"model": "shapes-maskrcnn", "confidence": "0.2"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    best = r.json()["results"][0]["instances"][0]
    assert best["label"] == "square"
    rle = {"size": best["mask"]["size"], "counts": best["mask"]["counts"].encode()}
    mask = mask_utils.decode(rle).astype(bool)
    assert mask.shape == truth.shape
    assert _iou(mask, truth) >= 0.85
    box = best["box"]
    # 6 % of the 250 px side: the picture reaches the model at 512/1400 of its size, where this
    # is 5.5 px (a retrain measured x1 at 1012.8)
    assert [box["x1"], box["y1"], box["x2"], box["y2"]] == pytest.approx(
        [1000, 150, 1250, 400], abs=15
    )


@need("shapes-yolo")
def test_an_8x8_image_gets_boxes_inside_it(server: Server) -> None:
    r = httpx.post(
        server.url + "/detect",
        files=[("file", ("x.png", _canvas(8, 8, (4, 4, 3)), "image/png"))],
        data={"confidence": "0.01"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert (result["width"], result["height"]) == (8, 8)
    # a 7 px circle blown up 44x is below what the model finds (its best circle scores ~0.04,
    # under the triangles it reports), but at confidence 0.01 there are boxes, and each must be
    # mapped back inside the 8x8 picture; an empty list would pass the loop below vacuously
    assert result["detections"], "no detections at confidence 0.01: nothing to check"
    for d in result["detections"]:
        box = d["box"]
        assert 0 <= box["x1"] <= box["x2"] <= 8
        assert 0 <= box["y1"] <= box["y2"] <= 8


@need("shapes-yolo")
def test_detect_and_segment_batch_invariance(server: Server) -> None:
    from training.evaluate import _png, held_out

    pngs = [_png(s) for s in held_out(4, offset=30_000)]
    for path in ("/detect", "/segment"):
        together = httpx.post(
            server.url + path,
            files=[("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)],
            timeout=60,
        ).json()
        for i, p in enumerate(pngs):
            alone = httpx.post(
                server.url + path, files=[("file", ("x.png", p, "image/png"))], timeout=60
            ).json()
            a, b = alone["results"][0], together["results"][i]
            if path == "/detect":
                assert len(a["detections"]) == len(b["detections"])
                for da, db in zip(a["detections"], b["detections"], strict=True):
                    assert da["label"] == db["label"]
                    assert abs(da["score"] - db["score"]) < 1e-3
                    assert np.allclose(
                        [da["box"][k] for k in ["x1", "y1", "x2", "y2"]],
                        [db["box"][k] for k in ["x1", "y1", "x2", "y2"]],
                        atol=1,
                    )
            else:
                ma, mb = (_mask(x) for x in (a, b))
                assert (ma == mb).mean() > 0.999  # argmax ties may flip a boundary pixel


def _mask(result: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask"]["data"]))))
