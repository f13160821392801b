"""Seeded mutants of valid images, and malformed multipart bodies, for the input fuzzer
(``tests/fuzz/test_mutated_inputs.py``; ``scripts/make_hostile_corpus.py --mutants`` writes the
images to a folder).

Everything is generated from a seed, so a failing mutant is reproduced by its name alone:
``<kind>-<format>-<n>`` with the same seed gives the same bytes.

Image mutation kinds, each applied to a valid JPEG, PNG, WebP, TIFF, GIF and BMP:
- ``truncated``: the file cut at a random length (sometimes inside the header).
- ``bitflip``: 1 to 64 random bits flipped, half of the mutants in the first 64 bytes (the
  header, where the parsers decide sizes and offsets).
- ``magic``: the first bytes replaced by another format's signature, or zeroed.
- ``huge``: headers declaring sizes no server should allocate (a PNG IHDR of 100000×100000, a
  JPEG SOF of 65535×65535, BMP, GIF screen and frame, TIFF strip and WebP canvas dimensions),
  plus zero and negative sizes; some with the rest of the file intact, some with checksums fixed.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tests.hostile.corpus import bomb_bmp, bomb_gif, bomb_png, bomb_tiff

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP")
KINDS = ("truncated", "bitflip", "magic", "huge")
MAGIC = {
    "JPEG": b"\xff\xd8\xff",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "WEBP": b"RIFF\x00\x00\x00\x00WEBP",
    "TIFF": b"II*\x00",
    "GIF": b"GIF89a",
    "BMP": b"BM",
}


def base_picture() -> Image.Image:
    """48×40, mostly red (the tiny classifier's answer is clear) with a green and a blue block,
    so a mutant that still decodes has a predictable answer unless its pixels were hit."""
    arr = np.zeros((40, 48, 3), np.uint8)
    arr[:, :, 0] = 230
    arr[4:14, 4:16] = (0, 200, 0)
    arr[24:36, 30:44] = (0, 0, 200)
    return Image.fromarray(arr)


def encode(picture: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format=fmt, **options)
    return buf.getvalue()


def valid_image(fmt: str) -> bytes:
    picture = base_picture()
    if fmt == "GIF":
        return encode(picture.convert("P"), fmt)
    if fmt == "WEBP":
        return encode(picture, fmt, lossless=True)
    return encode(picture, fmt)


@dataclass(frozen=True)
class Mutant:
    name: str  # <kind>-<format>-<n>
    kind: str
    fmt: str
    data: bytes


# -- the kinds -------------------------------------------------------------------------------
def truncated(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.3:  # inside the header
        return data[: rng.randrange(1, min(64, len(data)))]
    return data[: rng.randrange(1, len(data))]


def bitflip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    span = min(64, len(out)) if rng.random() < 0.5 else len(out)
    for _ in range(rng.choice([1, 1, 2, 4, 8, 64])):
        bit = rng.randrange(span * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def wrong_magic(fmt: str, data: bytes) -> list[tuple[str, bytes]]:
    """The signature replaced by each other format's, and zeroed."""
    own = MAGIC[fmt]
    out = []
    for other, magic in MAGIC.items():
        if other != fmt:
            out.append((f"as-{other.lower()}", magic + data[len(magic) :]))
    out.append(("zeroed", b"\x00" * len(own) + data[len(own) :]))
    return out


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_ihdr(data: bytes, width: int, height: int, *, fix_crc: bool) -> bytes:
    out = bytearray(data)
    struct.pack_into(">II", out, 16, width, height)  # signature 8, length 4, "IHDR" 4
    if fix_crc:
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    return bytes(out)


def _jpeg_sof(data: bytes, height: int, width: int) -> bytes:
    out = bytearray(data)
    sof = out.find(b"\xff\xc0")
    struct.pack_into(">HH", out, sof + 5, height, width)
    return bytes(out)


def _bmp_dims(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<ii", out, 18, width, height)
    return bytes(out)


def _gif_frame(data: bytes, side: int) -> bytes:
    """The first image descriptor (0x2C) declares side × side at the frame level."""
    out = bytearray(data)
    at = 13 + (3 << ((out[10] & 7) + 1) if out[10] & 0x80 else 0)  # past the colour table
    while out[at] == 0x21:  # extension blocks: introducer, label, sub-blocks up to a 0 length
        at += 2
        while out[at]:
            at += out[at] + 1
        at += 1
    assert out[at] == 0x2C, out[at]
    struct.pack_into("<HH", out, at + 5, side, side)  # after the frame's left and top
    return bytes(out)


def _tiff_tags(data: bytes, values: dict[int, int]) -> bytes:
    """A little-endian TIFF's first IFD with these tags' (LONG or SHORT) values replaced."""
    out = bytearray(data)
    (ifd,) = struct.unpack_from("<I", out, 4)
    (count,) = struct.unpack_from("<H", out, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind, _ = struct.unpack_from("<HHI", out, entry)
        if tag in values:
            if kind == 3:
                struct.pack_into("<H", out, entry + 8, min(values[tag], 0xFFFF))
            else:
                struct.pack_into("<I", out, entry + 8, values[tag])
    return bytes(out)


def _webp_canvas(side_minus_one: int) -> bytes:
    """A lossless WebP with EXIF (so Pillow writes the extended VP8X header) whose VP8X canvas
    is patched to (side_minus_one + 1)² (24 bits each)."""
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: normal
    out = bytearray(encode(base_picture(), "WEBP", lossless=True, exif=exif.tobytes()))
    assert out[12:16] == b"VP8X", bytes(out[12:16])
    out[24:27] = side_minus_one.to_bytes(3, "little")
    out[27:30] = side_minus_one.to_bytes(3, "little")
    return bytes(out)


def _webp_vp8l(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L bitstream header says width × height (14 bits each)."""
    out = bytearray(valid_image("WEBP"))
    assert out[12:16] == b"VP8L" and out[20] == 0x2F, bytes(out[12:21])
    (bits,) = struct.unpack_from("<I", out, 21)
    bits = (bits & ~0xFFFFFFF) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    struct.pack_into("<I", out, 21, bits)
    return bytes(out)


def _webp_vp8(side: int) -> bytes:
    """A lossy WebP whose VP8 key frame says side × side."""
    out = bytearray(encode(base_picture(), "WEBP", quality=80))
    start = out.find(b"\x9d\x01\x2a")
    struct.pack_into("<HH", out, start + 3, side & 0x3FFF, side & 0x3FFF)
    return bytes(out)


def huge(fmt: str, data: bytes) -> list[tuple[str, bytes]]:
    """Declared sizes no decoder should trust."""
    if fmt == "PNG":
        return [
            ("ihdr-100000x100000-bare", bomb_png(100_000, 100_000)),
            ("ihdr-100000x100000", _png_ihdr(data, 100_000, 100_000, fix_crc=True)),
            ("ihdr-100000x100000-bad-crc", _png_ihdr(data, 100_000, 100_000, fix_crc=False)),
            ("ihdr-2147483647x1", _png_ihdr(data, 2**31 - 1, 1, fix_crc=True)),
            ("ihdr-zero", _png_ihdr(data, 0, 40, fix_crc=True)),
            ("ihdr-4294967295", _png_ihdr(data, 2**32 - 1, 2**32 - 1, fix_crc=True)),
        ]
    if fmt == "JPEG":
        return [
            ("sof-65535x65535", _jpeg_sof(data, 65_535, 65_535)),
            ("sof-1x65535", _jpeg_sof(data, 1, 65_535)),
            ("sof-zero-height", _jpeg_sof(data, 0, 48)),
            ("sof-zero", _jpeg_sof(data, 0, 0)),
        ]
    if fmt == "BMP":
        return [
            ("dims-50000x50000", bomb_bmp(50_000)),
            ("dims-huge-top-down", _bmp_dims(data, 50_000, -50_000)),
            ("dims-int-max", _bmp_dims(data, 2**31 - 1, 2**31 - 1)),
            ("dims-int-min", _bmp_dims(data, 48, -(2**31))),
            ("dims-negative-width", _bmp_dims(data, -48, 40)),
            ("dims-zero", _bmp_dims(data, 0, 0)),
        ]
    if fmt == "GIF":
        return [
            ("screen-65535x65535", bomb_gif(65_535)),
            ("frame-65535x65535", _gif_frame(data, 65_535)),
        ]
    if fmt == "TIFF":
        return [
            ("strip-50000x50000", bomb_tiff(50_000)),
            ("dims-100000x100000", _tiff_tags(data, {256: 100_000, 257: 100_000})),
            ("rows-per-strip-huge", _tiff_tags(data, {278: 2**32 - 1})),
            ("strip-bytes-4gb", _tiff_tags(data, {279: 2**32 - 1})),
            ("strip-offset-past-end", _tiff_tags(data, {273: 2**31})),
            ("dims-zero", _tiff_tags(data, {256: 0})),
        ]
    return [  # WEBP
        ("vp8x-canvas-16777216", _webp_canvas(2**24 - 1)),
        ("vp8l-16384x16384", _webp_vp8l(16_384, 16_384)),
        ("vp8-16383x16383", _webp_vp8(16_383)),
        ("vp8l-1x16384", _webp_vp8l(1, 16_384)),
    ]


def image_mutants(kind: str, seed: int, per_format: int) -> list[Mutant]:
    """The mutants of one kind for every format: ``per_format`` random ones each for
    ``truncated`` and ``bitflip``; every fixed variant for ``magic`` and ``huge``."""
    out: list[Mutant] = []
    for fmt in FORMATS:
        data = valid_image(fmt)
        if kind in ("truncated", "bitflip"):
            mutate: Callable[[bytes, random.Random], bytes] = (
                truncated if kind == "truncated" else bitflip
            )
            rng = random.Random(f"{seed}-{kind}-{fmt}")
            for n in range(per_format):
                out.append(Mutant(f"{kind}-{fmt.lower()}-{n}", kind, fmt, mutate(data, rng)))
            continue
        variants = wrong_magic(fmt, data) if kind == "magic" else huge(fmt, data)
        for label, mutated in variants:
            out.append(Mutant(f"{kind}-{fmt.lower()}-{label}", kind, fmt, mutated))
    return out


# -- multipart -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawBody:
    name: str
    content_type: str
    body: bytes


BOUNDARY = "ortserve-fuzz-boundary"


def part(headers: list[str], payload: bytes, boundary: str = BOUNDARY) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers).encode("latin-1")
    return f"--{boundary}\r\n".encode() + head + b"\r\n" + payload + b"\r\n"


def file_part(payload: bytes, name: str = "file", filename: str = "red.png") -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'
    return part([disposition, "Content-Type: image/png"], payload)


def field_part(name: str, value: bytes, extra: list[str] | None = None) -> bytes:
    return part([f'Content-Disposition: form-data; name="{name}"', *(extra or [])], value)


def closing(boundary: str = BOUNDARY) -> bytes:
    return f"--{boundary}--\r\n".encode()


def red_png() -> bytes:
    return encode(Image.new("RGB", (24, 20), (230, 10, 10)), "PNG")


def malformed_multipart() -> list[RawBody]:
    """Hand-made framing faults: each must be a 4xx or, where the framing still carries a
    valid image, a 200 whose every prediction is the picture's colour."""
    ok_type = f"multipart/form-data; boundary={BOUNDARY}"
    image = red_png()
    valid = file_part(image) + closing()
    inner = "ortserve-inner"
    nested_body = (
        f"--{inner}\r\n".encode()
        + b'Content-Disposition: file; filename="red.png"\r\nContent-Type: image/png\r\n\r\n'
        + image
        + f"\r\n--{inner}--\r\n".encode()
    )
    return [
        RawBody("control-valid", ok_type, valid),
        RawBody("no-boundary", "multipart/form-data", valid),
        RawBody("empty-boundary", "multipart/form-data; boundary=", valid),
        RawBody("wrong-boundary", "multipart/form-data; boundary=something-else", valid),
        RawBody("quoted-boundary", f'multipart/form-data; boundary="{BOUNDARY}"', valid),
        RawBody("boundary-200-chars", "multipart/form-data; boundary=" + "b" * 200, valid),
        RawBody("unterminated", ok_type, file_part(image)),
        RawBody("unterminated-mid-part", ok_type, file_part(image)[: len(image) // 2]),
        RawBody("unterminated-mid-headers", ok_type, f"--{BOUNDARY}\r\nContent-Disp".encode()),
        RawBody("no-crlf-after-headers", ok_type, f"--{BOUNDARY}\r\n".encode() + image),
        RawBody("empty-body", ok_type, b""),
        RawBody("closing-only", ok_type, closing()),
        RawBody(
            "part-header-2mib",
            ok_type,
            part(
                [
                    'Content-Disposition: form-data; name="file"; filename="red.png"',
                    "X-Padding: " + "a" * (2 * 1024 * 1024),
                ],
                image,
            )
            + closing(),
        ),
        RawBody(
            "part-header-name-1mib",
            ok_type,
            part(
                [
                    'Content-Disposition: form-data; name="file"; filename="r.png"',
                    "X" * 2**20 + ": 1",
                ],
                image,
            )
            + closing(),
        ),
        RawBody(
            "10000-headers-in-a-part",
            ok_type,
            part(
                ['Content-Disposition: form-data; name="file"; filename="red.png"']
                + [f"X-H{i}: {i}" for i in range(10_000)],
                image,
            )
            + closing(),
        ),
        RawBody(
            "5000-fields",
            ok_type,
            file_part(image) + b"".join(field_part(f"f{i}", b"x") for i in range(5000)) + closing(),
        ),
        RawBody(
            "5000-file-parts",
            ok_type,
            b"".join(file_part(b"x", filename=f"{i}.png") for i in range(5000)) + closing(),
        ),
        RawBody(
            "part-without-a-name",
            ok_type,
            part(['Content-Disposition: form-data; filename="red.png"'], image) + closing(),
        ),
        RawBody(
            "part-without-disposition",
            ok_type,
            part(["Content-Type: image/png"], image) + closing(),
        ),
        RawBody(
            "nested-multipart",
            ok_type,
            part(
                [
                    'Content-Disposition: form-data; name="file"; filename="nested"',
                    f"Content-Type: multipart/mixed; boundary={inner}",
                ],
                nested_body,
            )
            + closing(),
        ),
        RawBody(
            "nested-multipart-field",
            ok_type,
            file_part(image)
            + field_part("model", nested_body, [f"Content-Type: multipart/mixed; boundary={inner}"])
            + closing(),
        ),
        RawBody("bad-charset", f"{ok_type}; charset=utf-999", valid),
        RawBody(
            "bad-charset-latin1-field",
            f"{ok_type}; charset=no-such-charset",
            file_part(image) + field_part("model", "tïny-clässifier".encode("latin-1")) + closing(),
        ),
        RawBody(
            "part-charset-utf16",
            ok_type,
            file_part(image)
            + field_part(
                "model",
                "tiny-classifier".encode("utf-16"),
                ["Content-Type: text/plain; charset=utf-16"],
            )
            + closing(),
        ),
        RawBody(
            "invalid-utf8-field-name",
            ok_type,
            file_part(image)
            + part(['Content-Disposition: form-data; name="\xff\xfe"'], b"1")
            + closing(),
        ),
        RawBody(
            "filename-with-path-and-nul",
            ok_type,
            file_part(image, filename="../../etc/passwd\x00.png") + closing(),
        ),
        RawBody("lf-only-line-endings", ok_type, valid.replace(b"\r\n", b"\n")),
        RawBody(
            "field-over-1mib",
            ok_type,
            file_part(image) + field_part("model", b"m" * (2**20 + 10)) + closing(),
        ),
    ]


def framing_mutants(seed: int, count: int) -> list[RawBody]:
    """A valid two-image body with its framing (boundary lines and part headers, never the
    image bytes) mutated at random: bytes flipped, dropped or duplicated, or the body cut."""
    image = red_png()
    pieces = [
        file_part(image, filename="a.png"),
        field_part("top_k", b"2"),
        file_part(image, filename="b.png"),
        closing(),
    ]
    body = b"".join(pieces)
    framing: list[int] = []  # offsets outside the image payloads
    at = 0
    for piece in pieces:
        start = piece.find(image) if image in piece else len(piece)
        framing += range(at, at + start)
        if image in piece:
            framing += range(at + start + len(image), at + len(piece))
        at += len(piece)
    rng = random.Random(f"{seed}-framing")
    out = []
    for n in range(count):
        mutated = bytearray(body)
        how = rng.choice(["flip", "drop", "duplicate", "cut"])
        if how == "cut":
            mutated = mutated[: rng.randrange(1, len(mutated))]
        else:
            for offset in sorted(rng.sample(framing, rng.choice([1, 2, 5])), reverse=True):
                if how == "flip":
                    mutated[offset] ^= 1 << rng.randrange(8)
                elif how == "drop":
                    del mutated[offset]
                else:
                    mutated.insert(offset, mutated[offset])
        out.append(
            RawBody(
                f"framing-{how}-{n}",
                f"multipart/form-data; boundary={BOUNDARY}",
                bytes(mutated),
            )
        )
    return out
