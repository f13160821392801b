"""Export parity for torchvision segmenters (random init, small inputs) and the U-Net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchvision")

from export.maskrcnn import export_maskrcnn
from export.segmentation import export_semantic
from service.model_config import load_model_config

pytestmark = pytest.mark.export


@pytest.mark.parametrize(
    "arch",
    [
        "deeplabv3_mobilenet_v3_large",
        "fcn_resnet50",
        pytest.param("deeplabv3_resnet50", marks=pytest.mark.slow),
        pytest.param("fcn_resnet101", marks=pytest.mark.slow),
        pytest.param("deeplabv3_resnet101", marks=pytest.mark.slow),
    ],
)
def test_semantic_segmenter_export_matches_pytorch(tmp_path: Path, arch: str) -> None:
    out = tmp_path / arch
    report = export_semantic(arch, out, size=128)
    assert report["passed"]
    config, labels = load_model_config(out)
    assert config.outputs[0].dims == [21, 128, 128]
    assert labels[0] == "background"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_maskrcnn_export_matches_pytorch(tmp_path: Path, arch: str) -> None:
    import torch

    torch.manual_seed(0)
    out = tmp_path / arch
    # untrained heads give near-tied box regressions and masks near 0.5 everywhere, so float
    # noise moves random boxes by pixels and flips whole binarised masks: random-init parity
    # checks boxes within 3 px, labels and scores; trained models are checked at 2e-3 and mask IoU 0.99
    report = export_maskrcnn(arch, out, min_size=256, max_size=320, atol=3.0, min_mask_iou=0.0)
    assert report["passed"]
    config, labels = load_model_config(out)
    assert config.batching.max_batch_size == 0
    assert len(labels) == 91


def test_unet_checkpoint_export_matches_pytorch_at_batch_1_and_2(tmp_path: Path) -> None:
    """The path users take: save a trained ``training.models.UNet`` state_dict, export it."""
    import torch

    from export.segmentation import export_unet
    from export.unet import UNet

    torch.manual_seed(0)
    checkpoint = tmp_path / "my-unet.pt"
    torch.save(UNet(classes=3, widths=(8, 16, 24), stem=(8,)).state_dict(), checkpoint)
    out = tmp_path / "my-unet"
    report = export_unet(checkpoint, out, labels=["background", "road", "car"], size=128)
    assert report["passed"]
    assert sorted(c["batch"] for c in report["checks"]) == [1, 2]
    config, labels = load_model_config(out)
    assert config.format == "semantic-logits"
    assert config.outputs[0].dims == [3, 128, 128]
    assert labels == ["background", "road", "car"]


def test_mobilenet_unet_checkpoint_exports_with_its_architecture(tmp_path: Path) -> None:
    """What ``python -m training shapes-unet`` saves: the encoder is recognised from the keys."""
    import torch

    from export.segmentation import export_unet
    from export.unet import MobileUNet

    torch.manual_seed(0)
    model = MobileUNet(classes=3, decoder=(16, 16, 16, 8), pretrained=False)
    checkpoint = tmp_path / "unet.pt"
    torch.save({"state_dict": model.state_dict(), "labels": ["bg", "a", "b"]}, checkpoint)
    out = tmp_path / "mobile-unet"
    report = export_unet(checkpoint, out, size=64)
    assert report["passed"]
    config, labels = load_model_config(out)
    assert labels == ["bg", "a", "b"]
    assert config.outputs[0].dims == [3, 64, 64]


def test_unet_export_through_the_cli(tmp_path: Path) -> None:
    from export.__main__ import main

    out = tmp_path / "unet"
    assert (
        main(["segmenter", "--arch", "unet", "--random-init", "--size", "64", "--out", str(out)])
        == 0
    )
    config, labels = load_model_config(out)
    assert len(labels) == 4
    assert config.image is not None
    assert config.image.resize == "letterbox"


def test_unet_forward_shapes() -> None:
    import torch

    from export.unet import UNet

    logits = UNet(classes=4, widths=(8, 16, 24, 32), stem=(8, 8))(torch.zeros(2, 3, 64, 96))
    assert tuple(logits.shape) == (2, 4, 64, 96)
    assert np.isfinite(logits.detach().numpy()).all()
