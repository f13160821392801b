"""Draw results on the input image (Pillow only): boxes with labels and scores, a translucent
semantic-mask overlay with a legend, outlined instance masks. Encoded as PNG or JPEG.

Pure functions of arrays and a PIL image, called from the worker pool (never the event loop).
Line widths and font sizes scale with the image, so small and large images both stay legible.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from service.tasks.detection import Detections
from service.tasks.imaging import decode_image
from service.tasks.pipeline import PipelineImage
from service.tasks.segmentation import Instance, InstanceResult, SemanticResult, rle_decode

RenderFormat = Literal["png", "jpeg"]
Colour = tuple[int, int, int]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg"}
BACKGROUND_LABELS = frozenset({"background", "__background__", "bg", "_background_"})

# distinct, colour-blind-friendlier first picks (Okabe-Ito, then Tableau); more classes get
# golden-ratio hues, so any class id has a stable colour
_PALETTE: tuple[Colour, ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def colour(class_id: int) -> Colour:
    """A stable colour per class id; neighbouring ids get clearly different colours."""
    if 0 <= class_id < len(_PALETTE):
        return _PALETTE[class_id]
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def _text_colour(fill: Colour) -> Colour:
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


@lru_cache(maxsize=16)
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _scale(image: Image.Image) -> tuple[int, int]:
    """(line width, font size) for this image."""
    side = min(image.size)
    return max(2, round(side / 250)), max(11, min(48, round(side / 32)))


def _label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    fill: Colour,
    font: Font,
    bounds: tuple[int, int],
) -> None:
    """A filled tag with ``text``, its bottom-left at ``xy`` (moved inside the image)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 5)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, xy[0]), max(0.0, bounds[0] - w))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    y = min(y, max(0.0, bounds[1] - h))
    draw.rectangle((x, y, x + w, y + h), fill=fill)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_colour(fill), font=font)


@dataclass(frozen=True)
class Box:
    """Pixels of the image drawn on: x1, y1, x2, y2."""

    x1: float
    y1: float
    x2: float
    y2: float


def draw_detections(
    image: Image.Image,
    boxes: Sequence[Box],
    class_ids: Sequence[int],
    scores: Sequence[float],
    labels: Sequence[str],
    texts: Sequence[str] | None = None,
) -> Image.Image:
    """Boxes in a colour per class, tagged ``label score`` (or ``texts``, one per box); highest
    scores drawn last (on top)."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width, font_size = _scale(out)
    font = _font(font_size)
    order = sorted(range(len(boxes)), key=lambda i: scores[i])
    for i in order:
        b, fill = boxes[i], colour(class_ids[i])
        draw.rectangle((b.x1, b.y1, b.x2, b.y2), outline=fill, width=width)
        text = texts[i] if texts is not None else f"{_name(labels, class_ids[i])} {scores[i]:.2f}"
        _label(draw, (b.x1, b.y1), text, fill, font, out.size)
    return out


def _name(labels: Sequence[str], class_id: int) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def draw_semantic(
    image: Image.Image, class_map: np.ndarray, labels: Sequence[str], alpha: float = 0.5
) -> Image.Image:
    """``class_map uint8|uint16[H,W]`` (image size) → translucent colours per class + a legend.

    Classes labelled as background stay uncoloured; the legend lists every class present with
    its share of the image.
    """
    out = image.convert("RGB")
    if class_map.shape != (out.height, out.width):
        raise ValueError(f"class map {class_map.shape} does not match the image {out.size}")
    ids, counts = np.unique(class_map, return_counts=True)
    lut = np.zeros((int(ids.max()) + 1, 3), dtype=np.uint8)
    shown = np.zeros(int(ids.max()) + 1, dtype=bool)
    for k in ids.tolist():
        if _name(labels, k).lower() not in BACKGROUND_LABELS:
            lut[k], shown[k] = colour(k), True
    pixels = np.asarray(out, dtype=np.float32)
    overlay = lut[class_map].astype(np.float32)
    mix = shown[class_map][..., None] * alpha
    blended = pixels * (1.0 - mix) + overlay * mix
    out = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")
    total = float(class_map.size)
    entries = [
        (f"{_name(labels, k)} {n / total:.0%}", colour(k) if shown[k] else (0, 0, 0))
        for k, n in zip(ids.tolist(), counts.tolist(), strict=True)
    ]
    _legend(out, entries)
    return out


def _legend(image: Image.Image, entries: Sequence[tuple[str, Colour]]) -> None:
    """A white panel in the top-left corner: one swatch and text per entry."""
    if not entries:
        return
    _, font_size = _scale(image)
    font_size = max(10, round(font_size * 0.8))
    font = _font(font_size)
    draw = ImageDraw.Draw(image, "RGBA")
    line = round(font_size * 1.35)
    pad = max(3, font_size // 3)
    swatch = round(font_size * 0.9)
    text_w = max(draw.textbbox((0, 0), text, font=font)[2] for text, _ in entries)
    width = pad * 3 + swatch + text_w
    height = pad * 2 + line * len(entries)
    draw.rectangle((0, 0, width, height), fill=(255, 255, 255, 215))
    for row, (text, fill) in enumerate(entries):
        y = pad + row * line
        draw.rectangle((pad, y, pad + swatch, y + swatch), fill=(*fill, 255), outline=(0, 0, 0))
        draw.text((pad * 2 + swatch, y), text, fill=(0, 0, 0, 255), font=font)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The border pixels of a binary mask, ``width`` pixels thick (inside and out); the image
    edge counts as outside, so a mask touching it is closed there too."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    edge: np.ndarray = mask & ~inner
    if width > 1:
        size = width if width % 2 else width + 1
        grown = Image.fromarray(edge.astype(np.uint8) * 255, "L").filter(
            ImageFilter.MaxFilter(size)
        )
        edge = np.asarray(grown) > 0
    return edge


def draw_instances(
    image: Image.Image,
    boxes: Sequence[Box],
    class_ids: Sequence[int],
    scores: Sequence[float],
    masks: Sequence[np.ndarray],
    labels: Sequence[str],
    alpha: float = 0.3,
) -> Image.Image:
    """Each instance: its mask lightly filled and outlined in the class colour, tagged at its box.

    ``masks`` are ``bool[H,W]`` at the image size.
    """
    out = image.convert("RGB")
    width, font_size = _scale(out)
    pixels = np.asarray(out, dtype=np.float32).copy()
    order = sorted(range(len(boxes)), key=lambda i: scores[i])
    for i in order:
        mask = masks[i]
        if mask.shape != (out.height, out.width):
            raise ValueError(f"mask {mask.shape} does not match the image {out.size}")
        fill = np.asarray(colour(class_ids[i]), dtype=np.float32)
        pixels[mask] = pixels[mask] * (1.0 - alpha) + fill * alpha
        pixels[_outline(mask, width)] = fill
    out = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(out)
    font = _font(font_size)
    for i in order:
        b = boxes[i]
        text = f"{_name(labels, class_ids[i])} {scores[i]:.2f}"
        _label(draw, (b.x1, b.y1), text, colour(class_ids[i]), font, out.size)
    return out


def encode(image: Image.Image, fmt: RenderFormat) -> bytes:
    """PNG (lossless, fast compression) or JPEG (quality 90)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


# -- from request data to encoded pictures (what the routes call, in the worker pool) -----------
def load(data: bytes, *, max_pixels: int) -> Image.Image:
    """The request's image at full size, EXIF-oriented RGB (the space result coordinates use)."""
    return decode_image(data, max_pixels=max_pixels).image


def detections_picture(
    data: bytes, det: Detections, labels: Sequence[str], fmt: RenderFormat, *, max_pixels: int
) -> bytes:
    boxes = [Box(*b) for b in det.boxes.tolist()]
    image = draw_detections(
        load(data, max_pixels=max_pixels),
        boxes,
        det.class_ids.tolist(),
        det.scores.tolist(),
        labels,
    )
    return encode(image, fmt)


def pipeline_picture(picture: Image.Image, result: PipelineImage, fmt: RenderFormat) -> bytes:
    """A pipeline's result on its (already decoded) picture: each detection's box tagged with
    both labels, ``cat 0.58 | tabby 0.41`` (the crop's best class; just the detection when it
    was not cropped). The picture may be smaller than the original image (a pipeline keeps
    its working resolution): the boxes, in original-image pixels, are scaled onto it."""
    det = result.detections.detections
    texts = []
    for label, score, crop in zip(
        result.detections.labels, det.scores.tolist(), result.crops, strict=True
    ):
        text = f"{label} {score:.2f}"
        if crop.result is not None and crop.result.predictions:
            best = crop.result.predictions[0]
            text += f" | {best.label} {best.score:.2f}"
        texts.append(text)
    sx = picture.width / max(1, result.detections.width)
    sy = picture.height / max(1, result.detections.height)
    image = draw_detections(
        picture,
        [Box(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in det.boxes.tolist()],
        det.class_ids.tolist(),
        det.scores.tolist(),
        list(result.detections.labels),
        texts,
    )
    return encode(image, fmt)


def semantic_picture(
    data: bytes, class_map: np.ndarray, labels: Sequence[str], fmt: RenderFormat, *, max_pixels: int
) -> bytes:
    return encode(draw_semantic(load(data, max_pixels=max_pixels), class_map, labels), fmt)


def instances_picture(
    data: bytes,
    instances: Sequence[Instance],
    labels: Sequence[str],
    fmt: RenderFormat,
    *,
    max_pixels: int,
) -> bytes:
    image = draw_instances(
        load(data, max_pixels=max_pixels),
        [Box(*inst.box) for inst in instances],
        [inst.class_id for inst in instances],
        [inst.score for inst in instances],
        [rle_decode(inst.rle) for inst in instances],
        labels,
    )
    return encode(image, fmt)


def segmentation_picture(
    data: bytes,
    result: SemanticResult | InstanceResult,
    labels: Sequence[str],
    fmt: RenderFormat,
    *,
    max_pixels: int,
) -> bytes:
    """Outlined instances, or the class map (``mask_format="map"``) as an overlay."""
    if isinstance(result, InstanceResult):
        return instances_picture(data, result.instances, labels, fmt, max_pixels=max_pixels)
    if result.class_map is None:
        raise ValueError("a semantic picture needs the class map (mask_format='map')")
    return semantic_picture(data, result.class_map, labels, fmt, max_pixels=max_pixels)
