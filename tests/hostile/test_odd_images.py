"""Valid but unusual images are not just accepted: they decode to the right pixels, and results
land on the right place (EXIF orientation). In-process: decode_image and the ASGI app."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.EpsImagePlugin
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from service.app import create_app
from service.errors import InvalidImageError
from service.settings import Settings
from service.tasks.imaging import decode_image
from tests.hostile.corpus import IMAGES, b64, exif_jpeg
from tests.support.tiny_models import TINY_DEFAULTS

RED, BLACK = (255, 0, 0), (0, 0, 0)
MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def client(tiny_repo: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))) as c:
        yield c


def pixels(name: str) -> np.ndarray:
    decoded = decode_image(IMAGES[name].make(), max_pixels=MAX_PIXELS)
    assert decoded.image.mode == "RGB"
    return np.asarray(decoded.image, dtype=np.int16)


@pytest.mark.parametrize(
    ("name", "left", "right", "tolerance"),
    [
        ("png", RED, BLACK, 0),
        ("cmyk_jpeg", RED, BLACK, 12),  # JPEG: colour error near the edge aside
        ("webp", RED, BLACK, 0),
        ("bmp", RED, BLACK, 0),
        ("tiff", RED, BLACK, 0),
        ("mpo", RED, BLACK, 12),  # the first picture of the two
        ("png_rgba", RED, BLACK, 0),
        ("png_grey", (76, 76, 76), BLACK, 1),  # ITU-R 601 luma of pure red
        ("png_grey_alpha", (76, 76, 76), BLACK, 1),
        ("png_1bit", (255, 255, 255), BLACK, 0),  # 1-bit: white where it was red
        ("png_palette_transparent", BLACK, RED, 0),  # transparent → composited on black
    ],
)
def test_unusual_modes_decode_to_the_right_colours(
    name: str, left: tuple[int, int, int], right: tuple[int, int, int], tolerance: int
) -> None:
    arr = pixels(name)
    assert arr.shape == (40, 60, 3)
    # the middle of each half, away from JPEG's ringing at the edge
    assert np.abs(arr[5:35, 5:25] - np.array(left)).max() <= tolerance
    assert np.abs(arr[5:35, 35:55] - np.array(right)).max() <= tolerance


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    arr = pixels("png_16bit_grey")  # every pixel 32768 of 65535
    assert np.all(np.abs(arr - 128) <= 1)


def test_float_tiff_is_scaled_into_range_and_keeps_its_order() -> None:
    arr = pixels("tiff_float")[..., 0]  # 0 … 1e6, row-major ramp
    flat = arr.reshape(-1)
    assert flat.min() == 0
    assert flat.max() == 255
    assert np.all(np.diff(flat) >= 0)


def test_animated_gif_uses_the_first_frame(client: TestClient) -> None:
    assert np.all(pixels("gif_animated") == np.array(RED))
    body = client.post("/classify", json={"images": [b64(IMAGES["gif_animated"].make())]}).json()
    assert body["results"][0]["predictions"][0]["label"] == "red"


def test_eps_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    def ghostscript(*args: object, **kwargs: object) -> None:
        raise AssertionError("untrusted bytes were handed to Ghostscript")

    monkeypatch.setattr(PIL.EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(PIL.EpsImagePlugin, "has_ghostscript", lambda: True)
    with pytest.raises(InvalidImageError, match="not a supported image"):
        decode_image(IMAGES["eps_ghostscript"].make(), max_pixels=MAX_PIXELS)


def _scene() -> Image.Image:
    """Asymmetric: red top-left block, green bottom-right block, on black (96×64)."""
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[:32, :48, 0] = 255
    arr[32:, 48:, 1] = 255
    return Image.fromarray(arr)


def _detections(client: TestClient, data: bytes) -> dict:
    response = client.post("/detect", json={"images": [b64(data)], "confidence": 0.2})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_boxes_land_on_the_rotated_content(
    client: TestClient, orientation: int
) -> None:
    """A JPEG tagged with an EXIF orientation answers exactly like the same picture already
    turned upright (a PNG without EXIF): same size, same boxes (±1.5 px for JPEG noise)."""
    tagged = exif_jpeg(_scene(), orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(tagged)))
    assert upright is not None
    buf = io.BytesIO()
    upright.save(buf, format="PNG")
    got, want = _detections(client, tagged), _detections(client, buf.getvalue())
    assert (got["width"], got["height"]) == upright.size
    assert (want["width"], want["height"]) == upright.size
    assert [d["label"] for d in got["detections"]] == [d["label"] for d in want["detections"]]
    assert got["detections"], "the scene has a red and a green block to find"
    for g, w in zip(got["detections"], want["detections"], strict=True):
        assert g["box"] == pytest.approx(w["box"], abs=1.5)
    if orientation != 1:  # the test means something: unrotated, the boxes would differ
        raw = _detections(client, _png_of(_scene()))
        assert raw["detections"] != got["detections"] or raw["width"] != got["width"]


def _png_of(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_segmentation_mask_is_upright(client: TestClient, orientation: int) -> None:
    tagged = exif_jpeg(_scene(), orientation)
    body = client.post("/segment", json={"images": [b64(tagged)]}).json()
    result = body["results"][0]
    assert (result["width"], result["height"]) == (64, 96)  # portrait after a quarter turn
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask"]["data"]))))
    assert mask.shape == (96, 64)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(tagged))))
    green = (upright[..., 1] > 128) & (upright[..., 0] < 128)
    # where the upright picture is clearly green, the mask says green (class 1), elsewhere not
    assert green.sum() > 1000
    assert (mask[green] == 1).mean() > 0.95
    assert (mask[~green] == 1).mean() < 0.05
