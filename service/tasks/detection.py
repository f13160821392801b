"""Detection decoding: YOLO (Ultralytics v8/v11 and v5 layouts), NanoDet (GFL head) and
torchvision-style outputs, class-aware NMS in vectorised numpy, and mapping boxes back to the
original image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import BadRequestError
from service.model_config import ModelConfig
from service.tasks.base import Outputs
from service.tasks.classification import label_for
from service.tasks.imaging import Geometry, ImageProcessor, ImageTask, image_processor


@dataclass(frozen=True)
class DetectParams:
    confidence: float = 0.25
    iou: float = 0.45
    max_detections: int = 300
    class_ids: frozenset[int] | None = None  # None: every class


@dataclass(frozen=True)
class Detections:
    """``boxes float32[N,4]`` x1,y1,x2,y2; ``scores float32[N]``; ``class_ids int64[N]``."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# What a request can make NMS cost (DESIGN.md, "The perimeter"): scores under MIN_CONFIDENCE
# never count as detections whatever the request's confidence (Ultralytics validates at 0.001),
# and NMS looks at no more than MAX_NMS_CANDIDATES candidates per image, the best-scored first
# (torchvision's and Ultralytics' ``max_nms``): the greedy loop's cost grows with candidates × kept.
MIN_CONFIDENCE = 0.001
MAX_NMS_CANDIDATES = 30_000
# Candidates NMS compares with the boxes kept so far in one vectorised step
_NMS_BLOCK = 256


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[4]`` box with ``[N,4]`` boxes (x1,y1,x2,y2)."""
    ious: np.ndarray = pairwise_iou(box[None, :], boxes)[0]
    return ious


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A,B]`` IoU of every ``a[A,4]`` box with every ``b[B,4]`` box (x1,y1,x2,y2); 0 where
    both are empty."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    max_keep: int,
    max_candidates: int = MAX_NMS_CANDIDATES,
) -> np.ndarray:
    """Greedy NMS over the ``max_candidates`` best-scored ``boxes[N,4]``; returns kept indices
    ``int64[K]`` by descending score (ties: lower index first), at most ``max_keep``."""
    return batched_nms(
        boxes, scores, np.zeros(scores.shape[0], np.int64), iou_threshold, max_keep, max_candidates
    )


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou: float,
    max_keep: int,
    max_candidates: int = MAX_NMS_CANDIDATES,
) -> np.ndarray:
    """Class-aware NMS: boxes only suppress boxes of their own class. Of ``boxes[N,4]``, only
    the ``max_candidates`` best-scored take part; returns kept indices ``int64[K]`` by
    descending score (ties: lower index first), at most ``max_keep``. Each class runs on its
    own (its cost follows its own candidates × kept, not the image's)."""
    order = np.argsort(-scores, kind="stable")[: max(0, max_candidates)].astype(np.int64)
    if max_keep <= 0 or order.size == 0:
        return np.zeros(0, dtype=np.int64)
    if iou >= 1.0:  # no IoU exceeds 1: nothing can be suppressed
        return order[:max_keep]
    # the candidates grouped by class, each group still in score order
    grouped = order[np.argsort(class_ids[order], kind="stable")]
    bounds = np.flatnonzero(np.diff(class_ids[grouped])) + 1
    kept = [
        group if group.size == 1 else group[_greedy(boxes[group], iou, max_keep)]
        for group in np.split(grouped, bounds)
    ]
    merged = np.concatenate(kept)
    rank = np.empty(scores.shape[0], dtype=np.int64)
    rank[order] = np.arange(order.size)
    return merged[np.argsort(rank[merged], kind="stable")][:max_keep]


def _greedy(ranked: np.ndarray, iou: float, max_keep: int) -> np.ndarray:
    """Greedy NMS of ``ranked[N,4]``, boxes already by descending score: the positions kept,
    ``int64[K]`` ascending, at most ``max_keep``.

    Boxes are taken in blocks: a block is compared with every box kept so far in one step,
    then its survivors with each other, so Python runs once per block (and per block member
    that overlaps another), not once per kept box; the result is that of the one-box-at-a-time
    loop."""
    kept: list[np.ndarray] = []
    kept_boxes = ranked[:0]
    count = 0
    for start in range(0, ranked.shape[0], _NMS_BLOCK):
        block = ranked[start : start + _NMS_BLOCK]
        alive = np.arange(block.shape[0])
        if kept_boxes.shape[0]:
            # "not <=" rather than ">": a NaN IoU suppresses, as in the textbook loop
            beaten = ~(pairwise_iou(block, kept_boxes) <= iou).all(axis=1)
            alive = alive[~beaten]
        if alive.size > 1:  # within the block, in score order: a survivor suppresses later ones
            over = np.triu(~(pairwise_iou(block[alive], block[alive]) <= iou), k=1)
            suppressed = np.zeros(alive.size, dtype=bool)
            for i in np.flatnonzero(over.any(axis=1)).tolist():
                if not suppressed[i]:
                    suppressed |= over[i]
            alive = alive[~suppressed]
        alive = alive[: max_keep - count]
        kept.append(start + alive)
        kept_boxes = np.concatenate([kept_boxes, block[alive]])
        count += alive.size
        if count >= max_keep:
            break
    return np.concatenate(kept).astype(np.int64)


def _threshold(params: DetectParams) -> float:
    """The score a candidate needs: the request's confidence, never under ``MIN_CONFIDENCE``."""
    return max(params.confidence, MIN_CONFIDENCE)


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], 1)


def _select(
    boxes: np.ndarray, class_scores: np.ndarray, params: DetectParams
) -> tuple[Detections, np.ndarray]:
    """Best class per candidate, thresholds, class filter, NMS. Also returns the kept candidates'
    row numbers (``int64[K]``), for outputs that carry more per candidate (mask coefficients)."""
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(class_scores.shape[0]), class_ids]
    keep = scores >= _threshold(params)
    if params.class_ids is not None:
        keep &= np.isin(class_ids, np.fromiter(params.class_ids, dtype=np.int64))
    rows = np.flatnonzero(keep)
    rows = rows[
        batched_nms(boxes[rows], scores[rows], class_ids[rows], params.iou, params.max_detections)
    ]
    detections = Detections(
        boxes[rows].astype(np.float32),
        scores[rows].astype(np.float32),
        class_ids[rows].astype(np.int64),
    )
    return detections, rows


def decode_yolov8(output: np.ndarray, params: DetectParams) -> Detections:
    """``float32[4+C, N]`` (cx, cy, w, h in input pixels, then class scores) → detections."""
    return select_yolov8(output, params)[0]


def select_yolov8(
    output: np.ndarray, params: DetectParams, num_masks: int = 0
) -> tuple[Detections, np.ndarray]:
    """``float32[4+C+M, N]`` (cx, cy, w, h in input pixels, C class scores, then ``num_masks``
    mask coefficients for -seg models) → detections and their candidate columns ``int64[K]``."""
    if output.ndim != 2 or output.shape[0] < 5 + num_masks:
        raise ValueError(f"yolov8 output must be [4+C+{num_masks}, N], got {output.shape}")
    pred = output.T
    return _select(_cxcywh_to_xyxy(pred[:, :4]), pred[:, 4 : pred.shape[1] - num_masks], params)


def decode_yolov5(output: np.ndarray, params: DetectParams) -> Detections:
    """``float32[N, 5+C]`` (cx, cy, w, h, objectness, class scores) → detections."""
    if output.ndim != 2 or output.shape[1] < 6:
        raise ValueError(f"yolov5 output must be [N, 5+C], got {output.shape}")
    candidates = output[output[:, 4] >= _threshold(params)]
    class_scores = candidates[:, 5:] * candidates[:, 4:5]
    return _select(_cxcywh_to_xyxy(candidates[:, :4]), class_scores, params)[0]


# NanoDet's three heads, in the order its output concatenates them (row-major points per head)
NANODET_STRIDES = (8, 16, 32)


def nanodet_centers(
    width: int, height: int, strides: Sequence[int] = NANODET_STRIDES
) -> np.ndarray:
    """``float32[N,3]``: each output point's centre x, y in input pixels and its stride; a point
    sits in the middle of its cell, ``(col + 0.5) · stride``."""
    rows = []
    for stride in strides:
        ys, xs = np.mgrid[0 : -(-height // stride), 0 : -(-width // stride)]
        rows.append(
            np.stack(
                [
                    (xs.ravel() + 0.5) * stride,
                    (ys.ravel() + 0.5) * stride,
                    np.full(xs.size, stride),
                ],
                axis=1,
            )
        )
    return np.concatenate(rows).astype(np.float32)


def decode_nanodet(
    output: np.ndarray, centers: np.ndarray, num_classes: int, params: DetectParams
) -> Detections:
    """``float32[N, C + 4·bins]`` → detections. The first C values of a point are its sigmoid
    class scores; then, for the left, top, right and bottom side in turn, ``bins`` logits of a
    distance distribution (GFL): softmax, expected bin index × stride = that side's distance
    from the point's centre (``centers``, from :func:`nanodet_centers`)."""
    width = output.shape[1] - num_classes if output.ndim == 2 else 0
    if output.ndim != 2 or width <= 0 or width % 4 or output.shape[0] != centers.shape[0]:
        raise ValueError(
            f"nanodet output must be [{centers.shape[0]}, {num_classes}+4·bins], got {output.shape}"
        )
    class_scores = output[:, :num_classes]
    # only points that can pass the threshold are worth the softmax
    rows = np.flatnonzero(class_scores.max(axis=1) >= _threshold(params))
    logits = output[rows, num_classes:].reshape(rows.size, 4, width // 4)
    weights = np.exp(logits - logits.max(axis=2, keepdims=True))
    weights /= weights.sum(axis=2, keepdims=True)
    centre = centers[rows]
    distance = (weights @ np.arange(width // 4, dtype=np.float32)) * centre[:, 2:3]
    boxes = np.concatenate([centre[:, :2] - distance[:, :2], centre[:, :2] + distance[:, 2:]], 1)
    return _select(boxes, class_scores[rows], params)[0]


def decode_torchvision(
    boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, params: DetectParams
) -> Detections:
    """Already-NMSed ``boxes[N,4]``, ``labels[N]``, ``scores[N]`` → filtered detections."""
    keep = scores >= _threshold(params)
    if params.class_ids is not None:
        keep &= np.isin(labels, np.fromiter(params.class_ids, dtype=np.int64))
    order = np.argsort(-scores[keep], kind="stable")[: params.max_detections]
    return Detections(
        boxes[keep][order].astype(np.float32),
        scores[keep][order].astype(np.float32),
        labels[keep][order].astype(np.int64),
    )


def to_original(boxes: np.ndarray, geo: Geometry) -> np.ndarray:
    """Model-input pixel boxes → original-image pixel boxes, clipped to the image."""
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, [0, 2]] = (boxes[:, [0, 2]] - geo.pad_x) / geo.scale_x
    out[:, [1, 3]] = (boxes[:, [1, 3]] - geo.pad_y) / geo.scale_y
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, geo.orig_w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, geo.orig_h)
    return out


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections in original-image pixels, with their label names."""

    width: int  # of the original image
    height: int
    detections: Detections
    labels: tuple[str, ...]  # one per detection


class DetectProcessor(ImageTask):
    """Image → ``float32[3,H,W]``; the model's outputs (one item) → detections in pixels of the
    original image: decoding per ``format``, thresholds, class-aware NMS."""

    def __init__(
        self, image: ImageProcessor, fmt: str, output_names: Sequence[str], labels: Sequence[str]
    ) -> None:
        super().__init__(image)
        self.fmt = fmt
        self.output_names = list(output_names)
        self.labels = list(labels)
        self._centers = (
            nanodet_centers(image.spec.width, image.spec.height) if fmt == "nanodet" else None
        )

    def params(
        self,
        *,
        model: str,
        confidence: float,
        iou: float,
        max_detections: int,
        classes: Sequence[str] | None,
    ) -> DetectParams:
        """Request parameters → ``DetectParams``; unknown ``classes`` labels are a 400."""
        class_ids = None
        if classes is not None:
            wanted = set(classes)
            unknown = sorted(wanted - set(self.labels))
            if unknown:
                raise BadRequestError(f"classes {unknown} are not labels of model {model!r}")
            class_ids = frozenset(i for i, label in enumerate(self.labels) if label in wanted)
        return DetectParams(confidence, iou, max_detections, class_ids)

    def decode(self, outputs: Outputs, geo: Geometry, params: DetectParams) -> Detections:
        if self.fmt == "torchvision-detection":
            boxes, labels, scores = (outputs[n] for n in self.output_names[:3])
            det = decode_torchvision(
                boxes.reshape(-1, 4), labels.reshape(-1), scores.reshape(-1), params
            )
        elif self._centers is not None:
            raw = outputs[self.output_names[0]]
            det = decode_nanodet(raw, self._centers, len(self.labels), params)
        else:
            raw = outputs[self.output_names[0]]
            det = decode_yolov8(raw, params) if self.fmt == "yolov8" else decode_yolov5(raw, params)
        return Detections(to_original(det.boxes, geo), det.scores, det.class_ids)

    def finish(self, outputs: Outputs, meta: Geometry, params: DetectParams) -> ImageDetections:
        det = self.decode(outputs, meta, params)
        names = tuple(label_for(self.labels, int(c)) for c in det.class_ids.tolist())
        return ImageDetections(meta.orig_w, meta.orig_h, det, names)


def build(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> DetectProcessor:
    """The task table's builder for ``detect``."""
    image = image_processor(config, max_pixels=max_image_pixels)
    return DetectProcessor(image, config.format, [o.name for o in config.outputs], labels)
