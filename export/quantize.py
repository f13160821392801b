"""Static int8 quantization of a vision model folder (QDQ, per-channel weights), gated by how
often the int8 model gives clients the same answer as the fp32 one.

    python -m export quantize --model-dir models/mobilenet_v2 --out models/mobilenet_v2-int8

The fp32 folder's own ``config.yaml`` says the task; its processor (``service.tasks.factory.
processor_for``) prepares the calibration and held-out images exactly as the service prepares a
client's, and turns both models' outputs into what a client receives (top-k, detections after
NMS, class maps at the original size). The gates compare int8 with fp32 on held-out images that
calibration never saw:

- classify: top-1 agreement (the int8 top-1 label is the fp32 one), ``--min-top1-agreement``;
- detect: mAP@0.5 of the int8 detections with the fp32 detections as the ground truth (there is
  no labelled data offline, so this measures the loss against fp32, not against COCO: fp32 scores
  1.0 by construction and the drop is ``1 - mAP``), ``--max-map-drop``;
- segment (semantic): mIoU of the int8 class maps against the fp32 ones, ``--max-miou-drop``.

A failed gate writes nothing and raises ``ParityError``. The folder is written atomically with
``export.common.write_model_folder``; ``parity.json`` records the recipe, the gate and its
measurements, and the in-process latency of both graphs.

Calibration: ``--calibration DIR`` (image files; every third by name is held out), or the built-in set — the photos scikit-image, matplotlib and scikit-learn ship, split
by photo into calibration and held-out ones, each expanded into seeded random crops.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from export.common import ExportError, read_metadata, set_metadata, write_model_folder
from export.verify import ParityError, compare_latency_ms

if TYPE_CHECKING:
    from service.tasks.classification import ClassifyProcessor
    from service.tasks.detection import DetectProcessor
    from service.tasks.segmentation import SegmentProcessor

log = logging.getLogger("export")

DEFAULT_MIN_TOP1_AGREEMENT = 0.9
DEFAULT_MAX_MAP_DROP = 0.1
DEFAULT_MAX_MIOU_DROP = 0.05
MIN_CONFIDENT = 20
MIN_AS_IS = 32
INSTANCE_FORMATS = ("maskrcnn", "yolov8-seg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# (package, folder inside it): sample photos shipped by packages of the export extra
PHOTO_FOLDERS = (
    ("skimage", "data"),
    ("matplotlib", "mpl-data/sample_data"),
    ("sklearn", "datasets/images"),
)
MAX_PIXELS = 10**8
# ops ONNX Runtime's CPU provider has fast int8 kernels for; others (Resize, Sigmoid, Concat,
# Softmax, ...) stay float so that no extra Q/DQ pairs are spent around them
DEFAULT_OP_TYPES = (
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Clip",
    "Relu",
    "LeakyRelu",
    "MaxPool",
)


@dataclass(frozen=True)
class Recipe:
    """How the graph is quantized (the defaults are the measured choice, docs/export.md)."""

    calibrate_method: str = "MinMax"  # MinMax | Entropy | Percentile | Distribution
    per_channel: bool = True
    activation_type: str = "QUInt8"  # x86 int8 kernels are u8 activations × s8 weights
    weight_type: str = "QInt8"
    reduce_range: bool = False
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    # the nodes that compute the graph outputs (walking back over shape and activation ops to
    # the first Conv/Gemm/MatMul on each path) stay fp32: logits or box regressions squeezed
    # into 256 levels make argmax ties and staircase boxes
    keep_output_nodes_fp32: bool = True
    # the first Conv on each path from the input stays fp32 too: on MobileNetV2 it lifts top-1
    # agreement on confident images from 0.76 to 0.97 for 3 % of the compute (docs/export.md)
    keep_input_nodes_fp32: bool = True
    exclude_nodes: tuple[str, ...] = ()  # node names kept fp32 as well
    extra_options: dict[str, Any] = field(default_factory=dict)
    percentile: float = 99.999  # Percentile calibration only
    preprocess: bool = True  # quant_pre_process: shape inference + ORT fusions (BN, ...) first


@dataclass(frozen=True)
class ImageSets:
    calibration: list[bytes]
    heldout: list[bytes]
    source: dict[str, Any]


# -- images --------------------------------------------------------------------------------------
def builtin_photos() -> list[tuple[str, bytes]]:
    """(name, file bytes) of the sample photos installed packages ship, sorted by name."""
    photos: list[tuple[str, bytes]] = []
    for package, sub in PHOTO_FOLDERS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and _decodes(path.read_bytes()):
                photos.append((f"{package}:{path.name}", path.read_bytes()))
    return sorted(photos)


def _decodes(data: bytes) -> bool:
    from service.errors import ServiceError
    from service.tasks.imaging import decode_image

    try:
        decoded = decode_image(data, max_pixels=MAX_PIXELS)
    except ServiceError:
        return False
    return min(decoded.orig_w, decoded.orig_h) >= 64


def folder_photos(folder: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of the decodable image files under ``folder`` (recursively), by name."""
    if not folder.is_dir():
        raise ExportError(f"--calibration {folder}: not a folder")
    photos = [
        (str(p.relative_to(folder)), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    photos = [(name, data) for name, data in photos if _decodes(data)]
    if len(photos) < 2:
        raise ExportError(f"--calibration {folder}: needs at least 2 decodable images")
    return photos


def split_photos(
    photos: Sequence[tuple[str, bytes]],
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(calibration, held-out): every third photo by name is held out; disjoint, both
    non-empty."""
    ordered = sorted(photos)
    heldout = [p for i, p in enumerate(ordered) if i % 3 == 1]
    calib = [p for i, p in enumerate(ordered) if i % 3 != 1]
    return calib, heldout


def random_crops(photos: Sequence[bytes], count: int, seed: int) -> list[bytes]:
    """``count`` JPEGs: random crops (¼ to all of the area, aspect ¾–4⁄3), half mirrored,
    cycling over ``photos``. Seeded: the same call gives the same bytes."""
    from service.tasks.imaging import decode_image

    rng = np.random.default_rng(seed)
    images = [decode_image(p, max_pixels=MAX_PIXELS).image for p in photos]
    out: list[bytes] = []
    for i in range(count):
        img = images[i % len(images)]
        w, h = img.size
        area = w * h * rng.uniform(0.25, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw = int(min(w, max(16, round(np.sqrt(area * aspect)))))
        ch = int(min(h, max(16, round(np.sqrt(area / aspect)))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def image_sets(
    calibration: Path | None,
    *,
    calibration_count: int = 128,
    heldout_count: int = 200,
    seed: int = 0,
    photos: Sequence[tuple[str, bytes]] | None = None,
) -> ImageSets:
    """Calibration and held-out images (encoded bytes: they go through the service's decoder),
    from disjoint photos. Parts of at least ``MIN_AS_IS`` images (or the count asked) are used
    as they are, at most ``calibration_count`` / ``heldout_count`` of them; fewer photos (the
    built-in set) are expanded into random crops."""
    if photos is None:
        photos = folder_photos(calibration) if calibration is not None else builtin_photos()
    if len(photos) < 2:
        raise ExportError("no calibration images: pass --calibration DIR")
    calib, heldout = split_photos(photos)

    def expand(part: list[tuple[str, bytes]], count: int, offset: int) -> list[bytes]:
        if len(part) >= min(count, MIN_AS_IS):  # enough real images: as they are
            return [data for _, data in part[:count]]
        return random_crops([data for _, data in part], count, seed + offset)

    source = {
        "calibration": str(calibration) if calibration is not None else "built-in sample photos",
        "calibration_photos": [name for name, _ in calib],
        "heldout_photos": [name for name, _ in heldout],
        "seed": seed,
    }
    return ImageSets(expand(calib, calibration_count, 0), expand(heldout, heldout_count, 1), source)


# -- quantization --------------------------------------------------------------------------------
class _FeedsReader:
    """onnxruntime's CalibrationDataReader protocol over prepared batches."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._batches = list(batches)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._batches)


COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def output_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from the last Conv/Gemm/MatMul of each path up to the graph outputs."""
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name for i in model.graph.initializer}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        found.append(node.name)
        if node.op_type in COMPUTE_OPS:
            continue
        stack.extend(i for i in node.input if i and i not in initializers)
    return found


def input_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from the graph inputs up to the first Conv/Gemm/MatMul of each path."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[str] = []
    stack = [i.name for i in model.graph.input]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name in found:
                continue
            found.append(node.name)
            if node.op_type not in COMPUTE_OPS:
                stack.extend(node.output)
    return found


def _name_nodes(model: onnx.ModelProto) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


@contextlib.contextmanager
def _cwd(folder: Path) -> Iterator[None]:
    """Symbolic shape inference leaves temporary files in the working directory when it gives
    up: keep them in the quantization's own temporary folder (the export CLI is one thread)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def quantize_graph(
    fp32_path: Path,
    out_path: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    recipe: Recipe,
    workdir: Path,
) -> dict[str, Any]:
    """Write the QDQ int8 graph of ``fp32_path`` to ``out_path``; returns what was kept fp32."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    model = onnx.load(str(fp32_path))
    _name_nodes(model)
    source = workdir / "named.onnx"
    onnx.save(model, str(source))
    if recipe.preprocess:
        prepared = workdir / "prepared.onnx"
        with _cwd(workdir):
            try:
                quant_pre_process(str(source), str(prepared))
            except Exception as exc:  # symbolic shape inference gives up on some graphs (TF)
                log.info("quant_pre_process: %s; again without symbolic shape inference", exc)
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        source = prepared
        model = onnx.load(str(source))
        _name_nodes(model)
        onnx.save(model, str(source))
    excluded = list(recipe.exclude_nodes)
    if recipe.keep_output_nodes_fp32:
        excluded += [n for n in output_nodes(model) if n not in excluded]
    if recipe.keep_input_nodes_fp32:
        excluded += [n for n in input_nodes(model) if n not in excluded]
    extra: dict[str, Any] = dict(recipe.extra_options)
    if recipe.calibrate_method == "Percentile":
        extra.setdefault("CalibPercentile", recipe.percentile)
    quantize_static(
        str(source),
        str(out_path),
        _FeedsReader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(recipe.op_types) or None,
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=QuantType[recipe.activation_type],
        weight_type=QuantType[recipe.weight_type],
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod[recipe.calibrate_method],
        extra_options=extra,
    )
    return {"nodes_kept_fp32": excluded}


# -- evaluation: what a client would get from each graph -----------------------------------------
def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def same_shape_chunks(
    items: Sequence[dict[str, np.ndarray]], batch: int
) -> list[list[dict[str, np.ndarray]]]:
    """Consecutive items in runs of at most ``batch`` with equal shapes (models with variable
    input sizes, ``resize: fit``, run one image at a time)."""
    chunks: list[list[dict[str, np.ndarray]]] = []
    for item in items:
        last = chunks[-1] if chunks else None
        shapes = {k: v.shape for k, v in item.items()}
        if last and len(last) < batch and {k: v.shape for k, v in last[0].items()} == shapes:
            last.append(item)
        else:
            chunks.append([item])
    return chunks


def run_items(
    session: ort.InferenceSession,
    items: Sequence[dict[str, np.ndarray]],
    collate: Callable[[Sequence[dict[str, np.ndarray]]], dict[str, np.ndarray]],
    batch: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Each prepared item's outputs (no batch axis), run ``batch`` at a time."""
    from service.tasks.base import split_outputs

    names = [o.name for o in session.get_outputs()]
    results: list[dict[str, np.ndarray]] = []
    for chunk in same_shape_chunks(items, batch):
        outputs = dict(zip(names, session.run(names, collate(chunk)), strict=True))
        results += split_outputs(outputs, len(chunk))
    return results


def classification_agreement(
    ref: Sequence[np.ndarray], got: Sequence[np.ndarray], *, logits: bool
) -> dict[str, Any]:
    """Top-1 agreement and top-5 containment of ``got`` with ``ref`` (score rows ``[C]``);
    also top-1 agreement where fp32 is confident (top-1 probability > 0.5)."""
    from service.tasks.classification import softmax

    same = contained = confident = confident_same = 0
    for r, g in zip(ref, got, strict=True):
        r, g = r.reshape(-1), g.reshape(-1)
        r_top = int(np.argmax(r))
        g_top5 = np.argsort(-g, kind="stable")[:5]
        same += int(g_top5[0] == r_top)
        contained += int(r_top in g_top5)
        probs = softmax(r) if logits else r
        if probs[r_top] > 0.5:
            confident += 1
            confident_same += int(g_top5[0] == r_top)
    n = len(ref)
    return {
        "images": n,
        "top1_agreement": same / n,
        "top5_contains_fp32_top1": contained / n,
        "confident_images": confident,
        "top1_agreement_confident": confident_same / confident if confident else None,
    }


def average_precision(
    ref: Sequence[tuple[np.ndarray, np.ndarray]],
    got: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou_min: float = 0.5,
) -> tuple[float, int]:
    """mAP@``iou_min`` (COCO's 101-point interpolation, mean over the classes that have a
    reference box) of detections ``got`` = (boxes[N,4], scores[N], classes[N]) per image against
    reference boxes ``ref`` = (boxes[M,4], classes[M]) per image. Returns (mAP, classes)."""
    from service.tasks.detection import box_iou

    classes = sorted({int(c) for _, cls in ref for c in cls})
    aps: list[float] = []
    for c in classes:
        total = sum(int((cls == c).sum()) for _, cls in ref)
        scored: list[tuple[float, bool]] = []
        for (rb, rc), (gb, gs, gc) in zip(ref, got, strict=True):
            targets = rb[rc == c]
            matched = np.zeros(len(targets), dtype=bool)
            mine = np.flatnonzero(gc == c)
            for i in mine[np.argsort(-gs[mine], kind="stable")]:
                hit = False
                if len(targets):
                    ious = np.where(matched, -1.0, box_iou(gb[i], targets))
                    best = int(np.argmax(ious))
                    if ious[best] >= iou_min:
                        matched[best] = hit = True
                scored.append((float(gs[i]), hit))
        scored.sort(key=lambda s: -s[0])
        tp = np.cumsum([hit for _, hit in scored]) if scored else np.zeros(0)
        precision = tp / np.arange(1, len(scored) + 1) if scored else np.zeros(0)
        recall = tp / total if scored else np.zeros(0)
        # precision envelope, sampled at recall 0, 0.01, ..., 1
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if scored else np.zeros(0)
        points = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, points, side="left")
        aps.append(float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx])))
    return (float(np.mean(aps)) if aps else 1.0), len(classes)


def mean_iou(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> tuple[float, int]:
    """mIoU of class maps ``got`` against ``ref`` (intersection and union summed over all
    images per class, mean over the classes present in either). Returns (mIoU, classes)."""
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for r, g in zip(ref, got, strict=True):
        for c in np.union1d(np.unique(r), np.unique(g)).tolist():
            a, b = r == c, g == c
            inter[c] = inter.get(c, 0) + int((a & b).sum())
            union[c] = union.get(c, 0) + int((a | b).sum())
    ious = [inter[c] / union[c] for c in union if union[c]]
    return (float(np.mean(ious)) if ious else 1.0), len(ious)


@dataclass(frozen=True)
class Gates:
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT
    max_map_drop: float = DEFAULT_MAX_MAP_DROP
    max_miou_drop: float = DEFAULT_MAX_MIOU_DROP


def evaluate(
    folder: Path,
    fp32_path: Path,
    int8_path: Path,
    heldout: Sequence[bytes],
    gates: Gates,
) -> dict[str, Any]:
    """Run the held-out images through both graphs and the folder's processor; the gate's
    measurement, its threshold and whether it passed."""
    from service.tasks.classification import ClassifyProcessor
    from service.tasks.detection import DetectParams, DetectProcessor
    from service.tasks.segmentation import SegmentParams, SegmentProcessor

    processor = image_processor(folder)
    prepared = [processor.prepare(data) for data in heldout]
    items = [feeds for feeds, _ in prepared]
    metas = [meta for _, meta in prepared]
    ref = run_items(_session(fp32_path), items, processor.collate)
    got = run_items(_session(int8_path), items, processor.collate)
    if isinstance(processor, ClassifyProcessor):
        name = processor.output_name
        report = classification_agreement(
            [r[name] for r in ref], [g[name] for g in got], logits=processor.logits
        )
        # crops of a few photos are often ambiguous to fp32 itself (two pixel levels of noise
        # flip its top-1 on a quarter of them, docs/export.md): the gate counts the images fp32
        # is sure of (top-1 probability > 0.5), all of them when fewer than MIN_CONFIDENT are
        confident = report["confident_images"] >= MIN_CONFIDENT
        value = report["top1_agreement_confident"] if confident else report["top1_agreement"]
        threshold = gates.min_top1_agreement
        return {
            "gate": "top1_agreement",
            "value": value,
            "min": threshold,
            "passed": value >= threshold,
            "counted": "images fp32 gives > 0.5" if confident else "all images",
            **report,
        }
    if isinstance(processor, DetectProcessor):
        # reference: fp32 at the API's defaults (what a client is shown); int8 ranked down to
        # confidence 0.05 so that the precision-recall curve is complete
        serve, low = DetectParams(), DetectParams(confidence=0.05)
        reference = []
        for out, meta in zip(ref, metas, strict=True):
            det = processor.decode(out, meta, serve)
            reference.append((det.boxes, det.class_ids))
        int8_map = average_precision(
            reference, [_dets(processor.decode(o, m, low)) for o, m in zip(got, metas, strict=True)]
        )
        fp32_map = average_precision(
            reference, [_dets(processor.decode(o, m, low)) for o, m in zip(ref, metas, strict=True)]
        )
        drop = fp32_map[0] - int8_map[0]
        return {
            "gate": "map50_drop",
            "value": drop,
            "max": gates.max_map_drop,
            "passed": drop <= gates.max_map_drop,
            "reference": "fp32 detections at confidence 0.25, NMS IoU 0.45 (no labelled data)",
            "images": len(heldout),
            "reference_boxes": int(sum(len(b) for b, _ in reference)),
            "classes": int8_map[1],
            "map50_int8": int8_map[0],
            "map50_fp32": fp32_map[0],
        }
    assert isinstance(processor, SegmentProcessor)
    params = SegmentParams(mask_format="map")
    maps_ref, maps_got = [], []
    for r, g, meta in zip(ref, got, metas, strict=True):
        maps_ref.append(_class_map(processor.finish(r, meta, params)))
        maps_got.append(_class_map(processor.finish(g, meta, params)))
    miou, classes = mean_iou(maps_ref, maps_got)
    drop = 1.0 - miou
    return {
        "gate": "miou_drop",
        "value": drop,
        "max": gates.max_miou_drop,
        "passed": drop <= gates.max_miou_drop,
        "reference": "fp32 class maps (no labelled data)",
        "images": len(heldout),
        "classes": classes,
        "miou_int8_vs_fp32": miou,
    }


def _class_map(result: object) -> np.ndarray:
    from service.tasks.segmentation import SemanticResult

    if not isinstance(result, SemanticResult) or result.class_map is None:
        raise ExportError("a semantic segmenter returned no class map")
    return result.class_map


def _dets(det: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return det.boxes, det.scores, det.class_ids


def image_processor(folder: Path) -> ClassifyProcessor | DetectProcessor | SegmentProcessor:
    """The folder's processor, as the service builds it (``processor_for``)."""
    from service.model_config import load_model_config
    from service.tasks.classification import ClassifyProcessor
    from service.tasks.detection import DetectProcessor
    from service.tasks.factory import processor_for
    from service.tasks.segmentation import SegmentProcessor

    config, labels = load_model_config(folder)
    processor = processor_for(folder, config, labels, max_image_pixels=MAX_PIXELS)
    if not isinstance(processor, ClassifyProcessor | DetectProcessor | SegmentProcessor):
        raise ExportError(f"{config.name}: int8 quantization is for vision models")
    return processor


# -- the model folder ----------------------------------------------------------------------------
def prepare_batches(
    folder: Path, images: Sequence[bytes], batch: int = 8
) -> list[dict[str, np.ndarray]]:
    """Images through the folder's processor, collated ``batch`` at a time."""
    processor = image_processor(folder)
    items = [processor.prepare(data)[0] for data in images]
    return [processor.collate(chunk) for chunk in same_shape_chunks(items, batch)]


def quantize_vision(
    model_dir: Path,
    out: Path,
    *,
    calibration: Path | None = None,
    gates: Gates | None = None,
    recipe: Recipe | None = None,
    calibration_count: int = 128,
    heldout_count: int = 200,
    seed: int = 0,
    latency: bool = True,
) -> dict[str, Any]:
    """Build ``out`` (an int8 copy of the fp32 folder ``model_dir``) if the accuracy gate
    passes; returns the report written to ``parity.json``. Raises ``ParityError`` (nothing
    written) when the gate fails, ``ExportError`` when the folder cannot be quantized."""
    from service.model_config import ConfigError, load_model_config

    gates = gates or Gates()
    recipe = recipe or Recipe()
    try:
        config, _ = load_model_config(model_dir)
    except ConfigError as exc:
        raise ExportError(str(exc)) from exc
    if config.task not in ("classify", "detect", "segment") or config.image is None:
        raise ExportError(f"{config.name}: --quantize int8 is for vision models, not {config.task}")
    if config.format in INSTANCE_FORMATS:
        raise ExportError(
            f"{config.name}: int8 for instance segmentation ({config.format}) has no accuracy "
            "gate yet; only classifiers, detectors and semantic segmenters are quantized"
        )
    if config.batching.max_batch_size == 0:
        raise ExportError(f"{config.name}: the graph has no batch axis; int8 needs one")
    fp32_path = model_dir / "model.onnx"
    sets = image_sets(
        calibration, calibration_count=calibration_count, heldout_count=heldout_count, seed=seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        int8_path = work / "model.onnx"
        log.info("%s: calibrating on %d images, %s", config.name, len(sets.calibration), recipe)
        kept = quantize_graph(
            fp32_path, int8_path, prepare_batches(model_dir, sets.calibration), recipe, work
        )
        gate = evaluate(model_dir, fp32_path, int8_path, sets.heldout, gates)
        log.info("%s int8 gate: %s", config.name, {k: gate[k] for k in ("gate", "value", "passed")})
        report: dict[str, Any] = {
            "model": out.name,
            "fp32_model": config.name,
            "precision": "int8",
            "recipe": {**asdict(recipe), **kept},
            "images": sets.source,
            "gate": gate,
            "passed": gate["passed"],
        }
        if not gate["passed"]:
            bound = gate.get("min", gate.get("max"))
            raise ParityError(
                f"{config.name}: int8 fails its accuracy gate: {gate['gate']} = "
                f"{gate['value']:.4f} (limit {bound}); nothing written"
            )
        if latency:
            report["latency_ms"] = measure_speedup(fp32_path, int8_path, model_dir, sets.heldout)
        write_int8_folder(model_dir, out, int8_path, report)
    return report


def measure_speedup(
    fp32_path: Path, int8_path: Path, folder: Path, images: Sequence[bytes]
) -> dict[str, Any]:
    """Median in-process latency of both graphs, interleaved, one thread, batch 1 and 8
    (provisional: a shared machine's numbers are ratios within one run)."""
    result: dict[str, Any] = {"threads": 1}
    for batch in (1, 8):
        feeds = prepare_batches(folder, images[:batch], batch)[0]
        fp32_ms, int8_ms = compare_latency_ms([fp32_path, int8_path], feeds, runs=10)
        result[f"batch{batch}"] = {
            "fp32": round(fp32_ms, 2),
            "int8": round(int8_ms, 2),
            "speedup": round(fp32_ms / int8_ms, 2),
        }
    return result


def write_int8_folder(model_dir: Path, out: Path, int8_path: Path, report: dict[str, Any]) -> None:
    import yaml

    raw = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    if "name" in raw:
        raw["name"] = out.name
    description = raw.get("description") or raw.get("name") or model_dir.name
    raw["description"] = f"{description}, int8 (static QDQ, per-channel)"
    model = onnx.load(str(int8_path))
    meta = read_metadata(onnx.load(str(model_dir / "model.onnx")))
    meta.pop("versions", None)
    meta.update(
        {"precision": "int8", "quantization": {"fp32_model": model_dir.name, **report["recipe"]}}
    )
    set_metadata(model, meta)
    skip = {"model.onnx", "config.yaml", "parity.json"}
    extra = {p.name: p for p in model_dir.iterdir() if p.is_file() and p.name not in skip}
    write_model_folder(out, model, raw, extra_files=extra, parity=report)


# -- CLI ----------------------------------------------------------------------------------------
def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """The flags shared by ``quantize`` and the exporters' ``--quantize int8``."""
    p.add_argument(
        "--calibration",
        type=Path,
        help="folder of calibration images (every third, by name, held out for the gate); default: the "
        "sample photos scikit-image, matplotlib and scikit-learn ship",
    )
    p.add_argument(
        "--min-top1-agreement",
        type=float,
        default=DEFAULT_MIN_TOP1_AGREEMENT,
        help=f"classifiers: int8 top-1 = fp32 top-1 on at least this share of the held-out "
        f"images fp32 is sure of (top-1 > 0.5) (default {DEFAULT_MIN_TOP1_AGREEMENT})",
    )
    p.add_argument(
        "--max-map-drop",
        type=float,
        default=DEFAULT_MAX_MAP_DROP,
        help=f"detectors: largest mAP@0.5 drop against the fp32 detections "
        f"(default {DEFAULT_MAX_MAP_DROP})",
    )
    p.add_argument(
        "--max-miou-drop",
        type=float,
        default=DEFAULT_MAX_MIOU_DROP,
        help=f"semantic segmenters: largest mIoU drop against the fp32 class maps "
        f"(default {DEFAULT_MAX_MIOU_DROP})",
    )
    p.add_argument("--calibration-count", type=int, default=128, help="calibration images")
    p.add_argument("--heldout-count", type=int, default=200, help="held-out images")
    p.add_argument(
        "--no-latency", action="store_true", help="skip timing fp32 against int8 (tests)"
    )


def gates_from(args: argparse.Namespace) -> Gates:
    return Gates(args.min_top1_agreement, args.max_map_drop, args.max_miou_drop)


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "quantize",
        help="int8 copy of a vision model folder (static QDQ), gated on agreement with fp32",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--model-dir", type=Path, required=True, help="the fp32 model folder")
    p.add_argument("--out", type=Path, required=True, help="e.g. models/mobilenet_v2-int8")
    add_gate_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="crops of the calibration photos")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return quantize_vision(
        args.model_dir,
        args.out,
        calibration=args.calibration,
        gates=gates_from(args),
        seed=args.seed,
        calibration_count=args.calibration_count,
        heldout_count=args.heldout_count,
        latency=not args.no_latency,
    )


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    """``--quantize int8`` (and the gate flags) on a vision exporter's parser: its ``run`` then
    exports fp32 and quantizes that folder into ``--out`` in place. Call after ``set_defaults``."""
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: static QDQ quantization after the export, gated on agreement with fp32 "
        "(writes nothing when the gate fails)",
    )
    add_gate_arguments(p)
    export_run = p.get_default("run")

    def run(args: argparse.Namespace) -> Any:
        if args.quantize and getattr(args, "precision", "fp32") != "fp32":
            raise ExportError("--quantize int8 starts from fp32: leave out --precision")
        report = export_run(args)
        return after_export(args.out, args) or report

    p.set_defaults(run=run)


def after_export(out: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """``--quantize int8`` on an exporter: quantize the folder it just wrote into ``out`` itself
    (the fp32 folder moves to a temporary place first). None without the flag."""
    if getattr(args, "quantize", None) != "int8":
        return None
    with tempfile.TemporaryDirectory(dir=out.resolve().parent, prefix=".fp32-") as tmp:
        fp32 = Path(tmp) / out.name
        out.rename(fp32)
        try:
            return quantize_vision(
                fp32,
                out,
                calibration=args.calibration,
                gates=gates_from(args),
                calibration_count=args.calibration_count,
                heldout_count=args.heldout_count,
                latency=not args.no_latency,
            )
        except BaseException:
            # nothing written: the fp32 export is not left behind as if it were the int8 one
            shutil.rmtree(fp32, ignore_errors=True)
            raise
