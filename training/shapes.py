"""Deterministic synthetic "shapes" images with exact ground truth (numpy + Pillow only).

Each image (320–640 px a side, not necessarily square) holds 1–8 filled circles, squares
(axis-aligned or rotated) and triangles, 20–160 px, in random colours, on a background of one of
the ``backgrounds`` kinds: by default ``BASIC_BACKGROUNDS`` (plain, gradient, Gaussian noise);
``VARIED_BACKGROUNDS`` adds uniform RGB noise, smooth colour fields (also under noise), blurred
noise, posterised blurred noise and stripes. A detector trained on the basic kinds alone took uniform RGB noise for
triangles (precision 0.46 on an independent generator of this task), so shapes-yolo trains on
the varied kinds; ``training.heldout`` checks that on backgrounds none of these kinds draws. Shapes may overlap partially: a new shape is rejected when it would hide more
than 30 % of an earlier one or be hidden by more than 30 %, so every ground-truth object stays
clearly visible. Ground truth is computed from the rendered label map: boxes of the visible
pixels (x1, y1, x2, y2, exclusive right/bottom), semantic masks and instance masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "square", "triangle"]  # class ids 0..2; semantic ids are these + 1
SEMANTIC_LABELS = ["background", *CLASSES]
MAX_HIDDEN = 0.3
BASIC_BACKGROUNDS = ("flat", "gradient", "noise")
VARIED_BACKGROUNDS = (
    *BASIC_BACKGROUNDS,
    "uniform-noise",
    "smooth-field",
    "noisy-field",
    "blurred-noise",
    "posterised-noise",
    "stripes",
)


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8[H,W,3]
    boxes: np.ndarray  # float32[N,4] x1,y1,x2,y2 of visible pixels
    classes: np.ndarray  # int64[N], 0=circle 1=square 2=triangle
    instance_map: np.ndarray  # int32[H,W], 0 background, i+1 = instance i
    semantic: np.ndarray  # uint8[H,W], 0 background, class+1

    def instance_masks(self) -> np.ndarray:
        """bool[N,H,W]"""
        ids = np.arange(1, len(self.classes) + 1)[:, None, None]
        return np.asarray(self.instance_map[None] == ids)


def _smooth_field(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A few random colours on a coarse grid, bicubically interpolated over the image."""
    cells = rng.integers(2, 7, 2)
    coarse = rng.integers(0, 256, (int(cells[1]), int(cells[0]), 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(field, np.float32)


def _blurred_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Uniform RGB noise at 1/1 to 1/10 of the resolution, smoothly upsampled and blurred: grain
    from single pixels up to blobs smaller than the smallest shapes, in a random value range."""
    factor = float(rng.uniform(1, 10))
    small = (max(2, round(w / factor)), max(2, round(h / factor)))
    noise = Image.fromarray(rng.integers(0, 256, (small[1], small[0], 3), dtype=np.uint8))
    noise = noise.resize((w, h), Image.Resampling.BILINEAR)
    noise = noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2.5))))
    img = np.asarray(noise, np.float32)
    low, high = img.min(), max(float(img.max()), float(img.min()) + 1)
    lo = rng.uniform(0, 195)
    hi = rng.uniform(lo + 60, 255)  # at least 60 levels: texture, not a flat colour
    out: np.ndarray = lo + (img - low) / (high - low) * (hi - lo)
    return out


def _stripes(rng: np.random.Generator, w: int, h: int, base: np.ndarray) -> np.ndarray:
    """Straight stripes between two colours, sinusoidal or hard-edged, 4–64 px a period."""
    other = rng.integers(0, 256, 3).astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(4, 64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    if rng.random() < 0.5:
        t = (t > 0.5).astype(np.float32)
    out: np.ndarray = base * (1 - t[..., None]) + other * t[..., None]
    return out


def _background(
    rng: np.random.Generator, w: int, h: int, kinds: Sequence[str] = BASIC_BACKGROUNDS
) -> np.ndarray:
    kind = kinds[int(rng.integers(0, len(kinds)))]
    base = rng.integers(0, 256, 3).astype(np.float32)
    if kind == "flat":
        img: np.ndarray = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    elif kind == "gradient":
        other = rng.integers(0, 256, 3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == "noise":  # Gaussian around one colour
        img = base + rng.normal(0, rng.uniform(10, 35), (h, w, 3))
    elif kind == "uniform-noise":  # every pixel any colour, or tinted: each channel in a range
        low = 0 if rng.random() < 0.5 else rng.integers(0, 128, 3)
        high = 256 if rng.random() < 0.5 else rng.integers(160, 257, 3)
        img = rng.integers(low, high, (h, w, 3)).astype(np.float32)
    elif kind == "smooth-field":
        img = _smooth_field(rng, w, h)
    elif kind == "noisy-field":
        img = _smooth_field(rng, w, h) + rng.normal(0, rng.uniform(10, 60), (h, w, 3))
    elif kind == "blurred-noise":
        img = _blurred_noise(rng, w, h)
    elif kind == "posterised-noise":  # blurred noise in 2-4 levels a channel: sharp-edged blobs
        levels = int(rng.integers(2, 5))
        noise = _blurred_noise(rng, w, h)
        noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1.0)  # full range, then levels
        img = np.minimum(np.floor(noise * levels), levels - 1) * (255 / (levels - 1))
    elif kind == "stripes":
        img = _stripes(rng, w, h, base)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _polygon(
    kind: int, cx: float, cy: float, size: float, angle: float
) -> list[tuple[float, float]]:
    if kind == 1:  # square
        r = size / math.sqrt(2)
        offsets = [math.pi / 4 + k * math.pi / 2 for k in range(4)]
    else:  # equilateral-ish triangle inscribed in the size×size box
        r = size / math.sqrt(3)
        offsets = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
    return [(cx + r * math.cos(o + angle), cy + r * math.sin(o + angle)) for o in offsets]


def _shape_mask(
    kind: int, w: int, h: int, cx: float, cy: float, size: float, angle: float
) -> np.ndarray:
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == 0:
        half = size / 2
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=1)
    else:
        draw.polygon(_polygon(kind, cx, cy, size, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _colour_far_from(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """A random colour that differs clearly from the mean of the pixels it will cover."""
    reference = pixels.reshape(-1, 3).mean(axis=0) if pixels.size else np.zeros(3)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - reference).sum() > 120:
            return colour.astype(np.uint8)
    return (255 - reference).astype(np.uint8)


def generate(
    seed: int,
    *,
    min_size: int = 320,
    max_size: int = 640,
    backgrounds: Sequence[str] = BASIC_BACKGROUNDS,
    max_fill: float = 0.6,
) -> Sample:
    """One image ``min_size``–``max_size`` px a side on a background drawn from the
    ``backgrounds`` kinds, its shapes up to ``max_fill`` of its shorter side (and 160 px); with
    the defaults, each seed gives the same image as it always has."""
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    image = _background(rng, w, h, backgrounds)
    instance_map = np.zeros((h, w), np.int32)
    own_area: list[int] = []
    classes: list[int] = []
    wanted = int(rng.integers(1, 9))
    for _ in range(wanted * 10):
        if len(classes) == wanted:
            break
        kind = int(rng.integers(0, 3))
        size = float(rng.uniform(20, min(160, max_fill * min(w, h))))
        cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
        rotated = kind == 2 or rng.random() < 0.5
        angle = float(rng.uniform(0, 2 * math.pi)) if rotated else 0.0
        mask = _shape_mask(kind, w, h, cx, cy, size, angle)
        area = int(mask.sum())
        if area < 150:
            continue
        covered = instance_map[mask]
        if (covered > 0).mean() > MAX_HIDDEN:  # later shapes will not cover it much either
            continue
        hidden = np.bincount(covered, minlength=len(classes) + 1)[1:]
        visible = np.bincount(instance_map.ravel(), minlength=len(classes) + 1)[1:]
        if any(
            visible[i] - hidden[i] < (1 - MAX_HIDDEN) * own_area[i] for i in range(len(classes))
        ):
            continue
        image[mask] = _colour_far_from(rng, image[mask])
        instance_map[mask] = len(classes) + 1
        own_area.append(area)
        classes.append(kind)
    boxes = []
    for i in range(len(classes)):
        ys, xs = np.nonzero(instance_map == i + 1)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    cls = np.asarray(classes, dtype=np.int64)
    semantic = np.zeros((h, w), np.uint8)
    for i, c in enumerate(classes):
        semantic[instance_map == i + 1] = c + 1
    return Sample(image, np.asarray(boxes, np.float32).reshape(-1, 4), cls, instance_map, semantic)
