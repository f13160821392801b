"""Segmentation post-processing: semantic class maps at original size, PNG and COCO RLE
encodings, and Mask R-CNN style instances."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from service.model_config import ModelConfig
from service.tasks.base import Outputs
from service.tasks.classification import label_for
from service.tasks.detection import DetectParams, select_yolov8, to_original
from service.tasks.imaging import Geometry, ImageProcessor, ImageTask, image_processor

# png / rle: the semantic mask as the response carries it; map: the class map itself, for
# drawing (no PNG or RLE round trip)
MaskFormat = Literal["png", "rle", "map"]


@dataclass(frozen=True)
class ClassArea:
    class_id: int
    pixels: int
    fraction: float


@dataclass(frozen=True)
class Instance:
    class_id: int
    score: float
    box: tuple[float, float, float, float]
    rle: dict[str, object]  # {"size": [h, w], "counts": str}


def _resize_plane(
    plane: np.ndarray,
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Bilinear resize of a float32[h,w] plane, or of its ``box`` region (PIL's source box in
    plane pixels), to (w, h) = ``size``."""
    if box is None and plane.shape[::-1] == size:
        return plane.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.array(img.resize(size, Image.Resampling.BILINEAR, box), dtype=np.float32)


def _content_box(geo: Geometry, map_w: int, map_h: int) -> tuple[int, int, int, int]:
    """The part of a ``map_w × map_h`` output map that shows the image (letterbox padding off)."""
    fx, fy = map_w / geo.input_w, map_h / geo.input_h
    x0 = max(0.0, geo.pad_x * fx)
    y0 = max(0.0, geo.pad_y * fy)
    x1 = min(float(map_w), (geo.pad_x + geo.orig_w * geo.scale_x) * fx)
    y1 = min(float(map_h), (geo.pad_y + geo.orig_h * geo.scale_y) * fy)
    left, top = int(np.floor(x0)), int(np.floor(y0))
    right, bottom = max(left + 1, int(np.ceil(x1))), max(top + 1, int(np.ceil(y1)))
    return left, top, right, bottom


def semantic_class_map(logits: np.ndarray, geo: Geometry) -> np.ndarray:
    """``float32[C,h,w]`` logits → ``uint8|uint16[H,W]`` class ids at the original size.

    Logits (not class ids) are resized bilinearly, as torchvision's segmentation models do,
    which gives smooth boundaries at any upscale.
    """
    if logits.ndim != 3:
        raise ValueError(f"semantic logits must be [C,h,w], got {logits.shape}")
    c, h, w = logits.shape
    left, top, right, bottom = _content_box(geo, w, h)
    crop = logits[:, top:bottom, left:right]
    size = (geo.orig_w, geo.orig_h)
    best = _resize_plane(crop[0], size).copy()
    class_map = np.zeros((geo.orig_h, geo.orig_w), dtype=np.uint8 if c <= 256 else np.uint16)
    for k in range(1, c):
        plane = _resize_plane(crop[k], size)
        better = plane > best
        class_map[better] = k
        np.maximum(best, plane, out=best)
    return class_map


def class_areas(class_map: np.ndarray) -> list[ClassArea]:
    counts = np.bincount(class_map.ravel())
    total = class_map.size
    return [ClassArea(int(k), int(n), float(n) / total) for k, n in enumerate(counts) if n > 0]


def png_base64(class_map: np.ndarray) -> str:
    """Class-id map → base64 PNG (8-bit grey, or 16-bit when there are more than 256 classes)."""
    buf = io.BytesIO()
    mode = "L" if class_map.dtype == np.uint8 else "I;16"
    Image.fromarray(class_map, mode=mode).save(buf, format="PNG", optimize=False, compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def rle_encode(mask: np.ndarray) -> dict[str, object]:
    """Binary ``[H,W]`` mask → COCO compressed RLE ``{"size": [H, W], "counts": str}``.

    Same format as ``pycocotools.mask.encode``: column-major runs starting with a zero run,
    each run delta-coded against the run two before and written 5 bits per character.
    """
    h, w = mask.shape
    return rle_encode_region(mask, 0, 0, h, w)


def rle_encode_region(
    patch: np.ndarray, top: int, left: int, height: int, width: int
) -> dict[str, object]:
    """``rle_encode`` of a ``height × width`` mask that is ``patch`` at (``top``, ``left``) and
    zero elsewhere, without building the full mask: the cost follows the patch's columns."""
    ph, pw = patch.shape
    if top < 0 or left < 0 or top + ph > height or left + pw > width:
        raise ValueError(f"a {ph}×{pw} patch at ({top}, {left}) is outside {height}×{width}")
    if ph == height:
        columns = np.asarray(patch, dtype=bool)
    else:  # the patch's columns at full height
        columns = np.zeros((height, pw), dtype=bool)
        columns[top : top + ph] = patch
    flat = columns.ravel(order="F")
    # run boundaries: where the column-major pixels change value
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts_on_one = bool(flat.size and flat[0])
    before = left * height  # the all-zero columns before the patch ...
    after = (width - left - pw) * height  # ... and after it
    # runs alternate zero, one, zero...: a mask that starts on a one has an empty first run
    ends = np.concatenate(
        (np.zeros(int(starts_on_one), np.int64), change, np.asarray([flat.size], np.int64))
    )
    runs = np.diff(ends, prepend=np.int64(0))
    runs[0] += before
    if runs.size % 2:  # an odd count ends on zeros
        runs[-1] += after
    elif after:
        runs = np.append(runs, np.int64(after))
    return {"size": [height, width], "counts": _rle_counts(runs)}


def _rle_counts(runs: np.ndarray) -> str:
    """COCO's string form of ``int64[R]`` run lengths, vectorised over the runs: each run from
    the fourth on is written as its difference to the run two before, then as little-endian
    5-bit groups, sign-extended, ``0x20`` on every group but the last, each group + 48 one
    ASCII character (``pycocotools``' ``rleToString``)."""
    x = runs.astype(np.int64, copy=True)
    if x.size > 3:
        x[3:] -= runs[1:-2]
    # characters per value: the fewest 5-bit groups whose signed range holds it
    magnitude = np.where(x < 0, ~x, x)  # two's complement: -v needs the bits of v - 1
    n = np.ones(x.shape, dtype=np.int8)
    widest = int(magnitude.max(initial=0))
    k = 1
    while k * 5 < 64 and widest >= 1 << (5 * k - 1):
        n += magnitude >= np.int64(1 << (5 * k - 1))
        k += 1
    # one row of characters per value, as many columns as the longest needs; the row-major
    # read-out of the used cells is the string
    table = np.empty((x.size, k), dtype=np.uint8)
    for i in range(k):
        table[:, i] = ((x >> np.int64(5 * i)) & 0x1F) + np.where(n > i + 1, 0x20 + 48, 48)
    used = np.arange(k, dtype=np.int8) < n[:, None]
    return table[used].tobytes().decode("ascii")


def rle_decode(rle: dict[str, object]) -> np.ndarray:
    """Inverse of ``rle_encode`` (used by tests and the rendering code), vectorised like it:
    ``bool[H,W]``."""
    size = rle["size"]
    assert isinstance(size, list)
    h, w = int(size[0]), int(size[1])
    chars = np.frombuffer(str(rle["counts"]).encode("ascii"), dtype=np.uint8).astype(np.int64)
    chars -= 48
    last = (chars & 0x20) == 0  # the last character of each value
    if chars.size and not last[-1]:
        raise ValueError("the RLE counts end inside a value")
    ends = np.flatnonzero(last)
    if ends.size == 0:  # no runs: an empty mask
        return np.zeros((h, w), dtype=np.bool_)
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    shift = 5 * (np.arange(chars.size, dtype=np.int64) - np.repeat(starts, ends - starts + 1))
    x = np.add.reduceat((chars & 0x1F) << shift, starts)
    negative = (chars[ends] & 0x10) != 0  # sign-extend past the value's last group
    x[negative] |= np.int64(-1) << (shift[ends[negative]] + 5)
    # undo the delta coding: from the fourth value on, each is relative to the one two before
    counts = x.copy()
    if counts.size > 3:
        counts[3::2] = counts[1] + np.cumsum(x[3::2])
        counts[4::2] = counts[2] + np.cumsum(x[4::2])
    if counts.min() < 0 or counts.sum() != h * w:
        raise ValueError(f"the RLE counts do not cover a {h}×{w} mask")
    flat = np.repeat(np.arange(counts.size) % 2 == 1, counts)
    return flat.reshape((w, h)).T


def semantic_rle(class_map: np.ndarray) -> dict[int, dict[str, object]]:
    """One COCO RLE per class present in the map."""
    return {int(k): rle_encode(class_map == k) for k in np.unique(class_map)}


def instances_from_maskrcnn(
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    geo: Geometry,
    confidence: float,
    max_instances: int = 100,
) -> list[Instance]:
    """torchvision Mask R-CNN outputs at model-input size → instances at the original size.

    ``masks float32[N,1,H,W]`` are probabilities already pasted into the input image; each is
    resized bilinearly to the original image and thresholded at 0.5. Only the region around
    the mask's own pixels is resampled (bilinear weights are non-negative, so nothing beyond
    the filter's reach of a pixel ≥ 0.5 can reach 0.5): the cost follows the instance's size,
    not the image's, which matters on large images with many instances.
    """
    keep = np.flatnonzero(scores >= confidence)[:max_instances]
    if keep.size == 0:
        return []
    orig_boxes = to_original(boxes[keep].astype(np.float32), geo)
    out: list[Instance] = []
    for row, i in enumerate(keep):
        plane = masks[i, 0] if masks.ndim == 4 else masks[i]
        plane = plane[: geo.input_h, : geo.input_w]
        x1, y1, x2, y2 = (float(v) for v in orig_boxes[row])
        top, left, patch = _resized_region(plane, geo.orig_w, geo.orig_h)
        rle = rle_encode_region(patch >= 0.5, top, left, geo.orig_h, geo.orig_w)
        out.append(Instance(int(labels[i]), float(scores[i]), (x1, y1, x2, y2), rle))
    return out


def _resized_region(plane: np.ndarray, width: int, height: int) -> tuple[int, int, np.ndarray]:
    """The part of ``plane`` resized bilinearly to ``width × height`` that can reach 0.5, as
    (top, left, values): identical there to resizing the whole plane."""
    reaching = plane >= 0.5
    rows = np.flatnonzero(reaching.any(axis=1))
    if rows.size == 0:
        return 0, 0, np.zeros((0, 0), dtype=np.float32)
    cols = np.flatnonzero(reaching.any(axis=0))
    ph, pw = plane.shape
    fx, fy = pw / width, ph / height  # plane pixels per output pixel
    # PIL's bilinear support is one source pixel, or the scale when shrinking; one more to spare
    mx, my = np.ceil(max(1.0, fx)) + 1, np.ceil(max(1.0, fy)) + 1
    left = max(0, int(np.floor((cols[0] - mx) / fx)))
    right = min(width, int(np.ceil((cols[-1] + 1 + mx) / fx)))
    top = max(0, int(np.floor((rows[0] - my) / fy)))
    bottom = min(height, int(np.ceil((rows[-1] + 1 + my) / fy)))
    box = (left * fx, top * fy, right * fx, bottom * fy)
    return top, left, _resize_plane(plane, (right - left, bottom - top), box)


def instances_from_yolo_seg(
    output: np.ndarray,
    protos: np.ndarray,
    geo: Geometry,
    confidence: float,
    iou: float,
    max_instances: int = 100,
) -> list[Instance]:
    """Ultralytics -seg outputs → instances at the original size.

    ``output float32[4+C+M, N]`` is the detection layout plus M mask coefficients per candidate;
    ``protos float32[M, h, w]`` are the prototype masks over the whole (letterboxed) input. After
    NMS each instance's mask logits are ``coefficients @ protos``; the part of that map that
    shows the image is resized bilinearly to the original size, thresholded at 0 (probability
    0.5) and cut to the instance's box, as Ultralytics does with ``retina_masks=True``. Only the
    box's pixels are resampled, so cost follows instance area, not image area times instances.
    """
    if protos.ndim != 3:
        raise ValueError(f"yolov8-seg prototypes must be [M, h, w], got {protos.shape}")
    m, proto_h, proto_w = protos.shape
    params = DetectParams(confidence=confidence, iou=iou, max_detections=max_instances)
    det, rows = select_yolov8(output, params, num_masks=m)
    if len(det) == 0:
        return []
    coefficients = output[output.shape[0] - m :, rows].T.astype(np.float32)  # [K, M]
    logits = (coefficients @ protos.reshape(m, -1)).reshape(-1, proto_h, proto_w)
    boxes = to_original(det.boxes, geo)
    # only the prototypes' image part is sampled, so letterbox padding never bleeds into edges
    crop_left, crop_top, crop_right, crop_bottom = _content_box(geo, proto_w, proto_h)
    logits = logits[:, crop_top:crop_bottom, crop_left:crop_right]
    # original pixel (x, y) ↔ cropped prototype coordinate (x0 + x * sx, y0 + y * sy)
    fx, fy = proto_w / geo.input_w, proto_h / geo.input_h
    x0, y0 = geo.pad_x * fx - crop_left, geo.pad_y * fy - crop_top
    sx, sy = fx * geo.scale_x, fy * geo.scale_y
    out: list[Instance] = []
    for k in range(len(det)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        # pixels whose index i satisfies x1 <= i < x2 (Ultralytics' crop_mask rule)
        left, top = int(np.ceil(x1)), int(np.ceil(y1))
        right, bottom = int(np.ceil(x2)), int(np.ceil(y2))
        if right <= left or bottom <= top:  # boxes are clipped to the image: only empty ones
            continue
        region = (x0 + left * sx, y0 + top * sy, x0 + right * sx, y0 + bottom * sy)
        binary = _resize_plane(logits[k], (right - left, bottom - top), region) > 0
        if not binary.any():
            continue  # a box without mask pixels is no instance (Ultralytics drops it too)
        rle = rle_encode_region(binary, top, left, geo.orig_h, geo.orig_w)
        out.append(Instance(int(det.class_ids[k]), float(det.scores[k]), (x1, y1, x2, y2), rle))
    return out


@dataclass(frozen=True)
class SegmentParams:
    confidence: float = 0.5
    mask_format: MaskFormat = "png"  # semantic only
    iou: float = 0.45  # YOLO segmentation models: NMS IoU threshold


@dataclass(frozen=True)
class SemanticResult:
    """One image's class map: areas per class present, and the mask as ``mask_format`` asked."""

    width: int
    height: int
    areas: list[ClassArea]
    labels: tuple[str, ...]  # one per area
    png: str | None = None
    rle: dict[int, dict[str, object]] | None = None
    class_map: np.ndarray | None = None  # uint8|uint16[H,W], with mask_format=map


@dataclass(frozen=True)
class InstanceResult:
    width: int
    height: int
    instances: list[Instance]  # descending score
    labels: tuple[str, ...]  # one per instance


class SegmentProcessor(ImageTask):
    """Image → ``float32[3,H,W]``; semantic logits → a class map at the original size, or
    Mask R-CNN / YOLO-seg outputs → instances with COCO RLE masks."""

    def __init__(
        self, image: ImageProcessor, fmt: str, output_names: Sequence[str], labels: Sequence[str]
    ) -> None:
        super().__init__(image)
        self.fmt = fmt
        self.output_names = list(output_names)
        self.labels = list(labels)

    @property
    def instance(self) -> bool:
        """Whether results are instances (Mask R-CNN, YOLO-seg) rather than a class map."""
        return self.fmt in ("maskrcnn", "yolov8-seg")

    def finish(
        self, outputs: Outputs, meta: Geometry, params: SegmentParams
    ) -> SemanticResult | InstanceResult:
        if self.instance:
            instances = self._instances(outputs, meta, params)
            names = tuple(label_for(self.labels, inst.class_id) for inst in instances)
            return InstanceResult(meta.orig_w, meta.orig_h, instances, names)
        class_map = semantic_class_map(outputs[self.output_names[0]], meta)
        areas = class_areas(class_map)
        names = tuple(label_for(self.labels, a.class_id) for a in areas)
        size = (meta.orig_w, meta.orig_h)
        if params.mask_format == "map":
            return SemanticResult(*size, areas, names, class_map=class_map)
        if params.mask_format == "rle":
            return SemanticResult(*size, areas, names, rle=semantic_rle(class_map))
        return SemanticResult(*size, areas, names, png=png_base64(class_map))

    def _instances(self, outputs: Outputs, geo: Geometry, params: SegmentParams) -> list[Instance]:
        if self.fmt == "maskrcnn":
            boxes, labels, scores, masks = (outputs[n] for n in self.output_names[:4])
            return instances_from_maskrcnn(
                boxes.reshape(-1, 4),
                labels.reshape(-1),
                scores.reshape(-1),
                masks,
                geo,
                params.confidence,
            )
        output, protos = (outputs[n] for n in self.output_names[:2])
        return instances_from_yolo_seg(output, protos, geo, params.confidence, params.iou)


def build(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> SegmentProcessor:
    """The task table's builder for ``segment``."""
    image = image_processor(config, max_pixels=max_image_pixels)
    return SegmentProcessor(image, config.format, [o.name for o in config.outputs], labels)
