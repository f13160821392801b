"""Ultralytics YOLO checkpoints (v5u, v8, v11; ``.pt``, or a model ``.yaml`` for an untrained
network) → ONNX model folders.

Input ``images float32[B,3,S,S]`` (letterboxed, RGB, /255). Detection models (task ``detect``,
format ``yolov8``) have one output ``output0 float32[B, 4+C, N]`` (cx, cy, w, h in input pixels,
then class scores). Segmentation models (``-seg``; task ``segment``, format ``yolov8-seg``) add
M = 32 mask coefficients per candidate to ``output0 float32[B, 4+C+M, N]`` and the prototype
masks ``output1 float32[B, M, S/4, S/4]``. Labels and stride are in the metadata.
Ultralytics is AGPL-3.0: it is an optional, export-time-only dependency
(``pip install ultralytics``); the service never imports it.
Classic YOLOv5 (the ``ultralytics/yolov5`` repository, output ``[B, N, 5+C]``) exports with that
repository's own ``export.py --include onnx --dynamic``; serve it with ``format: yolov5``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from export.classifiers import sample_images
from export.common import (
    DEFAULT_OPSET,
    ExportError,
    add_batching_arguments,
    add_out_argument,
    add_precision_argument,
    export_onnx,
    serving_processor,
    set_metadata,
    write_model_folder,
)
from export.fp16 import Found, detections_agree, to_fp16
from export.quantize import add_quantize_arguments
from export.verify import check_parity

if TYPE_CHECKING:
    from service.tasks.imaging import ImageTask

log = logging.getLogger("export")


class _Predictions(torch.nn.Module):
    """The inference outputs only: ``[B, 4+C(+M), N]``, plus the prototypes for -seg models.

    In export mode a Detect head returns the decoded predictions, a Segment head
    ``(predictions, prototypes)``; some versions add auxiliary feature maps, which are dropped.
    """

    def __init__(self, model: torch.nn.Module, outputs: int) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(images)
        if self.outputs == 1:
            result: torch.Tensor = out[0] if isinstance(out, (list, tuple)) else out
            return result
        return tuple(out[: self.outputs])


@dataclass(frozen=True)
class YoloModel:
    model: torch.nn.Module
    task: str  # detect | segment
    labels: list[str]
    stride: int


# Ultralytics task name → ortserve task, format and number of graph outputs
_TASKS = {"detect": ("detect", "yolov8", 1), "segment": ("segment", "yolov8-seg", 2)}


def load_ultralytics(weights: str) -> YoloModel:
    try:  # imported by name: an optional dependency without complete type information
        ultralytics: Any = importlib.import_module("ultralytics")
        detect_head: Any = importlib.import_module("ultralytics.nn.modules").Detect
    except ImportError as exc:
        raise ExportError(
            "YOLO export needs Ultralytics (AGPL-3.0, optional): pip install ultralytics"
        ) from exc
    yolo = ultralytics.YOLO(weights)  # the task comes from the checkpoint or the yaml
    if yolo.task not in _TASKS:
        raise ExportError(
            f"{weights}: Ultralytics task {yolo.task!r} is not served; "
            f"detection and segmentation models are ({', '.join(_TASKS)})"
        )
    model: Any = yolo.model.eval()
    for module in model.modules():
        if isinstance(module, detect_head):
            if getattr(module, "end2end", False):
                raise ExportError(
                    f"{weights}: NMS-free (end-to-end) heads, e.g. YOLOv10 and YOLO26, output "
                    "[B, max_det, 6] and are not supported yet; v5u/v8/v11 checkpoints are"
                )
            module.export = True  # the inference layout [B, 4+C(+M), N], no auxiliary outputs
            module.format = "onnx"
            module.dynamic = True
    names = yolo.names
    labels = [str(names[i]) for i in range(len(names))]
    return YoloModel(model, yolo.task, labels, int(max(model.stride.tolist())))


# fp16 against fp32, on what a client is shown (the service's decoding, NMS and mask
# thresholding at confidence 0.25): every detection scoring ≥ 0.30 in one graph has a same-class
# partner in the other with box corners within 2 px of the original image and a score within
# 0.02; for -seg models each matched pair's mask IoU ≥ 0.95. Raw outputs: within 2 % of the
# fp32 range. See docs/export.md.
FP16_LIMITS = {"max_box_px": 2.0, "max_score_diff": 0.02, "max_unmatched": 0.0}
FP16_SEG_LIMITS = {**FP16_LIMITS, "min_mask_iou": 0.95}
FP16_CONFIDENCE = 0.25


def yolo_shown(processor: ImageTask, geos: list[Any]) -> Any:
    """``(outputs of one image, its index) → Found``: the service's own detection (or -seg
    instance) decoding by ``processor`` (the factory's, from the model's config), in pixels of
    the original image."""
    from service.tasks.detection import DetectParams, DetectProcessor
    from service.tasks.segmentation import SegmentParams, SegmentProcessor, rle_decode

    if isinstance(processor, DetectProcessor):
        detector = processor
        params = DetectParams(confidence=FP16_CONFIDENCE)

        def detections(outputs: dict[str, np.ndarray], item: int) -> Found:
            det = detector.finish(outputs, geos[item], params).detections
            return Found(det.boxes, det.scores, det.class_ids)

        return detections
    if not isinstance(processor, SegmentProcessor):
        raise ExportError(f"no fp16 check for a {type(processor).__name__}")
    segmenter = processor
    seg_params = SegmentParams(confidence=FP16_CONFIDENCE)

    def instances(outputs: dict[str, np.ndarray], item: int) -> Found:
        result = segmenter.finish(outputs, geos[item], seg_params)
        found = getattr(result, "instances", [])
        return Found(
            np.array([i.box for i in found], np.float64).reshape(-1, 4),
            np.array([i.score for i in found], np.float64),
            np.array([i.class_id for i in found], np.int64),
            [rle_decode(i.rle).astype(bool) for i in found],
        )

    return instances


def export_yolo(
    weights: str,
    out: Path,
    *,
    size: int = 640,
    max_batch_size: int = 8,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Export, check parity against PyTorch at batch 1 and 2 and write the model folder.
    ``precision="fp16"`` then converts it (IO stays float32) and checks it against fp32 with
    ``fp16_limits`` (default :data:`FP16_LIMITS`, or :data:`FP16_SEG_LIMITS` for -seg)."""
    from service.tasks.imaging import ImageTask

    yolo = load_ultralytics(weights)
    task, fmt, n_outputs = _TASKS[yolo.task]
    output_names = ["output0", "output1"][:n_outputs]
    wrapper = _Predictions(yolo.model, n_outputs).eval()
    with torch.no_grad():  # the output shapes depend on the input size only
        result = wrapper(torch.zeros(1, 3, size, size))
    shapes = [list(t.shape[1:]) for t in (result if isinstance(result, tuple) else (result,))]
    image = {
        "resize": "letterbox",
        "width": size,
        "height": size,
        "stride": yolo.stride,
        "pad_value": 114,
    }
    kind = "segmentation" if task == "segment" else "detection"
    config = {
        "task": task,
        "format": fmt,
        "description": f"Ultralytics YOLO {kind} ({Path(weights).name})"
        + (", fp16" if precision == "fp16" else ""),
        "inputs": [{"name": "images", "dtype": "float32", "dims": [3, size, size]}],
        "outputs": [
            {"name": name, "dtype": "float32", "dims": dims}
            for name, dims in zip(output_names, shapes, strict=True)
        ],
        "image": image,
        "batching": {"max_batch_size": max_batch_size, "max_delay_ms": 2, "max_queue_size": 256},
    }
    # the service's own processor for this config prepares the inputs and decodes the outputs
    processor = serving_processor(config, ImageTask, name=out.name, labels=yolo.labels)
    prepared = [processor.prepare(j) for j in sample_images()]
    tensors = [feeds["images"] for feeds, _ in prepared]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_model = export_onnx(
            wrapper,
            (torch.from_numpy(tensors[0][None]),),
            path,
            input_names=["images"],
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in ["images", *output_names]},
            opset=opset,
        )
        samples = [{"images": tensors[0][None]}, {"images": np.stack(tensors[:2])}]
        parity = check_parity(wrapper, path, samples, atol=1e-2, rtol=1e-4, name=out.name)
        if precision == "fp16":
            shown = yolo_shown(processor, [g for _, g in prepared])
            default = FP16_SEG_LIMITS if task == "segment" else FP16_LIMITS
            parity["fp16"], onnx_model = to_fp16(
                path,
                samples,
                name=out.name,
                measure=detections_agree(shown, confidence=FP16_CONFIDENCE),
                limits={**default, **(fp16_limits or {})},
            )
    set_metadata(
        onnx_model,
        {
            "task": task,
            "format": fmt,
            "labels": yolo.labels,
            "stride": yolo.stride,
            "input_size": [size, size],
            "source": {"architecture": "ultralytics", "weights": Path(weights).name},
            "opset": opset,
            "precision": precision,
        },
    )
    write_model_folder(out, onnx_model, config, labels=yolo.labels, parity=parity)
    return parity


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "yolo", help="Ultralytics YOLO v5u/v8/v11, detection or -seg (needs ultralytics)"
    )
    p.add_argument(
        "--weights",
        required=True,
        help=(
            "a .pt checkpoint (e.g. yolov8n.pt or yolov8n-seg.pt, downloads if missing) "
            "or a model .yaml"
        ),
    )
    p.add_argument("--size", type=int, default=640, help="square input size")
    add_batching_arguments(p, max_batch_size=8)
    add_precision_argument(p)
    add_out_argument(p)
    p.set_defaults(
        run=lambda args: export_yolo(
            args.weights,
            args.out,
            size=args.size,
            max_batch_size=args.max_batch_size,
            precision=args.precision,
        )
    )
    add_quantize_arguments(p)
