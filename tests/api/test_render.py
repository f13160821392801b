"""render=true on /detect and /segment, and the drawing functions behind it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.tasks import render
from tests.api.conftest import b64, png, solid


def picture(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def red_top_right() -> np.ndarray:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:50, 100:, 0] = 255
    return img


def test_detect_render_returns_a_png_with_the_box_in_its_class_colour(client: TestClient) -> None:
    files = [("file", ("a.png", png(red_top_right()), "image/png"))]
    r = client.post("/detect", files=files, data={"confidence": "0.3", "render": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert "x-inference-time-ms" in r.headers
    drawn = picture(r.content)
    assert drawn.shape == (100, 200, 3)  # the original size
    # the JSON answer puts the red box at x 100-200, y 0-50: its bottom edge is drawn there
    assert tuple(drawn[50, 160]) == render.colour(0)
    assert tuple(drawn[80, 40]) == (0, 0, 0)  # away from any box the image is untouched


def test_detect_render_as_jpeg_from_a_json_request(client: TestClient) -> None:
    r = client.post(
        "/detect",
        json={"images": [b64(png(red_top_right()))], "render": True, "render_format": "jpeg"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content[:2] == b"\xff\xd8"
    assert picture(r.content).shape == (100, 200, 3)


def test_semantic_render_tints_each_class_and_keeps_the_size(client: TestClient) -> None:
    blue = solid((10, 10, 250), w=120, h=90)
    files = [("file", ("a.png", png(blue), "image/png"))]
    r = client.post("/segment", files=files, data={"render": "true"})
    assert r.status_code == 200, r.text
    drawn = picture(r.content).astype(int)
    assert drawn.shape == (90, 120, 3)
    want = (np.array([10, 10, 250]) + np.array(render.colour(2))) / 2  # 50 % overlay of "blue"
    np.testing.assert_allclose(drawn[85, 115], want, atol=1)
    assert (drawn[1, 1] > 200).all()  # the legend's light panel, top left


def test_instance_render_outlines_each_mask(client: TestClient) -> None:
    img = np.zeros((60, 80, 3), np.uint8)
    img[20:40, 30:60, 0] = 255  # the tiny Mask R-CNN's mask is the red channel
    files = [("file", ("a.png", png(img), "image/png"))]
    r = client.post(
        "/segment",
        files=files,
        data={"model": "tiny-maskrcnn", "confidence": "0.01", "render": "true"},
    )
    assert r.status_code == 200, r.text
    drawn = picture(r.content)
    assert drawn.shape == (60, 80, 3)
    assert tuple(drawn[39, 45]) == render.colour(1)  # bottom edge of the mask
    assert tuple(drawn[55, 5]) == (0, 0, 0)


def test_render_needs_exactly_one_image(client: TestClient) -> None:
    images = [b64(png(red_top_right()))] * 2
    for path in ("/detect", "/segment"):
        r = client.post(path, json={"images": images, "render": True})
        assert r.status_code == 400
        assert "one image" in r.json()["error"]


def test_render_format_is_validated(client: TestClient) -> None:
    r = client.post("/detect", json={"images": [b64(png(red_top_right()))], "render_format": "gif"})
    assert r.status_code == 422


def test_class_colours_are_distinct_and_stable() -> None:
    colours = [render.colour(k) for k in range(64)]
    assert len(set(colours)) == 64
    # a pure function of the class id: not of call order, nor of the process (hash seeds)
    assert [render.colour(k) for k in reversed(range(64))][::-1] == colours
    other = subprocess.run(
        [sys.executable, "-c", "from service.tasks import render; print(list(render.colour(40)))"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert json.loads(other.stdout) == list(colours[40])
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)


def test_background_classes_stay_uncoloured_and_sizes_must_match() -> None:
    image = Image.new("RGB", (400, 300), (100, 100, 100))
    class_map = np.zeros((300, 400), np.uint8)
    class_map[:, 200:] = 1
    drawn = np.asarray(render.draw_semantic(image, class_map, ["background", "thing"]))
    assert tuple(drawn[290, 100]) == (100, 100, 100)  # below the legend
    assert tuple(drawn[290, 300]) != (100, 100, 100)
    with pytest.raises(ValueError, match="does not match"):
        render.draw_semantic(image, class_map[:10], ["background", "thing"])


def test_detections_on_a_tiny_image_and_a_box_past_the_edge_do_not_fail() -> None:
    image = Image.new("RGB", (8, 6))
    boxes = [render.Box(-5, -5, 20, 20), render.Box(1, 1, 3, 3)]
    out = render.draw_detections(image, boxes, [0, 300], [0.9, 0.1], ["a"])
    assert out.size == (8, 6)
    assert render.encode(out, "png")[:4] == b"\x89PNG"
