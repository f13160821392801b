"""The demo models' architectures: a small U-Net and a compact anchor-free YOLO-style detector
whose exported output uses the Ultralytics v8 layout."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True)
    )


class UNet(nn.Module):
    """U-Net (double convs, max-pool down, bilinear up + skip concat) behind a stride-2 stem.

    The stem halves the resolution the U-Net works at (a quarter of the compute, twice the
    receptive field); the logits are upsampled back bilinearly.
    ``float32[B,3,H,W]`` (H, W multiples of 32) → logits ``float32[B,classes,H,W]``.
    """

    def __init__(self, classes: int = 4, base: int = 16) -> None:
        super().__init__()
        widths = [base, base * 2, base * 4, base * 8, base * 8]
        self.stem = conv(3, base, 2)
        self.down = nn.ModuleList()
        cin = base
        for w in widths:
            self.down.append(nn.Sequential(conv(cin, w), conv(w, w)))
            cin = w
        self.up = nn.ModuleList()
        for skip, w in zip(reversed(widths[:-1]), reversed(widths[:-1]), strict=True):
            self.up.append(nn.Sequential(conv(cin + skip, w), conv(w, w)))
            cin = w
        self.head = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits: torch.Tensor = F.interpolate(
            self.head(x), size=size, mode="bilinear", align_corners=False
        )
        return logits


class ShapesYolo(nn.Module):
    """Anchor-free, one output level at stride 8 fed by stride 8/16/32 features (FPN-lite).

    Raw head per cell: ``dx, dy, log w/stride, log h/stride, class logits``. ``decode`` turns it
    into the Ultralytics v8 layout ``float32[B, 4+C, N]``: cx, cy, w, h in input pixels, then
    sigmoid class scores — so the service decodes it exactly like a YOLOv8 export.
    """

    stride = 8

    def __init__(self, classes: int = 3, width: int = 32) -> None:
        super().__init__()
        w = width
        self.classes = classes
        self.stem = nn.Sequential(conv(3, w // 2, 2), conv(w // 2, w, 2), conv(w, w))  # /4
        self.s8 = nn.Sequential(conv(w, 2 * w, 2), conv(2 * w, 2 * w))  # /8
        self.s16 = nn.Sequential(conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w))  # /16
        self.s32 = nn.Sequential(conv(4 * w, 4 * w, 2), conv(4 * w, 4 * w))  # /32
        self.lat32 = nn.Conv2d(4 * w, 2 * w, 1)
        self.lat16 = nn.Conv2d(4 * w, 2 * w, 1)
        self.merge = nn.Sequential(conv(2 * w, 2 * w), conv(2 * w, 2 * w))
        self.box = nn.Sequential(conv(2 * w, 2 * w), nn.Conv2d(2 * w, 4, 1))
        self.cls = nn.Sequential(conv(2 * w, 2 * w), nn.Conv2d(2 * w, classes, 1))
        head = self.cls[-1]
        assert isinstance(head, nn.Conv2d)
        assert head.bias is not None
        nn.init.constant_(head.bias, -4.0)  # start from "nothing here" (focal-loss prior)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """→ box ``[B,4,h,w]``, class logits ``[B,C,h,w]`` at stride 8."""
        f8 = self.s8(self.stem(x))
        f16 = self.s16(f8)
        f32 = self.s32(f16)
        top = F.interpolate(self.lat32(f32), size=f16.shape[-2:], mode="nearest") + self.lat16(f16)
        p8 = self.merge(F.interpolate(top, size=f8.shape[-2:], mode="nearest") + f8)
        return self.box(p8), self.cls(p8)

    def decode(self, box: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        b, _, h, w = box.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, dtype=box.dtype), torch.arange(w, dtype=box.dtype), indexing="ij"
        )
        cx = (gx + 0.5 + box[:, 0]) * self.stride
        cy = (gy + 0.5 + box[:, 1]) * self.stride
        bw = torch.exp(box[:, 2].clamp(-6, 6)) * self.stride
        bh = torch.exp(box[:, 3].clamp(-6, 6)) * self.stride
        xywh = torch.stack([cx, cy, bw, bh], dim=1).reshape(b, 4, h * w)
        return torch.cat([xywh, torch.sigmoid(cls).reshape(b, self.classes, h * w)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.raw(x))
