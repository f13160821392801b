"""torchvision image classifiers → ONNX model folders (task ``classify``).

Any ``torchvision.models`` classifier by name (ResNet-50/101/152, VGG-16/19, Inception-v3,
GoogLeNet, MobileNetV2, ...). Weights: torchvision's download (``--weights DEFAULT``), a local
state_dict (``--checkpoint``, e.g. a model you fine-tuned, with ``--labels`` for its classes) or
random init (tests). Preprocessing comes from the architecture's own weight transforms (e.g.
Inception-v3: resize 342, crop 299), so the service feeds the model what it was trained on.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

from export.common import (
    DEFAULT_OPSET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ExportError,
    export_onnx,
    set_metadata,
    write_model_folder,
)
from export.verify import check_parity

log = logging.getLogger("export")


def sample_images() -> list[bytes]:
    """Real photos shipped with scikit-image, as JPEG bytes (the service's own input path)."""
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        buf = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def weights_entry(arch: str, weights: str | None) -> Any:
    """The torchvision weights enum member whose recipe applies: the named one, else the first
    (``IMAGENET1K_V1``, the classic recipe most user checkpoints were trained with)."""
    enum = torchvision.models.get_model_weights(arch)
    if weights is not None:
        return enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    return next(iter(enum))


def preprocess_for(
    arch: str, weights: str | None = None
) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    """(resize_shorter, crop, mean, std) from the weights' own transforms (no download)."""
    try:
        transforms = weights_entry(arch, weights).transforms()
        return (
            int(transforms.resize_size[0]),
            int(transforms.crop_size[0]),
            tuple(transforms.mean),
            tuple(transforms.std),
        )
    except (ValueError, AttributeError, KeyError):  # no registered weights: the ImageNet recipe
        return 256, 224, IMAGENET_MEAN, IMAGENET_STD


def imagenet_labels(arch: str) -> list[str]:
    try:
        return list(weights_entry(arch, None).meta["categories"])
    except (ValueError, AttributeError, KeyError):
        return [str(i) for i in range(1000)]


def build_model(
    arch: str,
    *,
    weights: str | None,
    checkpoint: Path | None,
    num_classes: int | None,
) -> tuple[torch.nn.Module, str]:
    """Returns the model in eval mode and a description of its weights for the metadata."""
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ExportError(
            f"{arch!r} is not a torchvision classifier (torchvision.models.list_models())"
        )
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if arch in ("inception_v3", "googlenet") and weights is None:
        kwargs["init_weights"] = checkpoint is None  # fast init when weights are loaded anyway
        kwargs["aux_logits"] = False
    if weights is not None:
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)
        source = f"torchvision:{arch}:{weights}"
    else:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        source = "random-init"
    if checkpoint is not None:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        # aux classifiers are training-only heads; anything else missing is a real mismatch
        real_missing = [k for k in missing if not k.startswith(("AuxLogits.", "aux1.", "aux2."))]
        if real_missing:
            raise ExportError(f"checkpoint does not fit {arch}: missing {real_missing[:5]}")
        if unexpected and not all(
            k.startswith(("AuxLogits.", "aux1.", "aux2.")) for k in unexpected
        ):
            raise ExportError(f"checkpoint does not fit {arch}: unexpected {unexpected[:5]}")
        source = f"checkpoint:{checkpoint.name}"
    return model.eval(), source


def export_classifier(
    arch: str,
    out: Path,
    *,
    weights: str | None = None,
    checkpoint: Path | None = None,
    labels: list[str] | None = None,
    random_init: bool = False,
    image_size: int | None = None,
    max_batch_size: int = 8,
    max_delay_ms: float = 2.0,
    atol: float = 1e-3,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    from service.runtime.model_config import ImagePreprocessing
    from service.tasks.imaging import ImageProcessor

    if not (weights or checkpoint or random_init):
        raise ExportError("choose --weights DEFAULT, --checkpoint PATH or --random-init")
    num_classes = len(labels) if labels is not None else None
    model, source = build_model(
        arch, weights=weights, checkpoint=checkpoint, num_classes=num_classes
    )
    resize_shorter, crop, mean, std = preprocess_for(arch, weights)
    if image_size is not None:  # smaller inputs for quick tests
        resize_shorter, crop = round(image_size * resize_shorter / crop), image_size
    labels = labels if labels is not None else imagenet_labels(arch)
    image = {
        "resize": "center_crop",
        "resize_shorter": resize_shorter,
        "width": crop,
        "height": crop,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }
    processor = ImageProcessor(ImagePreprocessing.model_validate(image), "input", max_pixels=10**8)
    tensors = [processor.preprocess(jpeg)[0]["input"] for jpeg in sample_images()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_model = export_onnx(
            model,
            (torch.from_numpy(tensors[0][None]),),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset=opset,
        )
        samples = [{"input": tensors[0][None]}, {"input": np.stack(tensors)}]
        parity = check_parity(
            lambda input: model(input), path, samples, atol=atol, rtol=1e-3, name=arch
        )
    classes = len(labels)
    set_metadata(
        onnx_model,
        {
            "task": "classify",
            "format": "classification-logits",
            "labels": labels,
            "input_size": [crop, crop],
            "mean": list(mean),
            "std": list(std),
            "source": {"architecture": arch, "weights": source},
            "opset": opset,
        },
    )
    config = {
        "task": "classify",
        "format": "classification-logits",
        "description": f"torchvision {arch} ({source})",
        "inputs": [{"name": "input", "dtype": "float32", "dims": [3, crop, crop]}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": [classes]}],
        "image": image,
        "batching": {
            "max_batch_size": max_batch_size,
            "max_delay_ms": max_delay_ms,
            "max_queue_size": 512,
        },
    }
    write_model_folder(out, onnx_model, config, labels=labels, parity=parity)
    return parity


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "classifier", help="torchvision image classifier (ResNet, VGG, Inception, MobileNet, ...)"
    )
    p.add_argument(
        "--arch", required=True, help="torchvision.models name, e.g. resnet50, vgg16, inception_v3"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="torchvision weights enum name, e.g. DEFAULT (downloads)")
    source.add_argument(
        "--checkpoint", type=Path, help="a state_dict .pt/.pth of this architecture"
    )
    source.add_argument("--random-init", action="store_true", help="untrained (tests)")
    p.add_argument("--labels", type=Path, help="labels file, one per line (sets the class count)")
    p.add_argument(
        "--image-size", type=int, help="override the crop size (default: the architecture's)"
    )
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--out", type=Path, required=True, help="model folder, e.g. models/resnet50")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    labels = None
    if args.labels is not None:
        labels = [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
    return export_classifier(
        args.arch,
        args.out,
        weights=args.weights,
        checkpoint=args.checkpoint,
        labels=labels,
        random_init=args.random_init,
        image_size=args.image_size,
        max_batch_size=args.max_batch_size,
        opset=args.opset,
    )
