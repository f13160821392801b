"""Train the shapes demo models on CPU (seeded) and export them through the export framework.

Inputs are prepared with the service's own preprocessing (``service.tasks.imaging``), so the
models see in training exactly what the server will feed them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from export.common import export_onnx, set_metadata, write_model_folder
from export.verify import check_parity
from service.runtime.model_config import ImagePreprocessing
from service.tasks.imaging import DecodedImage, input_tensor
from training.models import ShapesYolo, UNet
from training.shapes import CLASSES, SEMANTIC_LABELS, Sample, generate

log = logging.getLogger("training")


def _progress(name: str, step: int, steps: int, loss: float, started: float) -> None:
    if step % 25 == 0 or step == steps:
        elapsed = time.perf_counter() - started
        log.info(
            "%s step %d/%d loss %.4f (%.0f s, eta %.0f s)",
            name,
            step,
            steps,
            loss,
            elapsed,
            elapsed / max(step, 1) * (steps - step),
        )


def _samples(count: int, seed: int) -> list[Sample]:
    return [generate(seed * 7919 + i) for i in range(count)]


# -- U-Net --------------------------------------------------------------------------------------
UNET_SIZE = 256


def unet_batch(
    samples: list[Sample], spec: ImagePreprocessing, flip: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = [], []
    for sample, f in zip(samples, flip, strict=True):
        h, w = sample.semantic.shape
        tensor, geo = input_tensor(DecodedImage(Image.fromarray(sample.image), w, h), spec)
        # the label map goes through the same geometry (nearest, padding = background)
        new_w, new_h = round(w * geo.scale_x), round(h * geo.scale_y)
        target = np.zeros((spec.height, spec.width), np.uint8)
        left, top = int(geo.pad_x), int(geo.pad_y)
        resized = Image.fromarray(sample.semantic).resize((new_w, new_h), Image.Resampling.NEAREST)
        target[top : top + new_h, left : left + new_w] = np.asarray(resized)
        if f:
            tensor, target = tensor[:, :, ::-1], target[:, ::-1]
        images.append(np.ascontiguousarray(tensor))
        targets.append(np.ascontiguousarray(target))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets).astype(np.int64))


def train_unet(
    out: Path, *, steps: int = 900, batch: int = 8, images: int = 400, seed: int = 0
) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = ImagePreprocessing(resize="letterbox", width=UNET_SIZE, height=UNET_SIZE, pad_value=114)
    data = _samples(images, seed=1)
    model = UNet(classes=len(SEMANTIC_LABELS), base=12)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.15)
    weights = torch.tensor([0.5, 1.0, 1.0, 1.0])
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(data), batch)
        x, y = unet_batch([data[i] for i in idx], spec, rng.random(batch) < 0.5)
        logits = model(x)
        loss = F.cross_entropy(logits, y, weight=weights) + _dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        _progress("shapes-unet", step, steps, loss.item(), started)
    model.eval()
    image_cfg = {"resize": "letterbox", "width": UNET_SIZE, "height": UNET_SIZE, "pad_value": 114}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        x, _ = unet_batch(_samples(3, seed=2), spec, np.zeros(3, bool))
        onnx_model = export_onnx(
            model,
            (x[:1],),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        parity = check_parity(
            lambda input: model(input),
            path,
            [{"input": x[:1].numpy()}, {"input": x.numpy()}],
            atol=1e-3,
            rtol=1e-3,
            name="shapes-unet",
        )
    set_metadata(
        onnx_model,
        {
            "task": "segment",
            "format": "semantic-logits",
            "labels": SEMANTIC_LABELS,
            "input_size": [UNET_SIZE, UNET_SIZE],
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "source": {
                "architecture": "unet",
                "weights": f"trained: shapes, {steps} steps, seed {seed}",
            },
            "opset": 17,
        },
    )
    config = {
        "task": "segment",
        "format": "semantic-logits",
        "description": "U-Net trained on synthetic shapes (background, circle, square, triangle)",
        "inputs": [{"name": "input", "dtype": "float32", "dims": [3, UNET_SIZE, UNET_SIZE]}],
        "outputs": [
            {
                "name": "logits",
                "dtype": "float32",
                "dims": [len(SEMANTIC_LABELS), UNET_SIZE, UNET_SIZE],
            }
        ],
        "image": image_cfg,
        "batching": {"max_batch_size": 8, "max_delay_ms": 2, "max_queue_size": 256},
    }
    write_model_folder(out, onnx_model, config, labels=SEMANTIC_LABELS, parity=parity)
    return parity


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    union = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (union + 1)).mean()


# -- YOLO-style detector ------------------------------------------------------------------------
YOLO_SIZE = 384


def yolo_batch(
    samples: list[Sample], spec: ImagePreprocessing, flip: np.ndarray
) -> tuple[torch.Tensor, list[tuple[np.ndarray, np.ndarray]]]:
    images, targets = [], []
    for sample, f in zip(samples, flip, strict=True):
        h, w = sample.semantic.shape
        tensor, geo = input_tensor(DecodedImage(Image.fromarray(sample.image), w, h), spec)
        boxes = sample.boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]] * geo.scale_x + geo.pad_x
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * geo.scale_y + geo.pad_y
        if f:
            tensor = tensor[:, :, ::-1]
            boxes[:, [0, 2]] = spec.width - boxes[:, [2, 0]]
        images.append(np.ascontiguousarray(tensor))
        targets.append((boxes, sample.classes))
    return torch.from_numpy(np.stack(images)), targets


def yolo_targets(
    targets: list[tuple[np.ndarray, np.ndarray]], grid: int, stride: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class map ``[B,C,g,g]``, box targets ``[B,4,g,g]`` (x1,y1,x2,y2 input px) and a positive
    mask ``[B,g,g]``: the 3×3 cells around each object's centre that lie inside its box; where
    objects compete for a cell the smaller one wins."""
    b = len(targets)
    cls_map = torch.zeros(b, classes, grid, grid)
    box_map = torch.zeros(b, 4, grid, grid)
    pos = torch.zeros(b, grid, grid, dtype=torch.bool)
    for i, (boxes, labels) in enumerate(targets):
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for k in np.argsort(-areas):  # large first, so smaller objects overwrite shared cells
            x1, y1, x2, y2 = boxes[k]
            gx, gy = int((x1 + x2) / 2 / stride), int((y1 + y2) / 2 / stride)
            for yy in range(gy - 1, gy + 2):
                for xx in range(gx - 1, gx + 2):
                    if not (0 <= xx < grid and 0 <= yy < grid):
                        continue
                    inside = x1 <= (xx + 0.5) * stride <= x2 and y1 <= (yy + 0.5) * stride <= y2
                    if not inside and (xx, yy) != (gx, gy):
                        continue
                    cls_map[i, :, yy, xx] = 0
                    cls_map[i, int(labels[k]), yy, xx] = 1
                    box_map[i, :, yy, xx] = torch.tensor([x1, y1, x2, y2])
                    pos[i, yy, xx] = True
    return cls_map, box_map, pos


def train_yolo(
    out: Path, *, steps: int = 700, batch: int = 12, images: int = 600, seed: int = 0
) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = ImagePreprocessing(resize="letterbox", width=YOLO_SIZE, height=YOLO_SIZE, pad_value=114)
    data = _samples(images, seed=3)
    model = ShapesYolo(classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    grid, stride = YOLO_SIZE // ShapesYolo.stride, ShapesYolo.stride
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(data), batch)
        x, targets = yolo_batch([data[i] for i in idx], spec, rng.random(batch) < 0.5)
        cls_t, box_t, pos = yolo_targets(targets, grid, stride, len(CLASSES))
        box_raw, cls_raw = model.raw(x)
        n_pos = max(1, int(pos.sum()))
        cls_loss = sigmoid_focal_loss(cls_raw, cls_t, reduction="sum") / n_pos
        decoded = model.decode(box_raw, cls_raw)[:, :4]  # [B,4,N] cx,cy,w,h
        pred = decoded.permute(0, 2, 1).reshape(-1, 4)[pos.reshape(-1)]
        pred_xyxy = torch.cat([pred[:, :2] - pred[:, 2:] / 2, pred[:, :2] + pred[:, 2:] / 2], 1)
        tgt_xyxy = box_t.permute(0, 2, 3, 1).reshape(-1, 4)[pos.reshape(-1)]
        giou = generalized_box_iou_loss(pred_xyxy, tgt_xyxy, reduction="mean")
        l1 = F.l1_loss(pred_xyxy, tgt_xyxy) / stride
        loss = cls_loss + 2.0 * giou + 0.5 * l1
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        _progress("shapes-yolo", step, steps, loss.item(), started)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        x, _ = yolo_batch(_samples(3, seed=4), spec, np.zeros(3, bool))
        onnx_model = export_onnx(
            model,
            (x[:1],),
            path,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        )
        parity = check_parity(
            lambda images: model(images),
            path,
            [{"images": x[:1].numpy()}, {"images": x.numpy()}],
            atol=1e-2,
            rtol=1e-3,
            name="shapes-yolo",
        )
    n = grid * grid
    set_metadata(
        onnx_model,
        {
            "task": "detect",
            "format": "yolov8",
            "labels": CLASSES,
            "stride": stride,
            "input_size": [YOLO_SIZE, YOLO_SIZE],
            "source": {
                "architecture": "shapes-yolo (anchor-free, stride 8)",
                "weights": f"trained: shapes, {steps} steps, seed {seed}",
            },
            "opset": 17,
        },
    )
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
            "stride": stride,
            "pad_value": 114,
        },
        "batching": {"max_batch_size": 8, "max_delay_ms": 2, "max_queue_size": 256},
    }
    write_model_folder(out, onnx_model, config, labels=CLASSES, parity=parity)
    return parity


def train_maskrcnn(out: Path, **kwargs: Any) -> dict[str, Any]:
    from training.maskrcnn import train_maskrcnn as train

    return train(out, **kwargs)


TRAINERS: dict[str, Callable[..., dict[str, Any]]] = {
    "shapes-unet": train_unet,
    "shapes-yolo": train_yolo,
    "shapes-maskrcnn": train_maskrcnn,
}
