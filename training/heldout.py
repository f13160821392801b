"""A held-out generator of the shapes detection task, independent of the training one, and the
precision and recall of a shapes detector folder on it.

    python -m training.heldout --model models/shapes-yolo [--images 240] [--seed 18]

``training.shapes`` draws the training data; a model can learn that generator's quirks (its
background kinds, Pillow's aliased rasterisation, its colour rule) instead of the task, and an
evaluation on more of its images cannot tell. This module shares no code with it: the same task
(1–8 filled circles, squares axis-aligned or rotated, and rotated equilateral triangles, 20–160 px,
on 320–640 px images; a shape may hide at most 30 % of another; boxes of the visible pixels) is
drawn here with numpy — anti-aliased coverage from signed distances, alpha-blended — on
backgrounds of its own. Uniform RGB noise, where an earlier model reported many false triangles,
is half of the images; the other half are kinds the training generator never draws (concentric
rings, a plasma of crossed waves, blocky noise, speckle on a flat colour).

Detections come from the model folder through the service's own processor (``processor_for``:
decode, letterbox, decoding, NMS) and ONNX Runtime, at the API's defaults (confidence 0.25, NMS
IoU 0.45). A detection is a true positive when it has the class of a not yet matched ground-truth
object and a box IoU ≥ 0.5 with it (greedy, highest score first).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.model_config import load_model_config
from service.runtime.session import CPU, OrtSession
from service.tasks.base import split_outputs
from service.tasks.detection import DetectParams, DetectProcessor, box_iou
from service.tasks.factory import processor_for

SHAPES = ("circle", "square", "triangle")  # the task's labels (models/shapes-yolo/labels.txt)
MAX_HIDDEN = 0.3  # of a shape's own pixels, by those drawn after it
MIN_VISIBLE_PX = 150
IOU_MIN = 0.5
DEFAULT_SEED = 18


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8[H,W,3]
    boxes: np.ndarray  # float32[N,4] x1,y1,x2,y2 of the visible pixels (right/bottom exclusive)
    labels: tuple[str, ...]  # one of SHAPES per box
    background: str


# -- backgrounds (none of them is a kind training.shapes draws, except uniform noise) ------------
def _uniform_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rings(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cy, cx = rng.uniform(-0.5, 1.5) * h, rng.uniform(-0.5, 1.5) * w
    period = rng.uniform(5, 40)
    yy, xx = np.ogrid[0:h, 0:w]
    t = 0.5 + 0.5 * np.cos(2 * math.pi * np.hypot(yy - cy, xx - cx) / period)
    a, b = rng.uniform(0, 255, (2, 3))
    out: np.ndarray = a + (b - a) * t[..., None]
    return out


def _plasma(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.ogrid[0:h, 0:w]
    out = np.zeros((h, w, 3))
    for _ in range(4):
        theta, period, phase = rng.uniform(0, math.pi), rng.uniform(15, 120), rng.uniform(0, 7)
        wave = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
        out += wave[..., None] * rng.uniform(-1, 1, 3)
    span = float(np.ptp(out)) or 1.0
    low, high = sorted(rng.uniform(0, 255, 2))
    scaled: np.ndarray = low + (out - out.min()) / span * (high - low + 40)
    return scaled


def _blocks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cell = int(rng.integers(3, 9))  # well under the smallest shape, so blocks stay texture
    small = rng.integers(0, 256, (h // cell + 1, w // cell + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, cell, 0), cell, 1)[:h, :w]


def _speckle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    out = np.broadcast_to(rng.uniform(0, 255, 3), (h, w, 3)).copy()
    dots = rng.random((h, w)) < rng.uniform(0.05, 0.3)
    out[dots] = rng.uniform(0, 255, (int(dots.sum()), 3))
    return out


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "uniform-noise": _uniform_noise,
    "rings": _rings,
    "plasma": _plasma,
    "blocks": _blocks,
    "speckle": _speckle,
}


def _background_for(index: int, rng: np.random.Generator) -> str:
    if index % 2 == 0:
        return "uniform-noise"
    return str(rng.choice(list(BACKGROUNDS)[1:]))


# -- shapes: coverage in [0, 1] from the signed distance to the outline (about 1 px of blur) ------
def _vertices(label: str, cx: float, cy: float, extent: float, turn: float) -> np.ndarray:
    """Corners of a square or an equilateral triangle of side ``extent`` around ``cx, cy``,
    turned by ``turn`` radians (a square with ``turn`` 0 is axis-aligned), in the order of
    increasing angle (clockwise on screen, y pointing down)."""
    if label == "square":
        corners, radius, start = 4, extent / math.sqrt(2), math.pi / 4
    else:
        corners, radius, start = 3, extent / math.sqrt(3), 0.0
    angles = start + turn + 2 * math.pi * np.arange(corners) / corners
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _coverage(
    label: str, cx: float, cy: float, extent: float, turn: float, h: int, w: int
) -> np.ndarray:
    """float32[H,W] share of each pixel inside the shape: the signed distance from the pixel's
    centre to the outline, plus one half, clipped to [0, 1]. ``extent`` is the circle's diameter
    or the polygon's side."""
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5
    if label == "circle":
        inside = extent / 2 - np.hypot(xs - cx, ys - cy)
    else:
        pts = _vertices(label, cx, cy, extent, turn)
        inside = np.full((h, w), np.inf, np.float32)
        for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
            length = math.hypot(x1 - x0, y1 - y0)
            # distance to the edge's line, positive on the polygon's side
            inside = np.minimum(inside, ((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)) / length)
    return np.asarray(np.clip(inside + 0.5, 0.0, 1.0), np.float32)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour whose Euclidean RGB distance from the mean of the pixels it covers is ≥ 110."""
    mean = under.reshape(-1, 3).mean(axis=0)
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - mean) >= 110:
            return colour
    return np.where(mean < 128, 255.0, 0.0)


def scene(seed: int, index: int) -> Scene:
    """The ``index``-th image of the held-out set ``seed`` (a pure function of both)."""
    rng = np.random.default_rng([seed, index, 0x5EED])
    h, w = (int(v) for v in rng.integers(320, 641, 2))
    background = _background_for(index, rng)
    canvas = np.clip(np.asarray(BACKGROUNDS[background](rng, h, w), np.float32), 0, 255)
    owner = np.full((h, w), -1, np.int32)  # which shape a pixel shows (coverage ≥ 0.5)
    drawn: list[tuple[str, int]] = []  # label, own pixel count
    target = int(rng.integers(1, 9))
    attempts = 0
    while len(drawn) < target and attempts < 12 * target:
        attempts += 1
        label = SHAPES[int(rng.integers(0, 3))]
        extent = rng.uniform(20, min(160, 0.6 * min(h, w)))
        cx, cy = rng.uniform(extent / 2, w - extent / 2), rng.uniform(extent / 2, h - extent / 2)
        turn = 0.0 if label == "square" and rng.random() < 0.5 else rng.uniform(0, 2 * math.pi)
        alpha = _coverage(label, cx, cy, extent, turn, h, w)
        mine = alpha >= 0.5
        own = int(mine.sum())
        if own < MIN_VISIBLE_PX:
            continue
        under = owner[mine]
        if (under >= 0).mean() > MAX_HIDDEN:
            continue
        lost = np.bincount(under[under >= 0], minlength=len(drawn))
        left = np.bincount(owner[owner >= 0], minlength=len(drawn))
        if any(left[k] - lost[k] < (1 - MAX_HIDDEN) * drawn[k][1] for k in range(len(drawn))):
            continue
        colour = _contrasting_colour(rng, canvas[mine])
        canvas += (colour - canvas) * alpha[..., None]
        owner[mine] = len(drawn)
        drawn.append((label, own))
    boxes = []
    for k in range(len(drawn)):
        rows, cols = np.nonzero(owner == k)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(
        image,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        tuple(label for label, _ in drawn),
        background,
    )


def scenes(count: int, seed: int = DEFAULT_SEED) -> list[Scene]:
    return [scene(seed, i) for i in range(count)]


# -- the model, as the service runs it ------------------------------------------------------------
class FolderDetector:
    """A detect model folder through ``processor_for`` and ``OrtSession`` on the CPU: PNG bytes
    → per image ``(boxes float32[N,4] original pixels, scores float32[N], labels)``."""

    def __init__(self, folder: Path, *, threads: int = 0) -> None:
        config, labels = load_model_config(folder)
        processor = processor_for(folder, config, labels, max_image_pixels=40_000_000)
        if not isinstance(processor, DetectProcessor):
            raise ValueError(f"{folder} is a {config.task} model, not detect")
        self.processor = processor
        self.session = OrtSession(
            folder / config.model_file, providers=[CPU], intra_op_threads=threads
        )
        self.batch = max(1, config.batching.max_batch_size)

    def __call__(
        self, pngs: Sequence[bytes], params: DetectParams
    ) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[str, ...]]]:
        for start in range(0, len(pngs), self.batch):
            prepared = [self.processor.prepare(p) for p in pngs[start : start + self.batch]]
            outputs = self.session.run(self.processor.collate([feeds for feeds, _ in prepared]))
            for out, (_, geo) in zip(split_outputs(outputs, len(prepared)), prepared, strict=True):
                result = self.processor.finish(out, geo, params)
                yield result.detections.boxes, result.detections.scores, result.labels


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# -- scoring --------------------------------------------------------------------------------------
@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    @property
    def precision(self) -> float:
        return self.tp / max(1, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self.tp / max(1, self.tp + self.fn)

    def report(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def match(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    truth: np.ndarray,
    truth_labels: Sequence[str],
) -> dict[str, Counts]:
    """Per label: detections (``float32[N,4]``, ``[N]``) matched greedily, best score first, to
    the unmatched ground-truth box of their label with the highest IoU, if it is ≥ 0.5."""
    counts = {label: Counts() for label in SHAPES}
    taken = np.zeros(len(truth_labels), bool)
    want = np.asarray(truth_labels, dtype=object)
    for i in np.argsort(-scores, kind="stable").tolist():
        candidates = np.nonzero((want == labels[i]) & ~taken)[0]
        ious = box_iou(boxes[i], truth[candidates]) if len(candidates) else np.zeros(0)
        if len(ious) and ious.max() >= IOU_MIN:
            taken[candidates[int(ious.argmax())]] = True
            counts[labels[i]].tp += 1
        elif labels[i] in counts:
            counts[labels[i]].fp += 1
    for k in np.nonzero(~taken)[0].tolist():
        counts[truth_labels[k]].fn += 1
    return counts


def evaluate(
    folder: Path,
    *,
    images: int = 240,
    seed: int = DEFAULT_SEED,
    confidence: float = DetectParams.confidence,
    threads: int = 0,
) -> dict[str, Any]:
    """Precision and recall of the detect model in ``folder`` on ``images`` held-out scenes:
    overall, per label and per background."""
    detector = FolderDetector(folder, threads=threads)
    data = scenes(images, seed)
    params = DetectParams(confidence=confidence)
    total, by_label = Counts(), {s: Counts() for s in SHAPES}
    by_background: dict[str, Counts] = {}
    found = detector([png(s.image) for s in data], params)
    for sample, (boxes, scores, labels) in zip(data, found, strict=True):
        counts = match(boxes, scores, labels, sample.boxes, sample.labels)
        bg = by_background.setdefault(sample.background, Counts())
        for label, c in counts.items():
            total.add(c)
            by_label[label].add(c)
            bg.add(c)
    return {
        "model": str(folder),
        "images": images,
        "seed": seed,
        "confidence": confidence,
        "iou_min": IOU_MIN,
        **total.report(),
        "per_label": {k: v.report() for k, v in by_label.items()},
        "per_background": {k: v.report() for k, v in sorted(by_background.items())},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/shapes-yolo"))
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--confidence", type=float, default=DetectParams.confidence)
    parser.add_argument("--threads", type=int, default=0, help="ORT threads (0: all cores)")
    parser.add_argument("--save", type=Path, help="also write the first 12 images here (PNG)")
    args = parser.parse_args(argv)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(scenes(min(12, args.images), args.seed)):
            (args.save / f"{i:02d}-{s.background}.png").write_bytes(png(s.image))
    report = evaluate(
        args.model,
        images=args.images,
        seed=args.seed,
        confidence=args.confidence,
        threads=args.threads,
    )
    sys.stdout.write(json.dumps(report, indent=2) + "\n")  # the CLI's output, not logging
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
