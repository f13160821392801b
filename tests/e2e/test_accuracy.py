"""Accuracy of the trained shapes models, measured over HTTP on held-out generated images."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.support.server import REPO_ROOT, Server, running_server
from training.evaluate import evaluate_detection, evaluate_instance, evaluate_semantic

MODELS = REPO_ROOT / "models"


def need(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (MODELS / name / "model.onnx").is_file(), reason=f"{name} not built: run `make models`"
    )


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if not (MODELS / "shapes-yolo" / "model.onnx").is_file():
        pytest.skip("shapes models not built: run `make models`")
    with running_server(MODELS) as srv:
        yield srv


@need("shapes-yolo")
def test_detection_map_through_the_api(server: Server) -> None:
    result = evaluate_detection(server.url, images=80)
    print("detection", result)
    # issue 4's target is mAP@0.5 >= 0.90; the committed model measured 0.881 (mAP@0.5:0.95 0.722)
    # on these 80 images, so this guards against regressions below that, not the target itself
    assert result["map50"] >= 0.85
    assert result["map50_95"] >= 0.6


@need("shapes-unet")
def test_semantic_miou_through_the_api(server: Server) -> None:
    result = evaluate_semantic(server.url, images=60)
    print("semantic", result)
    # target 0.85 (issue 4); a floor until the U-Net is measured to meet it
    assert result["miou"] >= 0.5


@need("shapes-maskrcnn")
def test_instance_mask_map_through_the_api(server: Server) -> None:
    result = evaluate_instance(server.url, images=40)
    print("instance", result)
    # target 0.80 (issue 4); shapes-maskrcnn is built by `make models-maskrcnn`, not by default
    assert result["mask_map50"] >= 0.5


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
        (2400, 300, (2000, 150, 120)),
        (96, 96, (48, 48, 12)),  # upscaled 4×: a 96 px circle at the model input
    ],
    ids=["wide", "tall", "huge-panorama", "tiny"],
)
def test_letterboxed_boxes_land_on_the_object_in_the_original_image(
    server: Server, w, h, circle
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


@need("shapes-yolo")
@pytest.mark.parametrize("path", ["/detect", "/segment"])
def test_detect_and_segment_batch_invariance(server: Server, path: str) -> None:
    from training.evaluate import _png, held_out

    if path == "/segment" and not (MODELS / "shapes-unet" / "model.onnx").is_file():
        pytest.skip("shapes-unet not built: run `make models`")
    pngs = [_png(s) for s in held_out(4, offset=30_000)]
    files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    together = httpx.post(server.url + path, files=files, timeout=60).json()
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
                corners = ["x1", "y1", "x2", "y2"]
                assert np.allclose(
                    [da["box"][k] for k in corners], [db["box"][k] for k in corners], atol=1
                )
        else:
            ma, mb = (_mask(x) for x in (a, b))
            assert (ma == mb).mean() > 0.999  # argmax ties may flip a boundary pixel


def _mask(result: dict) -> np.ndarray:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask"]["data"]))))
