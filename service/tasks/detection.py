"""Detection decoding: YOLO (Ultralytics v8/v11 and v5 layouts), NanoDet (GFL head) and
torchvision-style outputs, class-aware NMS in vectorised numpy, and mapping boxes back to the
original image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import BadRequestError
from service.tasks.base import Outputs
from service.tasks.classification import label_for
from service.tasks.imaging import Geometry, ImageProcessor, ImageTask

# Boxes of different classes are shifted this far apart so one NMS pass never suppresses
# across classes (Ultralytics' "max_wh" trick).
_CLASS_OFFSET = 7680.0


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


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[4]`` box with ``[N,4]`` boxes (x1,y1,x2,y2)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy NMS; returns kept indices by descending score (at most ``max_keep``)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float, max_keep: int
) -> np.ndarray:
    """Class-aware NMS: boxes only suppress boxes of their own class."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    shifted = boxes + (class_ids.astype(np.float32) * _CLASS_OFFSET)[:, None]
    return nms(shifted, scores, iou, max_keep)


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
    keep = scores >= params.confidence
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
    candidates = output[output[:, 4] >= params.confidence]
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
    rows = np.flatnonzero(class_scores.max(axis=1) >= params.confidence)
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
    keep = scores >= params.confidence
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
