"""Safe image decoding and the resize / normalise step shared by the vision tasks.

Decoding checks the declared size against the pixel limit from the header, before any pixel data
is decoded, so a decompression bomb costs nothing. JPEGs are decoded with DCT scaling (draft mode)
straight to the smallest size that still covers the model input, which is most of the decode cost
for large photos. Coordinates always refer to the original image *after* EXIF orientation.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.TiffImagePlugin  # Image.open(formats=...) needs these two registered up front
import PIL.WebPImagePlugin  # noqa: F401
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImageError, PayloadTooLargeError
from service.model_config import ConfigError, ImagePreprocessing, ModelConfig
from service.tasks.base import Feeds, stack_feeds

# We enforce our own pixel limit before decoding; Pillow's global bomb check would only warn or
# raise at a different threshold.
Image.MAX_IMAGE_PIXELS = None
# Only the formats we document are even identified: Pillow would otherwise hand untrusted bytes
# to every plugin it has, including EPS, which runs Ghostscript when one is installed. (Phone
# cameras' MPO files open through the JPEG plugin.)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that transpose width and height
# A lone image larger than this decodes in the pool even when its model is idle: its decode would
# hold the model thread that long, and a request arriving meanwhile would wait for it
LONE_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, oriented; may be smaller than the original (draft decoding)
    orig_w: int
    orig_h: int


@dataclass(frozen=True)
class Geometry:
    """How model-input pixels map back to original-image pixels.

    ``x_orig = (x_input - pad_x) / scale_x``; likewise for y.
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int
    input_w: int
    input_h: int


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    min_size: tuple[int, int] | None = None,
    min_pixels: int | None = None,
) -> DecodedImage:
    """Decode untrusted bytes into an oriented RGB image.

    ``min_size`` (w, h) enables JPEG draft decoding: the image is decoded at the smallest DCT
    scale whose size still covers it. ``min_pixels`` does the same for a pixel count: a JPEG
    with more is decoded at the smallest DCT scale that keeps at least that many (the aspect
    ratio kept); other formats always decode whole.
    """
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = img.size
            if width <= 0 or height <= 0:
                raise InvalidImageError("the image declares a zero size")
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"the image is {width}×{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}"
                )
            orientation = int(img.getexif().get(0x0112, 1) or 1)
            swap = orientation in _SWAPS_AXES
            orig_w, orig_h = (height, width) if swap else (width, height)
            if min_size is not None and img.format == "JPEG":
                need_w, need_h = (min_size[1], min_size[0]) if swap else min_size
                img.draft("RGB", (need_w, need_h))
            elif min_pixels is not None and img.format == "JPEG" and width * height > min_pixels:
                ratio = math.sqrt(min_pixels / (width * height))
                img.draft("RGB", (math.ceil(width * ratio), math.ceil(height * ratio)))
            img.load()
            # in place: otherwise Pillow copies the whole image even when nothing turns
            ImageOps.exif_transpose(img, in_place=True)
            img = _to_rgb(img)
    except (InvalidImageError, PayloadTooLargeError):
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise InvalidImageError(
            "the data is not a supported image (JPEG, PNG, GIF, BMP, WebP, TIFF)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError):
        raise InvalidImageError(
            "the image is truncated or corrupt and could not be decoded"
        ) from None
    return DecodedImage(img, orig_w, orig_h)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit grey: Pillow's convert("L") clips instead of scaling
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # composite on black, the colour most training sets use for padding
        base = Image.new("RGB", img.size, (0, 0, 0))
        rgba = img.convert("RGBA")
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return img.convert("RGB")


def input_tensor(decoded: DecodedImage, spec: ImagePreprocessing) -> tuple[np.ndarray, Geometry]:
    """Resize and normalise to ``float32[3,H,W]`` as the model config says."""
    img = decoded.image
    w, h = img.size
    # draft decoding may have shrunk the image: fold that ratio into the geometry
    rx, ry = w / decoded.orig_w, h / decoded.orig_h
    target_w, target_h = spec.width, spec.height
    if spec.resize == "stretch":
        resized = img.resize((target_w, target_h), Image.Resampling.BILINEAR)
        geo = Geometry(
            target_w / decoded.orig_w,
            target_h / decoded.orig_h,
            0,
            0,
            decoded.orig_w,
            decoded.orig_h,
            target_w,
            target_h,
        )
        arr = np.asarray(resized)
    elif spec.resize == "fit":
        r = min(target_w / w, target_h / h, 1.0 / max(rx, ry) if max(rx, ry) > 0 else 1.0)
        new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
        resized = (
            img
            if (new_w, new_h) == (w, h)
            else img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        )
        geo = Geometry(
            new_w / decoded.orig_w,
            new_h / decoded.orig_h,
            0,
            0,
            decoded.orig_w,
            decoded.orig_h,
            new_w,
            new_h,
        )
        arr = np.asarray(resized)
    elif spec.resize == "letterbox":
        r = min(target_w / w, target_h / h)
        new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
        dw, dh = (target_w - new_w) / 2, (target_h - new_h) / 2
        # Ultralytics' split of the padding between the two sides
        left, top = round(dw - 0.1), round(dh - 0.1)
        resized = (
            img
            if (new_w, new_h) == (w, h)
            else img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        )
        arr = np.full((target_h, target_w, 3), spec.pad_value, dtype=np.uint8)
        arr[top : top + new_h, left : left + new_w] = np.asarray(resized)
        geo = Geometry(
            r * rx, r * ry, left, top, decoded.orig_w, decoded.orig_h, target_w, target_h
        )
    else:  # center_crop: one resize of just the cropped region (PIL's box argument)
        assert spec.resize_shorter is not None
        r = max(spec.resize_shorter / min(w, h), target_w / w, target_h / h)
        crop_w, crop_h = target_w / r, target_h / r
        crop_x, crop_y = (w - crop_w) / 2, (h - crop_h) / 2
        box = (crop_x, crop_y, crop_x + crop_w, crop_y + crop_h)
        arr = np.asarray(img.resize((target_w, target_h), Image.Resampling.BILINEAR, box=box))
        geo = Geometry(
            r * rx,
            r * ry,
            -crop_x * r,
            -crop_y * r,
            decoded.orig_w,
            decoded.orig_h,
            target_w,
            target_h,
        )
    return normalise(arr, spec), geo


def crop_image(decoded: DecodedImage, box: tuple[int, int, int, int]) -> DecodedImage:
    """The region ``box`` (x1, y1, x2, y2 in pixels of the original image, inside it) as an
    image of its own: a copy of those pixels, never re-encoded. Its "original" size is the box's,
    so geometry computed on the crop maps back to original-image pixels of the box."""
    x1, y1, x2, y2 = box
    img = decoded.image
    # draft decoding may have shrunk the picture: the box in its pixels
    rx, ry = img.width / decoded.orig_w, img.height / decoded.orig_h
    region = (
        max(0, min(img.width - 1, int(x1 * rx))),
        max(0, min(img.height - 1, int(y1 * ry))),
        max(1, min(img.width, round(x2 * rx))),
        max(1, min(img.height, round(y2 * ry))),
    )
    region = (region[0], region[1], max(region[2], region[0] + 1), max(region[3], region[1] + 1))
    return DecodedImage(img.crop(region), max(1, x2 - x1), max(1, y2 - y1))


def reduced(decoded: DecodedImage, max_pixels: int) -> DecodedImage:
    """``decoded`` at no more than ``max_pixels`` pixels (the aspect ratio kept, antialiased);
    unchanged when it already fits. Its original size stays, so boxes in original-image pixels
    still address it (``crop_image`` and ``input_tensor`` scale them)."""
    img = decoded.image
    if img.width * img.height <= max_pixels:
        return decoded
    ratio = math.sqrt(max_pixels / (img.width * img.height))
    # rounded down, and each side held to what the other leaves (a 1-pixel side cannot shrink)
    width = max(1, math.floor(img.width * ratio))
    height = max(1, min(math.floor(img.height * ratio), max_pixels // width))
    size = (max(1, min(width, max_pixels // height)), height)
    # reducing_gap: an integer box reduction by the whole factor first (a third of the time of
    # one bilinear pass over the full image), then the bilinear filter for what is left
    small = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)
    return DecodedImage(small, decoded.orig_w, decoded.orig_h)


def normalise(arr: np.ndarray, spec: ImagePreprocessing) -> np.ndarray:
    """uint8[H,W,3] RGB → float32[3,H,W]: ``(x * scale - mean) / std`` in the model's colour order."""
    mul = np.asarray([spec.scale / s for s in spec.std], dtype=np.float32)
    add = np.asarray([-m / s for m, s in zip(spec.mean, spec.std, strict=True)], dtype=np.float32)
    if spec.color_order == "BGR":
        arr, mul, add = arr[..., ::-1], mul[::-1], add[::-1]
    chw = np.empty((3, arr.shape[0], arr.shape[1]), dtype=np.float32)
    for c in range(3):
        np.multiply(arr[..., c], mul[c], out=chw[c], casting="unsafe")
        chw[c] += add[c]
    return chw


class ImageProcessor:
    """preprocess: image bytes → (``{input: float32[3,H,W]}``, Geometry)."""

    def __init__(self, spec: ImagePreprocessing, input_name: str, *, max_pixels: int) -> None:
        self.spec = spec
        self.input_name = input_name
        self.max_pixels = max_pixels
        # JPEGs decode at the smallest DCT scale that still covers the model input: never below
        # the input resolution, often 2-8× fewer pixels to decode and resize
        self._draft: tuple[int, int] = (spec.width, spec.height)

    def preprocess(self, data: bytes) -> tuple[dict[str, np.ndarray], Geometry]:
        decoded = decode_image(data, max_pixels=self.max_pixels, min_size=self._draft)
        return self.from_decoded(decoded)

    def from_decoded(self, decoded: DecodedImage) -> tuple[dict[str, np.ndarray], Geometry]:
        """An image already decoded (a pipeline's picture, or a crop of it)."""
        tensor, geo = input_tensor(decoded, self.spec)
        return {self.input_name: tensor}, geo


def image_processor(config: ModelConfig, *, max_pixels: int) -> ImageProcessor:
    """The image side of a vision model's processor, from its config (the task builders')."""
    if config.image is None:  # ModelConfig's own validator makes this unreachable
        raise ConfigError(f"model {config.name!r}: task {config.task} needs an image section")
    return ImageProcessor(config.image, config.inputs[0].name, max_pixels=max_pixels)


class ImageTask:
    """The input side every vision processor shares: image bytes → ``{input: float32[3,H,W]}``
    with its ``Geometry`` as meta, stacked into ``float32[B,3,H,W]`` batches."""

    bucket_by: str | None = None
    finish_inline = False

    def __init__(self, image: ImageProcessor) -> None:
        self.image = image

    def prepare(self, raw: bytes) -> tuple[Feeds, Geometry]:
        return self.image.preprocess(raw)

    def prepare_inline(self, raws: Sequence[bytes]) -> bool:
        return False  # decoding takes milliseconds: always in the pool

    def runs_alone(self, raw: bytes) -> bool:
        return len(raw) <= LONE_MAX_BYTES

    def collate(self, items: Sequence[Feeds]) -> Feeds:
        return stack_feeds(items)
