"""Ultralytics YOLO checkpoints (v5u, v8, v11; ``.pt``, or a model ``.yaml`` for an untrained
network) → ONNX model folders (task ``detect``, format ``yolov8``).

Input ``images float32[B,3,S,S]`` (letterboxed, RGB, /255), output ``output0 float32[B, 4+C, N]``
(cx, cy, w, h in input pixels, then class scores), labels and stride in the metadata.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.common import DEFAULT_OPSET, ExportError, export_onnx, set_metadata, write_model_folder
from export.verify import check_parity

log = logging.getLogger("export")


class _FirstOutput(torch.nn.Module):
    """Ultralytics models return (predictions, features) in some modes: keep the predictions."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        result: torch.Tensor = out[0] if isinstance(out, (list, tuple)) else out
        return result


def load_ultralytics(weights: str) -> tuple[torch.nn.Module, list[str], int]:
    try:  # imported by name: an optional dependency without complete type information
        ultralytics: Any = importlib.import_module("ultralytics")
        detect_head: Any = importlib.import_module("ultralytics.nn.modules").Detect
    except ImportError as exc:
        raise ExportError(
            "YOLO export needs Ultralytics (AGPL-3.0, optional): pip install ultralytics"
        ) from exc
    yolo = ultralytics.YOLO(weights, task="detect")
    model: Any = yolo.model.eval()
    for module in model.modules():
        if isinstance(module, detect_head):
            module.export = True  # the inference layout [B, 4+C, N], no auxiliary outputs
            module.format = "onnx"
            module.dynamic = True
    names = yolo.names
    labels = [str(names[i]) for i in range(len(names))]
    stride = int(max(model.stride.tolist()))
    return model, labels, stride


def export_yolo(
    weights: str, out: Path, *, size: int = 640, max_batch_size: int = 8, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    from export.classifiers import sample_images
    from service.runtime.model_config import ImagePreprocessing
    from service.tasks.imaging import ImageProcessor

    model, labels, stride = load_ultralytics(weights)
    wrapper = _FirstOutput(model).eval()
    image = {
        "resize": "letterbox",
        "width": size,
        "height": size,
        "stride": stride,
        "pad_value": 114,
    }
    processor = ImageProcessor(ImagePreprocessing.model_validate(image), "images", max_pixels=10**8)
    tensors = [processor.preprocess(j)[0]["images"] for j in sample_images()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_model = export_onnx(
            wrapper,
            (torch.from_numpy(tensors[0][None]),),
            path,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
            opset=opset,
        )
        parity = check_parity(
            wrapper,
            path,
            [{"images": tensors[0][None]}, {"images": np.stack(tensors[:2])}],
            atol=1e-2,
            rtol=1e-4,
            name=out.name,
        )
        with torch.no_grad():
            candidates = int(wrapper(torch.from_numpy(tensors[0][None])).shape[2])
    set_metadata(
        onnx_model,
        {
            "task": "detect",
            "format": "yolov8",
            "labels": labels,
            "stride": stride,
            "input_size": [size, size],
            "source": {"architecture": "ultralytics", "weights": Path(weights).name},
            "opset": opset,
        },
    )
    config = {
        "task": "detect",
        "format": "yolov8",
        "description": f"Ultralytics YOLO ({Path(weights).name})",
        "inputs": [{"name": "images", "dtype": "float32", "dims": [3, size, size]}],
        "outputs": [{"name": "output0", "dtype": "float32", "dims": [4 + len(labels), candidates]}],
        "image": image,
        "batching": {"max_batch_size": max_batch_size, "max_delay_ms": 2, "max_queue_size": 256},
    }
    write_model_folder(out, onnx_model, config, labels=labels, parity=parity)
    return parity


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "yolo", help="Ultralytics YOLO v5u/v8/v11 (needs ultralytics)"
    )
    p.add_argument(
        "--weights",
        required=True,
        help="a .pt checkpoint (e.g. yolov8n.pt, downloads if missing) or a model .yaml",
    )
    p.add_argument("--size", type=int, default=640, help="square input size")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(
        run=lambda args: export_yolo(
            args.weights, args.out, size=args.size, max_batch_size=args.max_batch_size
        )
    )
