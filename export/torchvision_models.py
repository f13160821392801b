"""Loading a torchvision detection / segmentation model for export: published weights (downloaded
by torchvision), a local state_dict, or random initialisation, and the weights' class names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision


def labels_from_weights(arch: str, weights: str | None, fallback: list[str]) -> list[str]:
    if weights is None:
        return fallback
    entry = torchvision.models.get_model_weights(arch)
    member = entry.DEFAULT if weights == "DEFAULT" else entry[weights]
    return list(member.meta["categories"])


def load_model(
    arch: str, weights: str | None, checkpoint: Path | None, num_classes: int | None, **kwargs: Any
) -> torch.nn.Module:
    if weights is not None:
        model = torchvision.models.get_model(arch, weights=weights, **kwargs)
    else:
        extra = {"num_classes": num_classes} if num_classes else {}
        model = torchvision.models.get_model(
            arch, weights=None, weights_backbone=None, **extra, **kwargs
        )
    if checkpoint is not None:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    loaded: torch.nn.Module = model.eval()
    return loaded
