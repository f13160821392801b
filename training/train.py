"""Train the shapes demo models on CPU (seeded) and export them through the export framework.

Inputs are prepared once with the service's own preprocessing (``service.tasks.imaging``, the
letterbox the server applies), so the models see in training exactly what the server feeds them.
Each step draws a batch from that pool and applies one of the eight flips/transposes of the
square input (the shapes have no preferred orientation), with the targets moved alike.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.ops import generalized_box_iou_loss

from export.common import export_onnx, set_metadata, write_model_folder
from export.segmentation import export_unet_model
from export.verify import check_parity
from service.model_config import ImagePreprocessing
from service.tasks.imaging import DecodedImage, input_tensor
from training.common import Progress, dihedral, one_cycle, samples, save_checkpoint, varied_samples
from training.maskrcnn import train_maskrcnn
from training.models import MobileUNet, ShapesYolo
from training.shapes import CLASSES, SEMANTIC_LABELS, VARIED_BACKGROUNDS, Sample

PAD_VALUE = 114  # letterbox border, as Ultralytics pads


@dataclass(frozen=True)
class Letterboxed:
    """A pool of samples after the service's letterbox: ``images uint8[N,S,S,3]``, per sample
    ``boxes float32[k,4]`` (input pixels) and ``classes int64[k]``, ``semantic uint8[N,S,S]``."""

    images: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]
    semantic: np.ndarray


def letterbox_pool(pool: Iterable[Sample], size: int) -> Letterboxed:
    """Each sample as the server would letterbox it (a generator is consumed one at a time)."""
    # scale 1: the tensor holds the exact resized pixel values, kept as uint8 to save memory
    spec = ImagePreprocessing(
        resize="letterbox", width=size, height=size, pad_value=PAD_VALUE, scale=1.0
    )
    images, semantic, boxes, classes = [], [], [], []
    for sample in pool:
        h, w = sample.semantic.shape
        tensor, geo = input_tensor(DecodedImage(Image.fromarray(sample.image), w, h), spec)
        images.append(tensor.transpose(1, 2, 0).astype(np.uint8))
        # the label map goes through the same geometry (nearest; padding is background)
        new_w, new_h = round(w * geo.scale_x), round(h * geo.scale_y)
        left, top = int(geo.pad_x), int(geo.pad_y)
        resized = Image.fromarray(sample.semantic).resize((new_w, new_h), Image.Resampling.NEAREST)
        label_map = np.zeros((size, size), np.uint8)
        label_map[top : top + new_h, left : left + new_w] = np.asarray(resized)
        semantic.append(label_map)
        b = sample.boxes.copy()
        b[:, [0, 2]] = b[:, [0, 2]] * geo.scale_x + geo.pad_x
        b[:, [1, 3]] = b[:, [1, 3]] * geo.scale_y + geo.pad_y
        boxes.append(b)
        classes.append(sample.classes)
    return Letterboxed(
        np.stack(images).reshape(-1, size, size, 3),
        boxes,
        classes,
        np.stack(semantic).reshape(-1, size, size),
    )


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 ``[S,S,3]`` images → ``float32[B,3,S,S]`` in [0, 1] (the service's scaling)."""
    batch = np.stack([np.ascontiguousarray(i) for i in images]).transpose(0, 3, 1, 2)
    return torch.from_numpy(batch.astype(np.float32) / 255.0)


# -- U-Net --------------------------------------------------------------------------------------
UNET_SIZE = 256


def train_unet(
    out: Path,
    *,
    steps: int = 300,
    batch: int = 8,
    images: int = 400,
    seed: int = 0,
    checkpoint: Path | None = None,
    pretrained: bool = True,
) -> dict[str, Any]:
    """U-Net over an ImageNet MobileNetV2 encoder (``training.models.MobileUNet``): a
    from-scratch U-Net of the same cost reached only 0.36 mIoU after 600 steps, this one 0.94
    after 300 (held-out shapes; see docs/detection-segmentation.md)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = letterbox_pool(samples(images, seed=1), UNET_SIZE)
    model = MobileUNet(classes=len(SEMANTIC_LABELS), pretrained=pretrained)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = one_cycle(opt, 2e-3, steps, warmup=0.15)
    weights = torch.tensor([0.5, 1.0, 1.0, 1.0])
    progress = Progress("shapes-unet", steps)
    model.train()
    for step in range(1, steps + 1):
        xs, ys = [], []
        for i, k in zip(
            rng.integers(0, len(pool.images), batch), rng.integers(0, 8, batch), strict=True
        ):
            image, target, _ = dihedral(pool.images[i], pool.semantic[i], None, int(k))
            assert target is not None
            xs.append(image)
            ys.append(np.ascontiguousarray(target))
        x = to_tensor(xs).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack(ys).astype(np.int64))
        logits = model(x)
        loss = F.cross_entropy(logits, y, weight=weights) + _dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        progress.step(step, loss.item())
    model = model.to(memory_format=torch.contiguous_format).eval()
    save_checkpoint(
        checkpoint, model, arch="unet_mobilenet_v2", labels=SEMANTIC_LABELS, steps=steps, seed=seed
    )
    check = letterbox_pool(samples(3, seed=2), UNET_SIZE)
    return export_unet_model(
        model,
        out,
        labels=SEMANTIC_LABELS,
        size=UNET_SIZE,
        samples=to_tensor(list(check.images)).numpy(),
        source={
            "architecture": "unet_mobilenet_v2",
            "weights": f"trained: shapes, {steps} steps, seed {seed}; encoder ImageNet",
        },
        description=(
            "U-Net (MobileNetV2 encoder) trained on synthetic shapes "
            "(background, circle, square, triangle)"
        ),
    )


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    union = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (union + 1)).mean()


# -- YOLO-style detector ------------------------------------------------------------------------
YOLO_SIZE = 352
TRAIN_SIZE = 256  # a multiple of the largest stride, 32
# Object sizes (longer box side, input pixels) each level learns; the ranges overlap so that
# objects near a boundary are learnt by both levels.
LEVEL_RANGES = ((0.0, 64.0), (48.0, 128.0), (96.0, 1e9))
CENTRE_RADIUS = 1.5  # positive cells: centres within this many strides of the object's centre


@dataclass(frozen=True)
class LevelTargets:
    """For one level: ``classes int64[B,h,w]`` (0 background, class + 1), ``boxes
    float32[B,4,h,w]`` x1,y1,x2,y2 in input pixels, ``positive bool[B,h,w]``."""

    classes: torch.Tensor
    boxes: torch.Tensor
    positive: torch.Tensor


def yolo_targets(
    boxes: list[np.ndarray], classes: list[np.ndarray], size: int
) -> list[LevelTargets]:
    """Assign each object to the levels whose size range holds it, and there to the cells whose
    centres lie inside its box and within ``CENTRE_RADIUS`` strides of its centre (at least the
    cell holding the centre). Where objects compete for a cell, the smaller one wins."""
    levels = []
    for stride, (low, high) in zip(ShapesYolo.strides, LEVEL_RANGES, strict=True):
        grid = size // stride
        centres = (np.arange(grid) + 0.5) * stride
        cls_map = np.zeros((len(boxes), grid, grid), np.int64)
        box_map = np.zeros((len(boxes), 4, grid, grid), np.float32)
        for i, (b, c) in enumerate(zip(boxes, classes, strict=True)):
            areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            for k in np.argsort(-areas):  # large first: smaller objects overwrite shared cells
                x1, y1, x2, y2 = b[k]
                if not low <= max(x2 - x1, y2 - y1) <= high:
                    continue
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                in_x = (
                    (np.abs(centres - cx) < CENTRE_RADIUS * stride)
                    & (centres > x1)
                    & (centres < x2)
                )
                in_y = (
                    (np.abs(centres - cy) < CENTRE_RADIUS * stride)
                    & (centres > y1)
                    & (centres < y2)
                )
                cells = in_y[:, None] & in_x[None, :]
                if not cells.any():
                    gx = min(int(cx // stride), grid - 1)
                    gy = min(int(cy // stride), grid - 1)
                    cells[gy, gx] = True
                cls_map[i][cells] = int(c[k]) + 1
                box_map[i][:, cells] = b[k][:, None]
        cls_t = torch.from_numpy(cls_map)
        levels.append(LevelTargets(cls_t, torch.from_numpy(box_map), cls_t > 0))
    return levels


def yolo_loss(
    model: ShapesYolo, raw: list[tuple[torch.Tensor, torch.Tensor]], targets: list[LevelTargets]
) -> torch.Tensor:
    """Softmax focal loss over background + classes on every cell (normalised by the number of
    positives) + GIoU and stride-normalised L1 on the positive cells' boxes."""
    cls_terms, giou_terms, l1_terms = [], [], []
    n_pos = max(1, sum(int(t.positive.sum()) for t in targets))
    for (box_raw, logits), target, stride in zip(raw, targets, model.strides, strict=True):
        ce = F.cross_entropy(logits, target.classes, reduction="none")
        cls_terms.append(((1 - torch.exp(-ce)) ** 2 * ce).sum())
        pos = target.positive.reshape(-1)
        if not pos.any():
            continue
        pred = model.decode_boxes(box_raw, stride).permute(0, 2, 1).reshape(-1, 4)[pos]
        want = target.boxes.permute(0, 2, 3, 1).reshape(-1, 4)[pos]
        giou_terms.append(generalized_box_iou_loss(pred, want, reduction="sum"))
        l1_terms.append((pred - want).abs().sum() / (4 * stride))
    cls_loss = torch.stack(cls_terms).sum() / n_pos
    giou = torch.stack(giou_terms).sum() / n_pos
    l1 = torch.stack(l1_terms).sum() / n_pos
    return cls_loss + 2.0 * giou + 0.5 * l1


def train_yolo(
    out: Path,
    *,
    steps: int = 1700,
    batch: int = 8,
    images: int = 1000,
    seed: int = 0,
    checkpoint: Path | None = None,
    ema_decay: float = 0.995,
) -> dict[str, Any]:
    """The detector on ``varied_samples``: a pool of ``images`` on varied backgrounds (one in
    five of them small, for large objects), ``steps`` batches drawn from it.

    The varied backgrounds need about twice the image passes the plain ones did (800 × 8 left
    held-out precision at 0.65). They cost about 1.2× the former training time: the pool is
    drawn at ``TRAIN_SIZE`` (the fully convolutional model does not care) from pictures smaller
    by the same factor, so each shape keeps the size in input pixels it has when served at
    ``YOLO_SIZE`` while an image costs half; channels-last tensors (oneDNN's faster convolution
    layout); and the exported weights are an average over the last few hundred steps
    (``ema_decay``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = letterbox_pool(varied_samples(images, seed=3, scale=TRAIN_SIZE / YOLO_SIZE), TRAIN_SIZE)
    model = ShapesYolo(classes=len(CLASSES)).to(memory_format=torch.channels_last)
    ema = WeightAverage(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = one_cycle(opt, 3e-3, steps)
    progress = Progress("shapes-yolo", steps)
    model.train()
    for step in range(1, steps + 1):
        xs, bs, cs = [], [], []
        for i, k in zip(
            rng.integers(0, len(pool.images), batch), rng.integers(0, 8, batch), strict=True
        ):
            image, _, b = dihedral(pool.images[i], None, pool.boxes[i], int(k))
            assert b is not None
            xs.append(image)
            bs.append(b)
            cs.append(pool.classes[i])
        x = to_tensor(xs).contiguous(memory_format=torch.channels_last)
        loss = yolo_loss(model, model.raw(x), yolo_targets(bs, cs, TRAIN_SIZE))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        ema.update(model, step)
        progress.step(step, loss.item())
    model = ema.model.to(memory_format=torch.contiguous_format).eval()
    save_checkpoint(
        checkpoint,
        model,
        arch="shapes-yolo",
        labels=CLASSES,
        steps=steps,
        seed=seed,
        backgrounds=list(VARIED_BACKGROUNDS),
    )
    return export_shapes_yolo(model, out, steps=steps, seed=seed)


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics, with the
    decay ramped up from 0 over the first steps (early weights are soon forgotten)."""

    def __init__(self, model: ShapesYolo, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: ShapesYolo, step: int) -> None:
        d = self.decay * (1 - math.exp(-step / 100))
        live = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(live[name].detach(), alpha=1 - d)
            else:
                value.copy_(live[name])


def export_shapes_yolo(model: ShapesYolo, out: Path, *, steps: int, seed: int) -> dict[str, Any]:
    """ONNX ``images float32[B,3,S,S]`` → ``output0 float32[B,4+C,N]`` (Ultralytics v8 layout)."""
    check = to_tensor(list(letterbox_pool(samples(3, seed=4), YOLO_SIZE).images))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx_model = export_onnx(
            model,
            (check[:1],),
            path,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        )
        parity = check_parity(
            lambda images: model(images),
            path,
            [{"images": check[:1].numpy()}, {"images": check.numpy()}],
            atol=1e-2,  # box coordinates are pixels (up to hundreds); scores agree to ~1e-6
            rtol=1e-4,
            name=out.name,
        )
    set_metadata(
        onnx_model,
        {
            "task": "detect",
            "format": "yolov8",
            "labels": CLASSES,
            "stride": max(ShapesYolo.strides),
            "input_size": [YOLO_SIZE, YOLO_SIZE],
            "source": {
                "architecture": "shapes-yolo (anchor-free, strides 8/16/32)",
                "weights": f"trained: shapes on varied backgrounds, {steps} steps, seed {seed}",
            },
            "opset": 17,
        },
    )
    n = ShapesYolo.candidates(YOLO_SIZE)
    config = {
        "task": "detect",
        "format": "yolov8",
        "description": "compact YOLO-style detector trained on synthetic shapes (Ultralytics v8 output layout)",
        "inputs": [{"name": "images", "dtype": "float32", "dims": [3, YOLO_SIZE, YOLO_SIZE]}],
        "outputs": [{"name": "output0", "dtype": "float32", "dims": [4 + len(CLASSES), n]}],
        "image": {
            "resize": "letterbox",
            "width": YOLO_SIZE,
            "height": YOLO_SIZE,
            "stride": max(ShapesYolo.strides),
            "pad_value": PAD_VALUE,
        },
        "batching": {"max_batch_size": 8, "max_delay_ms": 2, "max_queue_size": 256},
    }
    write_model_folder(out, onnx_model, config, labels=CLASSES, parity=parity)
    return parity


TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "shapes-unet": train_unet,
    "shapes-yolo": train_yolo,
    "shapes-maskrcnn": train_maskrcnn,
}
