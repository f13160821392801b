"""The demo models' architectures: a compact anchor-free YOLO-style detector whose exported
output uses the Ultralytics v8 layout, and the U-Nets.

The U-Nets are defined in ``export.unet`` (the U-Net exporter rebuilds them from checkpoints, and
export must not import training); they are re-exported here so that training code and users
keep one place for every demo architecture.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from export.unet import MobileUNet, UNet, conv, decode, imagenet_mobilenet_v2

__all__ = [
    "MobileUNet",
    "ShapesYolo",
    "UNet",
    "conv",
    "decode",
    "imagenet_mobilenet_v2",
    "vote_classes",
]


def vote_classes(probs: torch.Tensor) -> torch.Tensor:
    """``float32[B,C,h,w]`` class probabilities (background left out) → the same, each cell
    keeping its own foreground probability (their sum) but taking the class shares of its 3×3
    neighbourhood, each neighbour weighted by its own foreground probability.

    An object covers several cells, and now and then one of them leans to another class; the
    service's class-aware NMS then keeps that cell as a second detection of the other class, and
    these were the most common false positives (most on objects under 48 px, at stride 8).
    Voting makes an object's cells agree. Applied at export only: training fits the cells' own
    predictions.
    """
    foreground = probs.sum(dim=1, keepdim=True)
    shares = F.avg_pool2d(probs, 3, stride=1, padding=1, count_include_pad=False)
    shares = shares / shares.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return foreground * shares


class ShapesYolo(nn.Module):
    """Compact anchor-free detector: a plain strided backbone, an FPN over strides 8/16/32 and one
    head shared by the three levels (objects are assigned to levels by size while training).

    Raw head per cell: ``l, t, r, b`` (log distances from the cell centre, in strides) and
    ``1 + C`` logits (background first). ``forward`` turns it into the Ultralytics v8 layout
    ``float32[B, 4+C, N]``: cx, cy, w, h in input pixels, then the class probabilities of a
    softmax over background and classes, so classes compete for a cell and the service decodes
    it exactly like a YOLOv8 export, with each cell's class shares voted on by its neighbours
    (``vote_classes``) at strides 8 and 16. ``N`` is the cell count of the three levels together.
    """

    strides = (8, 16, 32)
    # where an object spans enough cells for a vote: at stride 32 a large object's neighbouring
    # cells are mostly its rim, and voting there turned some large circles into squares
    voted_strides = (8, 16)

    def __init__(self, classes: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.classes = classes
        self.stem = nn.Sequential(conv(3, w, 2), conv(w, 2 * w, 2))  # /4
        self.c3 = nn.Sequential(conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w))  # /8
        self.c4 = nn.Sequential(conv(4 * w, 6 * w, 2), conv(6 * w, 6 * w))  # /16
        self.c5 = nn.Sequential(conv(6 * w, 8 * w, 2), conv(8 * w, 8 * w), conv(8 * w, 8 * w))
        self.lateral = nn.ModuleList(nn.Conv2d(c, 4 * w, 1) for c in (4 * w, 6 * w, 8 * w))
        self.smooth = nn.ModuleList(conv(4 * w, 4 * w) for _ in self.strides)
        self.box = nn.Sequential(conv(4 * w, 4 * w), nn.Conv2d(4 * w, 4, 1))
        self.cls = nn.Sequential(conv(4 * w, 4 * w), nn.Conv2d(4 * w, 1 + classes, 1))
        head = self.cls[-1]
        assert isinstance(head, nn.Conv2d)
        assert head.bias is not None
        with torch.no_grad():  # start from "background everywhere" (focal-loss prior)
            head.bias.zero_()
            head.bias[0] = 4.0

    def raw(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """→ per level (strides 8, 16, 32): box ``[B,4,h,w]``, logits ``[B,1+C,h,w]``."""
        f3 = self.c3(self.stem(x))
        f4 = self.c4(f3)
        f5 = self.c5(f4)
        p5 = self.lateral[2](f5)
        p4 = self.lateral[1](f4) + F.interpolate(p5, size=f4.shape[-2:], mode="nearest")
        p3 = self.lateral[0](f3) + F.interpolate(p4, size=f3.shape[-2:], mode="nearest")
        levels = [smooth(p) for smooth, p in zip(self.smooth, (p3, p4, p5), strict=True)]
        return [(self.box(p), self.cls(p)) for p in levels]

    def decode_boxes(self, box: torch.Tensor, stride: int) -> torch.Tensor:
        """``[B,4,h,w]`` raw → ``[B,4,h*w]`` x1, y1, x2, y2 in input pixels."""
        b, _, h, w = box.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, dtype=box.dtype), torch.arange(w, dtype=box.dtype), indexing="ij"
        )
        cx, cy = (gx + 0.5) * stride, (gy + 0.5) * stride
        dist = torch.exp(box.clamp(-6.0, 6.0)) * stride
        xyxy = torch.stack(
            [cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], dim=1
        )
        return xyxy.reshape(b, 4, h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for (box, logits), stride in zip(self.raw(x), self.strides, strict=True):
            b = box.shape[0]
            xyxy = self.decode_boxes(box, stride)
            xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
            probs = logits.softmax(dim=1)[:, 1:]
            if stride in self.voted_strides:
                probs = vote_classes(probs)
            probs = probs.reshape(b, self.classes, -1)
            outs.append(torch.cat([xywh, probs], dim=1))
        return torch.cat(outs, dim=2)

    @staticmethod
    def candidates(size: int) -> int:
        """N for a square ``size × size`` input."""
        return sum((size // s) ** 2 for s in ShapesYolo.strides)
