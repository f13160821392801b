"""torchvision Mask R-CNN → ONNX model folder (task ``segment``, format ``maskrcnn``).

Mask R-CNN ResNet-50 FPN v1 and v2 — one ``float32[3, H, W]`` image per run (dynamic H, W; the
model resizes and normalises inside the graph), outputs boxes / labels / scores / masks with the
masks already pasted into the input image.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.classifiers import sample_images
from export.common import DEFAULT_OPSET, ExportError, export_onnx, set_metadata, write_model_folder
from export.fp16 import Found, detections_agree, to_fp16
from export.torchvision_models import labels_from_weights, load_model
from export.verify import check_parity

INSTANCE = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
# fp16 against fp32, on the instances a client is shown (score ≥ 0.5, the service's default):
# every instance scoring ≥ 0.55 in one graph has a same-class partner in the other with box
# corners within 2 px, score within 0.02 and binarised mask IoU ≥ 0.9. The number of
# detections varies, so there is no raw-output comparison. See docs/export.md.
FP16_LIMITS = {
    "max_box_px": 2.0,
    "max_score_diff": 0.02,
    "max_unmatched": 0.0,
    "min_mask_iou": 0.9,
}
FP16_CONFIDENCE = 0.5


def maskrcnn_shown(outputs: dict[str, np.ndarray], _item: int) -> Found:
    """The graph's instances (masks already pasted into the input image) as a client sees them:
    masks binarised at 0.5."""
    masks = outputs["masks"]
    return Found(
        outputs["boxes"].astype(np.float64),
        outputs["scores"].astype(np.float64),
        outputs["labels"],
        [m.reshape(m.shape[-2:]) >= 0.5 for m in masks],
    )


class SingleImageMaskRCNN(torch.nn.Module):
    """One image in, the four tensors the ONNX graph exposes out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.model([image])[0]
        return result["boxes"], result["labels"], result["scores"], result["masks"]


def export_maskrcnn_model(
    model: torch.nn.Module,
    out: Path,
    *,
    labels: list[str],
    samples: list[np.ndarray],
    source: dict[str, str],
    max_side: int = 800,
    atol: float = 2e-3,
    opset: int = DEFAULT_OPSET,
    min_mask_iou: float = 0.99,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Export a torchvision Mask R-CNN (eval mode) with its single-image ONNX signature.
    ``precision="fp16"`` then converts it (IO stays float32; NonMaxSuppression, TopK, RoiAlign
    and the other ops of ONNX Runtime's default block list stay float32) and checks it against
    fp32 with ``fp16_limits`` (default :data:`FP16_LIMITS`)."""
    single = SingleImageMaskRCNN(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_model = export_onnx(
            single,
            (torch.from_numpy(samples[0]),),
            path,
            input_names=["image"],
            output_names=["boxes", "labels", "scores", "masks"],
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "boxes": {0: "n"},
                "labels": {0: "n"},
                "scores": {0: "n"},
                "masks": {0: "n", 2: "height", 3: "width"},
            },
            opset=opset,
        )
        parity = check_parity(
            single,
            path,
            [{"image": s} for s in samples],
            atol=atol,
            rtol=1e-3,
            name=out.name,
            batch_axis=False,
            mask_outputs={"masks": "scores"},
            min_mask_iou=min_mask_iou,
        )
        if precision == "fp16":
            parity["fp16"], onnx_model = to_fp16(
                path,
                [{"image": s} for s in samples],
                name=out.name,
                raw_outputs=(),
                batch_axis=False,
                measure=detections_agree(maskrcnn_shown, confidence=FP16_CONFIDENCE),
                limits={**FP16_LIMITS, **(fp16_limits or {})},
            )
    set_metadata(
        onnx_model,
        {
            "task": "segment",
            "format": "maskrcnn",
            "labels": labels,
            "source": source,
            "opset": opset,
            "precision": precision,
        },
    )
    config = {
        "task": "segment",
        "format": "maskrcnn",
        "description": f"Mask R-CNN ({source['architecture']})"
        + (", fp16" if precision == "fp16" else ""),
        "inputs": [{"name": "image", "dtype": "float32", "dims": [3, -1, -1]}],
        "outputs": [
            {"name": "boxes", "dtype": "float32", "dims": [-1, 4]},
            {"name": "labels", "dtype": "int64", "dims": [-1]},
            {"name": "scores", "dtype": "float32", "dims": [-1]},
            {"name": "masks", "dtype": "float32", "dims": [-1, 1, -1, -1]},
        ],
        # normalisation and resizing happen inside the graph; the service only scales to [0, 1]
        "image": {"resize": "fit", "width": max_side, "height": max_side},
        "batching": {"max_batch_size": 0, "max_delay_ms": 0, "max_queue_size": 64},
    }
    write_model_folder(out, onnx_model, config, labels=labels, parity=parity)
    return parity


def export_maskrcnn(
    arch: str,
    out: Path,
    *,
    weights: str | None = None,
    checkpoint: Path | None = None,
    labels: list[str] | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    atol: float = 2e-3,
    min_mask_iou: float = 0.99,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``atol`` applies to boxes and scores; masks are compared by IoU (see check_parity)."""
    if arch not in INSTANCE:
        raise ExportError(f"{arch!r} is not one of {INSTANCE}")
    coco = labels_from_weights(arch, "DEFAULT", [])
    labels = labels or labels_from_weights(arch, weights, coco)
    model = load_model(arch, weights, checkpoint, len(labels), min_size=min_size, max_size=max_size)
    from service.tasks.imaging import decode_image

    samples = []
    for jpeg in sample_images()[:2]:
        img = decode_image(jpeg, max_pixels=10**8).image
        img.thumbnail((max_size, max_size))
        samples.append(
            np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        )
    source = {
        "architecture": arch,
        "weights": weights or (checkpoint.name if checkpoint else "random-init"),
    }
    return export_maskrcnn_model(
        model,
        out,
        labels=labels,
        samples=samples,
        source=source,
        max_side=max_size,
        atol=atol,
        min_mask_iou=min_mask_iou,
        precision=precision,
        fp16_limits=fp16_limits,
    )
