from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidImageError, PayloadTooLargeError
from service.model_config import ImagePreprocessing
from service.tasks.imaging import DecodedImage, decode_image, input_tensor

LIMIT = 40_000_000


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but carries almost no data (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_rejected_from_its_header() -> None:
    with pytest.raises(PayloadTooLargeError, match="50000×50000"):
        decode_image(png_header_only(50_000, 50_000), max_pixels=LIMIT)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        encode(Image.new("RGB", (64, 64)), "JPEG")[:200],
        encode(Image.new("RGB", (64, 64)), "PNG")[:60],
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png"],
)
def test_bad_bytes_raise_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data, max_pixels=LIMIT)


def test_exif_orientation_is_applied_and_reported_in_original_size() -> None:
    img = Image.new("RGB", (60, 30), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 30))  # blue strip on the left before rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    decoded = decode_image(encode(img, "JPEG", exif=exif, quality=95), max_pixels=LIMIT)
    assert (decoded.orig_w, decoded.orig_h) == (30, 60)
    top = np.asarray(decoded.image)[2, 15]
    assert top[2] > 200 and top[0] < 80  # the blue strip is now on top


@pytest.mark.parametrize(
    "img",
    [
        Image.new("CMYK", (20, 10), (0, 255, 255, 0)),
        Image.new("L", (20, 10), 128),
        Image.new("LA", (20, 10), (128, 255)),
        Image.new("RGBA", (20, 10), (255, 0, 0, 255)),
    ],
    ids=["cmyk", "grey", "grey-alpha", "rgba"],
)
def test_any_mode_becomes_rgb(img: Image.Image) -> None:
    fmt = "JPEG" if img.mode in ("CMYK", "L") else "PNG"
    decoded = decode_image(encode(img, fmt), max_pixels=LIMIT)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (20, 10)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(arr), "PNG"), max_pixels=LIMIT)
    assert abs(int(np.asarray(decoded.image)[0, 0, 0]) - 128) <= 1


def test_palette_with_transparency_and_animated_gif_first_frame() -> None:
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    decoded = decode_image(encode(pal, "PNG", transparency=0), max_pixels=LIMIT)
    assert tuple(np.asarray(decoded.image)[0, 0]) == (255, 0, 0)
    frames = [Image.new("RGB", (10, 10), c) for c in ((0, 255, 0), (255, 0, 0))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    first = np.asarray(decode_image(gif, max_pixels=LIMIT).image)[5, 5]
    assert first[1] > 200 and first[0] < 50


def test_jpeg_draft_decoding_keeps_original_geometry() -> None:
    img = Image.new("RGB", (1600, 1200), (10, 200, 30))
    decoded = decode_image(encode(img, "JPEG"), max_pixels=LIMIT, min_size=(224, 224))
    assert decoded.image.size[0] < 1600  # decoded at a DCT scale
    assert (decoded.orig_w, decoded.orig_h) == (1600, 1200)
    spec = ImagePreprocessing(resize="letterbox", width=64, height=64)
    _, geo = input_tensor(decoded, spec)
    assert geo.scale_x * 1600 == pytest.approx(64, abs=0.5)


def test_center_crop_and_normalisation_follow_the_config() -> None:
    spec = ImagePreprocessing(
        resize="center_crop",
        resize_shorter=16,
        width=8,
        height=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.5, 1.0),
        color_order="BGR",
    )
    img = Image.new("RGB", (32, 16), (255, 0, 0))
    tensor, _ = input_tensor(DecodedImage(img, 32, 16), spec)
    assert tensor.shape == (3, 8, 8)
    assert tensor.dtype == np.float32
    # BGR order: channel 0 is blue (0 → (0-0.5)/1.0), channel 2 is red ((1-0.5)/0.25)
    np.testing.assert_allclose(tensor[0], -0.5, atol=1e-5)
    np.testing.assert_allclose(tensor[2], 2.0, atol=1e-5)
