"""The hostile-input corpus: odd and malicious images, bodies, parameters and names.

Everything is generated here at test time (nothing binary is committed);
``scripts/make_hostile_corpus.py`` writes the same images to a folder for manual use.

Two kinds of entries:
- ``IMAGES``: bytes + what every vision endpoint must answer for them (200, or a status and
  ``error_type``). Valid-but-unusual images must be accepted; broken ones and bombs refused.
- ``request_cases()``: whole HTTP requests (method, path, body, headers) with the exact status
  and ``error_type`` expected, for every endpoint each applies to.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

# -- images ------------------------------------------------------------------------------------
BOMB_SIDE = 50_000  # 2.5 G pixels declared; 7.5 GB if anything ever allocated it as RGB


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A ~100-byte PNG that declares width × height RGB pixels: its IDAT inflates to a few zero
    rows, but a decoder that trusted the header would allocate width × height × 3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def _red_block(w: int = 60, h: int = 40) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2, 0] = 255  # left half red, right half black
    return Image.fromarray(arr)


def bomb_jpeg(side: int = 65_000) -> bytes:
    """A real small JPEG whose SOF0 header is patched to claim side × side pixels."""
    data = bytearray(_save(_red_block(), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, side, side)  # height, width after length + precision
    return bytes(data)


def bomb_gif(side: int = 65_535) -> bytes:
    data = bytearray(_save(_red_block().convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, side, side)  # logical screen width, height
    return bytes(data)


def bomb_bmp(side: int = BOMB_SIDE) -> bytes:
    data = bytearray(_save(_red_block(), "BMP"))
    struct.pack_into("<ii", data, 18, side, side)  # BITMAPINFOHEADER width, height
    return bytes(data)


def bomb_tiff(side: int = BOMB_SIDE) -> bytes:
    """Little-endian TIFF, one IFD declaring side × side 8-bit grey, with a 16-byte strip."""
    tags = [  # (tag, type, count, value): type 3 = SHORT, 4 = LONG
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, side),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd_offset = 8
    strip_offset = ifd_offset + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset))
    out += struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0) + b"\x00" * 16
    return bytes(out)


def exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(img, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    """Three frames: red, green, blue. Only the first (red) is classified."""
    frames = [
        Image.fromarray(np.full((40, 60, 3), colour, np.uint8))
        for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40)
    return buf.getvalue()


def palette_with_transparency() -> bytes:
    """Palette PNG: index 0 transparent (left half), index 1 opaque red (right half)."""
    img = Image.new("P", (60, 40), 0)
    img.putpalette([0, 255, 0] + [255, 0, 0] + [0, 0, 0] * 254)  # transparent green, red
    img.paste(1, (30, 0, 60, 40))
    return _save(img, "PNG", transparency=0)


def png16(value: int = 32_768) -> bytes:
    return _save(Image.fromarray(np.full((40, 60), value, np.uint16)), "PNG")


def mpo() -> bytes:
    """Multi-picture JPEG (phone cameras); decodes as its first picture."""
    red, blue = _red_block(), Image.new("RGB", (60, 40), (0, 0, 255))
    return _save(red, "MPO", save_all=True, append_images=[blue])


def _jpeg() -> bytes:
    return _save(_red_block(), "JPEG", quality=95)


def _png() -> bytes:
    return _save(_red_block(), "PNG")


@dataclass(frozen=True)
class ImageCase:
    make: Callable[[], bytes]
    status: int = 200
    error_type: str | None = None
    note: str = ""
    json_status: int | None = None  # when base64 in JSON is answered differently
    json_error_type: str | None = None

    def __post_init__(self) -> None:
        if (self.status >= 400) != bool(self.error_type):
            raise ValueError(f"status {self.status} with error_type {self.error_type}")


IMAGES: dict[str, ImageCase] = {
    # valid, unusual: accepted
    "png": ImageCase(_png),
    "jpeg": ImageCase(_jpeg),
    "cmyk_jpeg": ImageCase(lambda: _save(_red_block().convert("CMYK"), "JPEG", quality=95)),
    "png_16bit_grey": ImageCase(png16),
    "png_palette_transparent": ImageCase(palette_with_transparency),
    "png_grey": ImageCase(lambda: _save(_red_block().convert("L"), "PNG")),
    "png_grey_alpha": ImageCase(lambda: _save(_red_block().convert("LA"), "PNG")),
    "png_rgba": ImageCase(lambda: _save(_red_block().convert("RGBA"), "PNG")),
    "png_1bit": ImageCase(
        lambda: _save(_red_block().convert("L").point(lambda v: 255 * (v > 50)).convert("1"), "PNG")
    ),
    "gif_animated": ImageCase(animated_gif),
    "jpeg_exif_rotated_6": ImageCase(lambda: exif_jpeg(_red_block(), 6)),
    "jpeg_exif_orientation_invalid": ImageCase(lambda: exif_jpeg(_red_block(), 99)),
    "mpo": ImageCase(mpo),
    "webp": ImageCase(lambda: _save(_red_block(), "WEBP", lossless=True)),
    "bmp": ImageCase(lambda: _save(_red_block(), "BMP")),
    "tiff": ImageCase(lambda: _save(_red_block(), "TIFF")),
    "tiff_float": ImageCase(
        lambda: _save(
            Image.fromarray(np.linspace(0, 1e6, 2400, dtype=np.float32).reshape(40, 60)), "TIFF"
        )
    ),
    "one_pixel": ImageCase(lambda: _save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")),
    "tall_1x5000": ImageCase(lambda: _save(Image.new("RGB", (1, 5000), (255, 0, 0)), "PNG")),
    "wide_5000x1": ImageCase(lambda: _save(Image.new("RGB", (5000, 1), (255, 0, 0)), "PNG")),
    # broken: 400 invalid_image
    "zero_bytes": ImageCase(lambda: b"", 400, "invalid_image", "", 422, "validation_error"),
    "text_not_image": ImageCase(lambda: b"hello, I am not an image", 400, "invalid_image"),
    "html": ImageCase(lambda: b"<html><img src=x onerror=alert(1)></html>", 400, "invalid_image"),
    "svg": ImageCase(
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        400,
        "invalid_image",
    ),
    "truncated_jpeg": ImageCase(lambda: _jpeg()[: len(_jpeg()) // 2], 400, "invalid_image"),
    "truncated_png": ImageCase(lambda: _png()[: len(_png()) // 2], 400, "invalid_image"),
    "png_signature_only": ImageCase(lambda: _png()[:8], 400, "invalid_image"),
    "jpeg_header_only": ImageCase(lambda: _jpeg()[:200], 400, "invalid_image"),
    "eps_ghostscript": ImageCase(
        lambda: _save(_red_block(), "EPS"), 400, "invalid_image", "never reaches Ghostscript"
    ),
    "pdf": ImageCase(lambda: _save(_red_block(), "PDF"), 400, "invalid_image"),
    "ico": ImageCase(lambda: _save(_red_block(), "ICO"), 400, "invalid_image"),
    "ppm": ImageCase(lambda: _save(_red_block(), "PPM"), 400, "invalid_image"),
    # decompression bombs: refused from the header, before any pixel is allocated
    "bomb_png_50000x50000": ImageCase(bomb_png, 413, "payload_too_large"),
    "bomb_jpeg_65000x65000": ImageCase(bomb_jpeg, 413, "payload_too_large"),
    "bomb_gif_65535x65535": ImageCase(bomb_gif, 413, "payload_too_large"),
    "bomb_bmp_50000x50000": ImageCase(bomb_bmp, 413, "payload_too_large"),
    "bomb_tiff_50000x50000": ImageCase(bomb_tiff, 413, "payload_too_large"),
}
BOMBS = [name for name in IMAGES if name.startswith("bomb_")]

# (path, model) pairs: every vision endpoint and every output format
VISION = [
    ("/classify", None),
    ("/detect", None),
    ("/detect", "tiny-yolov5"),
    ("/detect", "tiny-tv-detector"),
    ("/segment", None),
    ("/segment", "tiny-maskrcnn"),
    ("/segment", "tiny-yolo-seg"),
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- whole requests ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    path: str
    status: int
    error_type: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # httpx request arguments
    method: str = "POST"
    says: str = ""  # a fragment the error message must contain (case-insensitive)

    def __post_init__(self) -> None:
        # an error case that names no type would let any error body pass (OpenAI's shape: the
        # type is its ``code``; ``invalid_value`` for a request that fails validation)
        if (self.status >= 400) != bool(self.error_type):
            raise ValueError(f"{self.id}: status {self.status} with error_type {self.error_type}")

    def request_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)


def raw(
    body: bytes | str, content_type: str = "application/json", **headers: str
) -> dict[str, Any]:
    data = body.encode() if isinstance(body, str) else body
    return {"content": data, "headers": {"content-type": content_type, **headers}}


def multipart(files: list[bytes], **fields: str) -> dict[str, Any]:
    return {
        "files": [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)],
        "data": fields,
    }


# a tiny valid image for requests whose point is something else
TINY_PNG = _save(Image.new("RGB", (8, 8), (200, 30, 30)), "PNG")
TINY = b64(TINY_PNG)
JSON_ENDPOINTS = ["/classify", "/detect", "/segment", "/embed", "/v1/embeddings"]
V2_INFER = "/v2/models/tiny-embedder/infer"
ALL_POST = [*JSON_ENDPOINTS, V2_INFER]

# parameter abuse, per vision endpoint: (field, JSON value, multipart value)
BAD_PARAMS: dict[str, list[tuple[str, Any, str]]] = {
    "/classify": [
        ("top_k", 0, "0"),
        ("top_k", -1, "-1"),
        ("top_k", 10**30, "1" + "0" * 30),
        ("top_k", "NaN", "nan"),
        ("top_k", 1.5, "1.5"),
        ("top_k", "five", "five"),
        ("top_k", None, ""),
        ("top_k", [3], "[3]"),
    ],
    "/detect": [
        ("confidence", "NaN", "nan"),
        ("confidence", "Infinity", "inf"),
        ("confidence", -0.1, "-0.1"),
        ("confidence", 1.5, "1.5"),
        ("iou", "NaN", "NaN"),
        ("iou", 2, "2"),
        ("iou", -1, "-1"),
        ("max_detections", 0, "0"),
        ("max_detections", -5, "-5"),
        ("max_detections", 10**12, "1000000000000"),
        ("max_detections", "many", "many"),
        ("classes", "red", "x" * 300),
        ("render", "maybe", "maybe"),
        ("render_format", "gif", "gif"),
    ],
    "/segment": [
        ("confidence", "NaN", "nan"),
        ("confidence", 7, "7"),
        ("mask_format", "bmp", "bmp"),
        ("render", [], "[]"),
    ],
}

BAD_MODEL_NAMES = [
    "../tiny-classifier",
    "../../../../etc/passwd",
    "%2e%2e%2fetc%2fpasswd",
    "..",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "tiny-classifier/../tiny-seg",
    "tiny-classifier\x00",
    "",
    "a" * 200,
    "-leading-dash",
]


def request_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # -- bodies that are not what they claim ----------------------------------------------
    for path in ALL_POST:
        openai = path == "/v1/embeddings"
        add(Case(f"empty-body{path}", path, 400, "bad_request", raw(b"")))
        add(Case(f"invalid-json{path}", path, 400, "bad_request", raw(b"{")))
        add(
            Case(
                f"invalid-utf8{path}",
                path,
                400,
                "bad_request",
                raw(b'{"inputs": "\xff\xfe\xfd", "images": ["\xc3\x28"]}'),
            )
        )
        add(
            Case(
                f"lone-surrogate{path}",
                path,
                400,
                "bad_request",
                raw('{"inputs": "\\ud800", "input": "\\udfff"}'),
            )
        )
        add(
            Case(
                f"nan-literal{path}",
                path,
                400,
                "bad_request",
                raw('{"inputs": "cat", "top_k": NaN}'),
            )
        )
        add(
            Case(
                f"deeply-nested{path}",
                path,
                400,
                "bad_request",
                raw("[" * 100_000 + "]" * 100_000),
            )
        )
        # v2 reads its body whatever the type (Triton clients send JSON and binary alike)
        status, kind = (400, "bad_request") if path == V2_INFER else (415, "unsupported_media_type")
        add(
            Case(
                f"wrong-content-type{path}",
                path,
                status,
                kind,
                raw(b"cat", "text/plain"),
            )
        )
        add(
            Case(
                f"xml{path}",
                path,
                status,
                kind,
                raw(b"<?xml version='1.0'?><a/>", "application/xml"),
            )
        )
        for value in ("[]", '"text"', "null", "5", "true"):
            status = 400 if openai or path == V2_INFER else 422
            kind = (
                "invalid_value"
                if openai
                else ("bad_request" if path == V2_INFER else "validation_error")
            )
            add(Case(f"top-level-{value}{path}", path, status, kind, raw(value)))
        for header, value in (
            ("x-request-timeout-ms", "soon"),
            ("x-request-timeout-ms", "nan"),
            ("x-request-timeout-ms", "-5"),
            ("x-request-timeout-ms", "0"),
        ):
            add(
                Case(
                    f"timeout-header-{value}{path}",
                    path,
                    400,
                    "bad_request",
                    {"json": {"inputs": "cat"}, "headers": {header: value}},
                )
            )

    # -- vision requests ------------------------------------------------------------------
    for path in ("/classify", "/detect", "/segment"):
        js = {"json": {"images": [TINY]}}
        add(Case(f"ok-json{path}", path, 200, None, js))
        add(Case(f"ok-multipart{path}", path, 200, None, multipart([TINY_PNG])))
        add(
            Case(
                f"unknown-field{path}",
                path,
                422,
                "validation_error",
                {"json": {"images": [TINY], "colour": 1}},
            )
        )
        add(
            Case(
                f"unknown-form-field{path}",
                path,
                422,
                "validation_error",
                multipart([TINY_PNG], colour="1"),
            )
        )
        add(Case(f"images-missing{path}", path, 422, "validation_error", {"json": {}}))
        add(
            Case(
                f"images-empty-list{path}", path, 422, "validation_error", {"json": {"images": []}}
            )
        )
        add(
            Case(
                f"images-not-list{path}", path, 422, "validation_error", {"json": {"images": TINY}}
            )
        )
        add(
            Case(
                f"image-not-string{path}", path, 422, "validation_error", {"json": {"images": [5]}}
            )
        )
        add(
            Case(
                f"image-empty-string{path}",
                path,
                422,
                "validation_error",
                {"json": {"images": [""]}},
            )
        )
        add(Case(f"invalid-base64{path}", path, 400, "bad_request", {"json": {"images": ["***"]}}))
        add(
            Case(
                f"base64-of-text{path}",
                path,
                400,
                "invalid_image",
                {"json": {"images": [b64(b"hello")]}},
            )
        )
        add(
            Case(
                f"data-uri-empty{path}",
                path,
                400,
                "invalid_image",
                {"json": {"images": ["data:image/png;base64,"]}},
            )
        )
        add(
            Case(
                f"data-uri-ok{path}",
                path,
                200,
                None,
                {"json": {"images": ["data:image/png;base64," + TINY]}},
            )
        )
        # no URL fetching, ever: a URL is just invalid base64
        for url in (
            "http://127.0.0.1:9/x.png",
            "https://example.com/cat.jpg",
            "file:///etc/passwd",
            "gopher://127.0.0.1:6379/_INFO",
        ):
            add(
                Case(
                    f"url-{url.split(':')[0]}{path}",
                    path,
                    400,
                    "bad_request",
                    {"json": {"images": [url]}},
                )
            )
        add(
            Case(
                f"too-many-images-json{path}",
                path,
                413,
                "payload_too_large",
                {"json": {"images": [TINY] * 33}},
            )
        )
        add(
            Case(
                f"over-schema-images-json{path}",
                path,
                422,
                "validation_error",
                {"json": {"images": [TINY] * 257}},
            )
        )
        add(
            Case(
                f"too-many-images-multipart{path}",
                path,
                413,
                "payload_too_large",
                multipart([TINY_PNG] * 33),
            )
        )
        add(
            Case(
                f"many-many-files-multipart{path}",
                path,
                400,
                "bad_request",
                multipart([TINY_PNG] * 60),
            )
        )
        add(
            Case(
                f"multipart-no-file{path}",
                path,
                400,
                "bad_request",
                {"data": {"top_k": "1"}, "files": [("other", ("a", b"x"))]},
            )
        )
        add(
            Case(
                f"multipart-file-as-text{path}",
                path,
                400,
                "bad_request",
                {"data": {"file": "abc"}, "files": [("x", ("a", b""))]},
            )
        )
        add(
            Case(
                f"multipart-no-boundary{path}",
                path,
                400,
                "bad_request",
                raw(b"--x\r\n", "multipart/form-data"),
            )
        )
        add(
            Case(
                f"multipart-garbage{path}",
                path,
                400,
                "bad_request",
                raw(b"garbage", "multipart/form-data; boundary=zz"),
            )
        )
        add(Case(f"multipart-empty-file{path}", path, 400, "invalid_image", multipart([b""])))
        add(
            Case(
                f"model-unknown{path}",
                path,
                404,
                "model_not_found",
                {"json": {"images": [TINY], "model": "no-such-model"}},
            )
        )
        wrong = "tiny-embedder"
        add(
            Case(
                f"model-wrong-task{path}",
                path,
                400,
                "bad_request",
                {"json": {"images": [TINY], "model": wrong}},
            )
        )
        add(
            Case(
                f"model-wrong-task-multipart{path}",
                path,
                400,
                "bad_request",
                multipart([TINY_PNG], model=wrong),
            )
        )
        for i, name in enumerate(BAD_MODEL_NAMES):
            add(
                Case(
                    f"model-traversal-{i}{path}",
                    path,
                    422,
                    "validation_error",
                    {"json": {"images": [TINY], "model": name}},
                )
            )
            if "\x00" not in name:
                add(
                    Case(
                        f"model-traversal-form-{i}{path}",
                        path,
                        422,
                        "validation_error",
                        multipart([TINY_PNG], model=name),
                    )
                )
        add(
            Case(
                f"model-not-string{path}",
                path,
                422,
                "validation_error",
                {"json": {"images": [TINY], "model": ["x"]}},
            )
        )
        for j, (name, js_value, form_value) in enumerate(BAD_PARAMS[path]):
            add(
                Case(
                    f"param-{name}-{j}-json{path}",
                    path,
                    422,
                    "validation_error",
                    {"json": {"images": [TINY], name: js_value}},
                    says=name,
                )
            )
            add(
                Case(
                    f"param-{name}-{j}-form{path}",
                    path,
                    422,
                    "validation_error",
                    multipart([TINY_PNG], **{name: form_value}),
                    says=name,
                )
            )
    add(
        Case(
            "render-two-images/detect",
            "/detect",
            400,
            "bad_request",
            {"json": {"images": [TINY, TINY], "render": True}},
        )
    )
    add(
        Case(
            "classes-unknown-label/detect",
            "/detect",
            400,
            "bad_request",
            {"json": {"images": [TINY], "classes": ["zebra"]}},
        )
    )
    add(
        Case(
            "classes-many/detect",
            "/detect",
            422,
            "validation_error",
            {"json": {"images": [TINY], "classes": ["red"] * 1001}},
        )
    )
    add(Case("classes-empty-ok/detect", "/detect", 200, None, multipart([TINY_PNG], classes=",,,")))

    # -- text requests --------------------------------------------------------------------
    long_text = ("cat dog " * 12_500)[:100_000]
    for path, key in (("/embed", "inputs"), ("/v1/embeddings", "input")):
        openai = path == "/v1/embeddings"
        e422 = 400 if openai else 422  # OpenAI answers every invalid request with 400
        kind422 = "invalid_value" if openai else "validation_error"
        add(Case(f"ok{path}", path, 200, None, {"json": {key: "cat dog"}}))
        # blank texts pass the schema and are refused by the service's own check, in both shapes
        blank = "validation_error"
        add(Case(f"empty-text{path}", path, e422, blank, {"json": {key: ""}}, says="empty"))
        add(
            Case(
                f"whitespace-text{path}",
                path,
                e422,
                blank,
                {"json": {key: " \t\n\u3000 "}},
                says="whitespace",
            )
        )
        add(
            Case(
                f"one-empty-of-many{path}",
                path,
                e422,
                blank,
                {"json": {key: ["cat", " "]}},
                says=f"{key}[1]",
            )
        )
        add(Case(f"empty-list{path}", path, e422, kind422, {"json": {key: []}}))
        add(Case(f"text-number{path}", path, e422, kind422, {"json": {key: 5}}))
        add(Case(f"text-null{path}", path, e422, kind422, {"json": {key: None}}))
        add(Case(f"text-nested{path}", path, e422, kind422, {"json": {key: [["cat"]]}}))
        add(Case(f"text-object{path}", path, e422, kind422, {"json": {key: {"a": 1}}}))
        add(
            Case(
                f"control-chars{path}",
                path,
                200,
                None,
                {"json": {key: "cat\u0000dog\u0007\u001b[31m\r\n\ufeff"}},
            )
        )
        add(
            Case(
                f"unicode-odd{path}",
                path,
                200,
                None,
                {"json": {key: "\u202ecat\u200b🐈 ǅ ﬀ \U0010ffff"}},
            )
        )
        add(Case(f"text-100k-truncated{path}", path, 200, None, {"json": {key: long_text}}))
        add(
            Case(
                f"text-over-limit{path}",
                path,
                413,
                "payload_too_large",
                {"json": {key: long_text + "x"}},
            )
        )
        add(
            Case(
                f"too-many-texts{path}",
                path,
                413,
                "payload_too_large",
                {"json": {key: ["cat"] * 257}},
            )
        )
        add(Case(f"over-schema-texts{path}", path, e422, kind422, {"json": {key: ["cat"] * 4097}}))
        add(Case(f"unknown-field{path}", path, e422, kind422, {"json": {key: "cat", "colour": 1}}))
        add(
            Case(
                f"model-unknown{path}",
                path,
                404,
                "model_not_found",
                {"json": {key: "cat", "model": "nope"}},
            )
        )
        add(
            Case(
                f"model-wrong-task{path}",
                path,
                400,
                "bad_request",
                {"json": {key: "cat", "model": "tiny-classifier"}},
            )
        )
        for i, name in enumerate(BAD_MODEL_NAMES):
            add(
                Case(
                    f"model-traversal-{i}{path}",
                    path,
                    e422,
                    kind422,
                    {"json": {key: "cat", "model": name}},
                )
            )
    add(
        Case(
            "text-100k-no-truncate/embed",
            "/embed",
            422,
            "validation_error",
            {"json": {"inputs": long_text, "truncate": False}},
        )
    )
    add(
        Case(
            "normalize-wrong-type/embed",
            "/embed",
            422,
            "validation_error",
            {"json": {"inputs": "cat", "normalize": "yes please"}},
        )
    )
    add(
        Case(
            "token-ids/v1/embeddings",
            "/v1/embeddings",
            400,
            "bad_request",
            {"json": {"input": [1, 2, 3]}},
            says="token-id arrays are not supported",
        )
    )
    add(
        Case(
            "dimensions-zero/v1/embeddings",
            "/v1/embeddings",
            400,
            "invalid_value",
            {"json": {"input": "cat", "dimensions": 0}},
        )
    )
    add(
        Case(
            "dimensions-huge/v1/embeddings",
            "/v1/embeddings",
            400,
            "bad_request",
            {"json": {"input": "cat", "dimensions": 9999}},
        )
    )
    add(
        Case(
            "encoding-format/v1/embeddings",
            "/v1/embeddings",
            400,
            "invalid_value",
            {"json": {"input": "cat", "encoding_format": "int8"}},
        )
    )

    # -- Open Inference Protocol v2 -------------------------------------------------------
    def v2(inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"json": {"inputs": inputs, **extra}}

    def ids(values: list[int], mask: list[int] | None = None) -> list[dict[str, Any]]:
        n = len(values)
        return [
            {"name": "input_ids", "shape": [1, n], "datatype": "INT64", "data": values},
            {
                "name": "attention_mask",
                "shape": [1, n],
                "datatype": "INT64",
                "data": mask or [1] * n,
            },
        ]

    add(Case("v2-ok", V2_INFER, 200, None, v2(ids([2, 4, 3]))))
    add(Case("v2-token-id-too-big", V2_INFER, 400, "bad_request", v2(ids([2, 99_999, 3]))))
    add(Case("v2-token-id-negative", V2_INFER, 400, "bad_request", v2(ids([2, -5, 3]))))
    add(Case("v2-mask-negative", V2_INFER, 400, "bad_request", v2(ids([2, 4, 3], [1, -1, 1]))))
    add(Case("v2-int-overflow", V2_INFER, 400, "bad_request", v2(ids([2, 2**70, 3]))))
    add(Case("v2-float-ids", V2_INFER, 400, "bad_request", v2(ids([2, 4.5, 3]))))  # type: ignore[list-item]
    add(Case("v2-string-data", V2_INFER, 400, "bad_request", v2(ids(["a", "b"]))))  # type: ignore[list-item]
    add(
        Case(
            "v2-ragged",
            V2_INFER,
            400,
            "bad_request",
            v2([{**ids([1, 2])[0], "data": [[1], [2, 3]]}, ids([1, 2])[1]]),
        )
    )
    add(
        Case(
            "v2-shape-mismatch",
            V2_INFER,
            400,
            "bad_request",
            v2([{**ids([1, 2])[0], "shape": [1, 7]}, ids([1, 2])[1]]),
        )
    )
    add(
        Case(
            "v2-wrong-dtype",
            V2_INFER,
            400,
            "bad_request",
            v2([{**ids([1, 2])[0], "datatype": "FP32"}, ids([1, 2])[1]]),
        )
    )
    add(Case("v2-missing-input", V2_INFER, 400, "bad_request", v2(ids([1, 2])[:1])))
    add(
        Case(
            "v2-unknown-input",
            V2_INFER,
            400,
            "bad_request",
            v2([*ids([1, 2]), {"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]),
        )
    )
    add(
        Case(
            "v2-zero-shape",
            V2_INFER,
            400,
            "bad_request",
            v2([{**t, "shape": [0, 2], "data": []} for t in ids([1, 2])]),
        )
    )
    add(
        Case(
            "v2-negative-shape",
            V2_INFER,
            400,
            "bad_request",
            v2([{**t, "shape": [1, -2]} for t in ids([1, 2])]),
        )
    )
    add(
        Case(
            "v2-huge-shape",
            V2_INFER,
            400,
            "bad_request",
            v2([{**t, "shape": [1, 2**62]} for t in ids([1, 2])]),
        )
    )
    add(
        Case(
            "v2-too-many-rows",
            V2_INFER,
            413,
            "payload_too_large",
            v2([{**t, "shape": [65, 1], "data": [1] * 65} for t in ids([1])]),
        )
    )
    add(
        Case(
            "v2-unknown-output",
            V2_INFER,
            400,
            "bad_request",
            v2(ids([2, 3]), outputs=[{"name": "nope"}]),
        )
    )
    add(Case("v2-unknown-model", "/v2/models/nope/infer", 404, "model_not_found", v2(ids([2, 3]))))
    add(
        Case(
            "v2-wrong-version",
            "/v2/models/tiny-embedder/versions/7/infer",
            404,
            "model_not_found",
            v2(ids([2, 3])),
        )
    )
    good_v2 = json.dumps({"inputs": ids([2, 4, 3])}).encode()
    add(
        Case(
            "v2-gzip-ok",
            V2_INFER,
            200,
            None,
            raw(gzip.compress(good_v2), **{"content-encoding": "gzip"}),
        )
    )
    add(
        Case(
            "v2-gzip-garbage",
            V2_INFER,
            400,
            "bad_request",
            raw(b"\x1f\x8b\x08garbage", **{"content-encoding": "gzip"}),
        )
    )
    bomb = gzip.compress(b" " * (64 * 1024 * 1024), 9)  # 64 MiB of spaces in ~64 KiB
    add(
        Case(
            "v2-gzip-bomb",
            V2_INFER,
            413,
            "payload_too_large",
            raw(bomb, **{"content-encoding": "gzip"}),
        )
    )
    add(
        Case(
            "v2-brotli",
            V2_INFER,
            415,
            "unsupported_media_type",
            raw(good_v2, **{"content-encoding": "br"}),
        )
    )
    for value in ("-1", "0", "abc", "99999999999999999999"):
        add(
            Case(
                f"v2-header-length-{value}",
                V2_INFER,
                400,
                "bad_request",
                raw(good_v2, **{"inference-header-content-length": value}),
            )
        )
    binary_ids = dict(ids([2, 3])[0])
    binary_ids.pop("data")
    binary_ids["parameters"] = {"binary_data_size": 16}
    header = json.dumps({"inputs": [binary_ids, ids([2, 3])[1]]}).encode()
    add(
        Case(
            "v2-binary-short",
            V2_INFER,
            400,
            "bad_request",
            raw(header + b"\x00" * 8, **{"inference-header-content-length": str(len(header))}),
        )
    )
    add(
        Case(
            "v2-binary-ids-out-of-range",
            V2_INFER,
            400,
            "bad_request",
            raw(
                header + np.array([2, 10**9], "<i8").tobytes(),
                **{"inference-header-content-length": str(len(header))},
            ),
        )
    )

    # -- paths: traversal and strangers -------------------------------------------------------
    for i, target in enumerate(
        (
            b"/v2/models/../../../../etc/passwd",
            b"/v2/models/..%2f..%2f..%2fetc%2fpasswd",
            b"/v2/models/%2e%2e/%2e%2e/etc/passwd/infer",
            b"/v2/models/%2Fetc%2Fpasswd",
            b"/v2/models//etc/passwd/ready",
            b"/demo/static/..%2f..%2fapp.py",
            b"/demo/static/%2e%2e%2fsettings.py",
            b"/demo/static/../../service/app.py",
            b"/../../../etc/passwd",
        )
    ):
        add(
            Case(
                f"path-traversal-{i}",
                "/",
                404,
                "not_found",
                {"extensions": {"target": target}},
                "GET",
            )
        )
    add(Case("unknown-path", "/admin", 404, "not_found", {}, "GET"))
    add(Case("wrong-method", "/classify", 405, "method_not_allowed", {}, "GET"))
    add(Case("wrong-method-delete", "/v1/models", 405, "method_not_allowed", {}, "DELETE"))
    return [
        replace(case, says=case.says or _says(case.id)) if case.status >= 400 else case
        for case in cases
    ]


# What the error message must say, by case id, by the id's name before its path, or by a name
# prefix ending in ``-``: the type alone lets a refusal for the wrong reason pass (a URL refused
# because fetching it failed, a limit hit by the wrong rule). Matched case-insensitively.
SAYS: dict[str, str] = {
    "empty-body": "body is empty",
    "invalid-json": "not valid JSON",
    "invalid-utf8": "not valid JSON",
    "lone-surrogate": "not valid JSON",
    "nan-literal": "not valid JSON",
    "deeply-nested": "not valid JSON",
    "wrong-content-type": "application/json",
    "xml": "application/json",
    # v2 reads any body as JSON (Triton clients send JSON and binary alike)
    f"wrong-content-type{V2_INFER}": "not valid JSON",
    f"xml{V2_INFER}": "not valid JSON",
    "top-level-": "body",
    "timeout-header-": "x-request-timeout-ms",
    "unknown-field": "colour",
    "unknown-form-field": "colour",
    "images-": "images",
    "image-": "images.0",
    "over-schema-images-json": "at most 256",
    "invalid-base64": "not valid base64",
    "url-": "not valid base64",  # never fetched
    "base64-of-text": "not a supported image",
    "data-uri-empty": "empty",
    "multipart-empty-file": "empty",
    "too-many-images-json": "at most 32 images",
    "too-many-images-multipart": "at most 32 images",
    "many-many-files-multipart": "files",
    "multipart-no-file": "'file' parts",
    "multipart-file-as-text": "must be a file upload",
    "multipart-no-boundary": "boundary",
    "multipart-garbage": "multipart",
    "model-unknown": "does not exist",
    "model-wrong-task": "serves task",
    "model-wrong-task-multipart": "serves task",
    "model-traversal-": "model",
    "model-not-string": "model",
    "render-two-images": "one image",
    "classes-unknown-label": "zebra",
    "classes-many": "classes",
    "text-": "input",
    "empty-list": "input",
    "over-schema-texts": "input",
    "text-over-limit": "the limit is 100000",
    "too-many-texts": "at most 256 texts",
    "text-100k-no-truncate": "truncate",
    "normalize-wrong-type": "normalize",
    "token-ids": "token-id arrays are not supported",
    "dimensions-zero": "dimensions",
    "dimensions-huge": "9999",
    "encoding-format": "encoding_format",
    "v2-token-id-too-big": "values must be between 0 and",
    "v2-token-id-negative": "values must be between 0 and",
    "v2-mask-negative": "non-negative",
    "v2-int-overflow": "input_ids",
    "v2-float-ids": "input_ids",
    "v2-string-data": "only numbers",
    "v2-ragged": "regularly nested",
    "v2-shape-mismatch": "shape [1, 7]",
    "v2-wrong-dtype": "FP32",
    "v2-missing-input": "missing inputs ['attention_mask']",
    "v2-unknown-input": "unknown inputs ['x']",
    "v2-zero-shape": "empty tensors",
    "v2-negative-shape": "shape",
    "v2-huge-shape": "shape",
    "v2-too-many-rows": "65 rows",
    "v2-unknown-output": "unknown output 'nope'",
    "v2-unknown-model": "'nope' does not exist",
    "v2-wrong-version": "no version 7",
    "v2-gzip-garbage": "not valid gzip",
    "v2-gzip-bomb": "decompressed body is larger",
    "v2-brotli": "'br' is not supported",
    "v2-header-length-": "Inference-Header-Content-Length",
    "v2-binary-short": "binary data ends",
    "v2-binary-ids-out-of-range": "values must be between 0 and",
    "path-traversal-": "not found",
    "unknown-path": "not found",
    "wrong-method": "method not allowed",
    "wrong-method-delete": "method not allowed",
}


def _says(case_id: str) -> str:
    stem = case_id.split("/", 1)[0] if not case_id.startswith("/") else case_id
    if case_id in SAYS:
        return SAYS[case_id]
    if stem in SAYS:
        return SAYS[stem]
    prefixes = [key for key in SAYS if key.endswith("-") and stem.startswith(key)]
    return SAYS[max(prefixes, key=len)] if prefixes else ""
