"""The accuracy gates: held-out images through both graphs and the folder's own processor (the
one factory's), measured with ``export.quantize.metrics`` against each task's threshold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from export.common import MAX_IMAGE_PIXELS, ExportError
from export.quantize.metrics import average_precision, classification_agreement, mean_iou

if TYPE_CHECKING:
    from service.tasks.classification import ClassifyProcessor
    from service.tasks.detection import DetectProcessor
    from service.tasks.segmentation import SegmentProcessor

DEFAULT_MIN_TOP1_AGREEMENT = 0.9
DEFAULT_MAX_MAP_DROP = 0.1
DEFAULT_MAX_MIOU_DROP = 0.05
MIN_CONFIDENT = 20


@dataclass(frozen=True)
class Gates:
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT
    max_map_drop: float = DEFAULT_MAX_MAP_DROP
    max_miou_drop: float = DEFAULT_MAX_MIOU_DROP


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
    processor = processor_for(folder, config, labels, max_image_pixels=MAX_IMAGE_PIXELS)
    if not isinstance(processor, ClassifyProcessor | DetectProcessor | SegmentProcessor):
        raise ExportError(f"{config.name}: int8 quantization is for vision models")
    return processor


def prepare_batches(
    folder: Path, images: Sequence[bytes], batch: int = 8
) -> list[dict[str, np.ndarray]]:
    """Images through the folder's processor, collated ``batch`` at a time."""
    processor = image_processor(folder)
    items = [processor.prepare(data)[0] for data in images]
    return [processor.collate(chunk) for chunk in same_shape_chunks(items, batch)]
