"""torchvision segmenters → ONNX model folders (task ``segment``).

Semantic: FCN-ResNet50/101, DeepLabV3 (ResNet-50/101, MobileNetV3-Large) — output ``logits
float32[B, C, H, W]`` (the ``out`` head; the auxiliary head is training-only), letterboxed input.
U-Net (``export.unet.UNet`` or ``MobileUNet``): the same semantic layout, from a checkpoint
trained with it (``python -m training shapes-unet``).
Instance: Mask R-CNN ResNet-50 FPN v1 and v2, in ``export.maskrcnn``; this module's ``segmenter``
command exports all three.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.classifiers import sample_images
from export.common import (
    DEFAULT_OPSET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ExportError,
    add_out_argument,
    add_precision_argument,
    export_onnx,
    serving_processor,
    set_metadata,
    write_model_folder,
)
from export.fp16 import class_maps_agree, to_fp16
from export.labels import VOC_LABELS
from export.maskrcnn import INSTANCE, export_maskrcnn
from export.quantize import add_quantize_arguments
from export.torchvision_models import labels_from_weights, load_model
from export.unet import MobileUNet, UNet
from export.verify import check_parity

log = logging.getLogger("export")
# fp16 against fp32: the class map a client gets (argmax of the logits) agrees on at least 99 %
# of the pixels of every image; raw logits within 2 % of the fp32 range. See docs/export.md.
FP16_LIMITS = {"min_pixel_agreement": 0.99}
SEMANTIC = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
)


class SemanticOut(torch.nn.Module):
    """torchvision segmentation model → its main ``out`` logits only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(input)["out"]
        return out


def export_semantic(
    arch: str,
    out: Path,
    *,
    weights: str | None = None,
    checkpoint: Path | None = None,
    labels: list[str] | None = None,
    size: int = 520,
    max_batch_size: int = 4,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    if arch not in SEMANTIC:
        raise ExportError(f"{arch!r} is not one of {SEMANTIC}")
    labels = labels or labels_from_weights(arch, weights, VOC_LABELS)
    model = SemanticOut(load_model(arch, weights, checkpoint, len(labels), aux_loss=False)).eval()
    image = {
        "resize": "letterbox",
        "width": size,
        "height": size,
        "pad_value": 0,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    description = f"torchvision {arch}"
    config = semantic_config(
        labels=labels,
        image=image,
        description=description,
        max_batch_size=max_batch_size,
        max_queue_size=128,
        precision=precision,
    )
    tensors = serving_samples(config, labels, name=out.name)
    return export_semantic_model(
        model,
        out,
        labels=labels,
        samples=tensors,
        image=image,
        source={
            "architecture": arch,
            "weights": weights or (checkpoint.name if checkpoint else "random-init"),
        },
        description=description,
        max_batch_size=max_batch_size,
        max_queue_size=128,
        opset=opset,
        precision=precision,
        fp16_limits=fp16_limits,
    )


def semantic_config(
    *,
    labels: list[str],
    image: dict[str, Any],
    description: str,
    max_batch_size: int,
    max_queue_size: int,
    precision: str,
) -> dict[str, Any]:
    """The ``config.yaml`` of a semantic segmenter: ``input float32[B,3,H,W]`` prepared as
    ``image`` says → ``logits float32[B,C,H,W]``."""
    height, width = int(image["height"]), int(image["width"])
    return {
        "task": "segment",
        "format": "semantic-logits",
        "description": description + (", fp16" if precision == "fp16" else ""),
        "inputs": [{"name": "input", "dtype": "float32", "dims": [3, height, width]}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": [len(labels), height, width]}],
        "image": image,
        "batching": {
            "max_batch_size": max_batch_size,
            "max_delay_ms": 2,
            "max_queue_size": max_queue_size,
        },
    }


def serving_samples(config: dict[str, Any], labels: list[str], *, name: str) -> np.ndarray:
    """Two real photos as the service prepares them for the model ``config`` describes (its
    processor, from the one factory): ``float32[2,3,H,W]``."""
    from service.tasks.segmentation import SegmentProcessor

    processor = serving_processor(config, SegmentProcessor, name=name, labels=labels)
    return np.stack([processor.prepare(j)[0]["input"] for j in sample_images()[:2]])


def export_semantic_model(
    model: torch.nn.Module,
    out: Path,
    *,
    labels: list[str],
    samples: np.ndarray,
    image: dict[str, Any],
    source: dict[str, str],
    description: str,
    max_batch_size: int = 8,
    max_queue_size: int = 256,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Export a semantic segmenter (eval mode) taking ``input float32[B,3,H,W]`` as ``image``
    (the service's preprocessing config) prepares it, returning ``logits float32[B,C,H,W]``;
    parity at batch 1 and on all of ``samples float32[n,3,H,W]`` (n ≥ 2). ``precision="fp16"``
    then converts it (IO stays float32) and checks it against fp32 with ``fp16_limits``
    (default :data:`FP16_LIMITS`)."""
    height, width = int(image["height"]), int(image["width"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_model = export_onnx(
            model,
            (torch.from_numpy(samples[:1]),),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset=opset,
        )
        feeds = [{"input": samples[:1]}, {"input": samples}]
        parity = check_parity(
            lambda input: model(input), path, feeds, atol=1e-3, rtol=1e-3, name=out.name
        )
        if precision == "fp16":
            parity["fp16"], onnx_model = to_fp16(
                path,
                feeds,
                name=out.name,
                measure=class_maps_agree(lambda outputs, _: outputs["logits"].argmax(0)),
                limits={**FP16_LIMITS, **(fp16_limits or {})},
            )
    set_metadata(
        onnx_model,
        {
            "task": "segment",
            "format": "semantic-logits",
            "labels": labels,
            "input_size": [height, width],
            "mean": image.get("mean", [0.0, 0.0, 0.0]),
            "std": image.get("std", [1.0, 1.0, 1.0]),
            "source": source,
            "opset": opset,
            "precision": precision,
        },
    )
    config = semantic_config(
        labels=labels,
        image=image,
        description=description,
        max_batch_size=max_batch_size,
        max_queue_size=max_queue_size,
        precision=precision,
    )
    write_model_folder(out, onnx_model, config, labels=labels, parity=parity)
    return parity


def unet_image(size: int) -> dict[str, Any]:
    """The U-Nets' preprocessing: letterbox to ``size``², pad 114, RGB /255, no mean/std."""
    return {"resize": "letterbox", "width": size, "height": size, "pad_value": 114}


def export_unet_model(
    model: torch.nn.Module,
    out: Path,
    *,
    labels: list[str],
    size: int,
    samples: np.ndarray,
    source: dict[str, str],
    description: str = "U-Net",
    max_batch_size: int = 8,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A U-Net (``export.unet.UNet`` or ``MobileUNet``) as a semantic model folder."""
    return export_semantic_model(
        model,
        out,
        labels=labels,
        samples=samples,
        image=unet_image(size),
        source=source,
        description=description,
        max_batch_size=max_batch_size,
        opset=opset,
        precision=precision,
        fp16_limits=fp16_limits,
    )


def load_unet(checkpoint: Path) -> tuple[torch.nn.Module, list[str] | None]:
    """An ``export.unet.UNet`` or ``MobileUNet`` from a checkpoint: a bare state_dict or
    ``{"state_dict": ..., "labels": [...]}`` (what ``python -m training shapes-unet`` saves).
    The architecture, widths and class count are read from the weights' names and shapes."""
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ExportError(f"{checkpoint}: expected a state_dict or a dict holding one")
    labels = state.get("labels")
    weights = state.get("state_dict", state)
    try:
        if "encoder.0.0.weight" in weights:  # MobileUNet
            model: torch.nn.Module = MobileUNet.from_state_dict(weights)
        else:
            model = UNet.from_state_dict(weights)
    except (KeyError, RuntimeError) as exc:
        raise ExportError(f"{checkpoint}: not a UNet/MobileUNet state_dict ({exc})") from None
    return model.eval(), (list(labels) if labels else None)


def export_unet(
    checkpoint: Path | None,
    out: Path,
    *,
    labels: list[str] | None = None,
    size: int = 256,
    classes: int = 4,
    max_batch_size: int = 8,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A U-Net checkpoint (or, with ``checkpoint=None``, a randomly initialised one) → model
    folder; parity on real photos letterboxed as the service will feed them."""
    if size % 32:
        raise ExportError(f"U-Net input size must be a multiple of 32, got {size}")
    if checkpoint is None:
        model: torch.nn.Module = UNet(classes=len(labels) if labels else classes).eval()
        stored = None
    else:
        model, stored = load_unet(checkpoint)
    head = model.head
    assert isinstance(head, torch.nn.Conv2d)
    labels = labels or stored or [f"class{i}" for i in range(head.out_channels)]
    if len(labels) != head.out_channels:
        raise ExportError(f"{len(labels)} labels for a U-Net with {head.out_channels} classes")
    config = semantic_config(
        labels=labels,
        image=unet_image(size),
        description="U-Net",
        max_batch_size=max_batch_size,
        max_queue_size=256,
        precision=precision,
    )
    tensors = serving_samples(config, labels, name=out.name)
    return export_unet_model(
        model,
        out,
        labels=labels,
        size=size,
        samples=tensors,
        source={
            "architecture": "unet",
            "weights": checkpoint.name if checkpoint else "random-init",
        },
        max_batch_size=max_batch_size,
        precision=precision,
        fp16_limits=fp16_limits,
    )


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "segmenter", help="torchvision FCN / DeepLabV3 / Mask R-CNN, or the project's U-Net"
    )
    p.add_argument("--arch", required=True, choices=[*SEMANTIC, *INSTANCE, "unet"])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="torchvision weights name, e.g. DEFAULT (downloads)")
    source.add_argument("--checkpoint", type=Path, help="a state_dict (.pt/.pth) of --arch")
    source.add_argument("--random-init", action="store_true")
    p.add_argument("--labels", type=Path, help="one per line; index 0 is background")
    p.add_argument("--size", type=int, help="semantic: square input size (default 520; U-Net 256)")
    p.add_argument("--classes", type=int, default=4, help="U-Net --random-init: class count")
    p.add_argument(
        "--min-size", type=int, default=800, help="Mask R-CNN: internal resize (shorter side)"
    )
    p.add_argument(
        "--max-size", type=int, default=1333, help="Mask R-CNN: internal resize (longer side)"
    )
    add_precision_argument(p)
    add_out_argument(p)
    p.set_defaults(run=_run)
    add_quantize_arguments(p)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    labels = (
        [x.strip() for x in args.labels.read_text().splitlines() if x.strip()]
        if args.labels
        else None
    )
    if args.arch == "unet":
        if args.weights:
            raise ExportError("the U-Net has no published weights: use --checkpoint")
        return export_unet(
            args.checkpoint,
            args.out,
            labels=labels,
            size=args.size or 256,
            classes=args.classes,
            precision=args.precision,
        )
    if args.arch in SEMANTIC:
        return export_semantic(
            args.arch,
            args.out,
            weights=args.weights,
            checkpoint=args.checkpoint,
            labels=labels,
            size=args.size or 520,
            precision=args.precision,
        )
    return export_maskrcnn(
        args.arch,
        args.out,
        weights=args.weights,
        checkpoint=args.checkpoint,
        labels=labels,
        min_size=args.min_size,
        max_size=args.max_size,
        precision=args.precision,
    )
