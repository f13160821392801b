"""Export parity for torchvision segmenters (random init, small inputs) and the U-Net."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    # checks boxes within 3 px, labels and scores; trained models, and the decisive seeded one
    # below, are checked at the defaults (2e-3, mask IoU 0.99)
    report = export_maskrcnn(arch, out, min_size=256, max_size=320, atol=3.0, min_mask_iou=0.0)
    assert report["passed"]
    config, labels = load_model_config(out)
    assert config.batching.max_batch_size == 0
    assert len(labels) == 91


def _decisive_maskrcnn() -> tuple[Any, list[np.ndarray]]:
    """The shapes Mask R-CNN (``training.maskrcnn.build``: ImageNet MobileNetV2 backbone, seeded
    heads) made decisive, and two pictures it is checked on.

    Random heads tie: without ImageNet features every proposal scores the same, and flat or
    padded regions give many anchors exactly equal objectness, which torch's topk and ONNX
    Runtime's TopK order differently — the source of the pixel-sized box differences that made
    the random-init tests above loosen their tolerances. So the pictures are RGB noise with
    shapes, exactly 192x160 and 160x192 (no resize, no padding at ``min_size=160,
    max_size=192``), and the mask predictor's logits are pushed far from 0 (bias +5, weights
    x0.2): every mask pixel inside its box is decided, not a coin toss at 0.5.
    """
    import torch

    from training.maskrcnn import build
    from training.shapes import generate

    torch.manual_seed(0)
    model = build(pretrained_backbone=True)
    model.transform.min_size = (160,)
    model.transform.max_size = 192
    model.roi_heads.detections_per_img = 10
    with torch.no_grad():
        logits = model.roi_heads.mask_predictor.mask_fcn_logits
        logits.weight.mul_(0.2)
        logits.bias.fill_(5.0)
        score = model.roi_heads.box_predictor.cls_score  # scores spread over 0.3-0.7
        score.weight.mul_(5.0)
        score.bias.mul_(5.0)
    model.eval()

    def picture(seed: int, w: int, h: int) -> np.ndarray:
        image = generate(seed, min_size=200, max_size=200, backgrounds=("noise",)).image[:h, :w]
        return np.ascontiguousarray(image.transpose(2, 0, 1).astype(np.float32) / 255.0)

    return model, [picture(7, 192, 160), picture(8, 160, 192)]


def test_seeded_maskrcnn_with_decisive_masks_passes_parity_at_the_default_tolerances(
    tmp_path: Path,
) -> None:
    import torch

    from export.maskrcnn import SingleImageMaskRCNN, export_maskrcnn_model
    from export.verify import ParityError, check_parity
    from training.maskrcnn import LABELS

    model, samples = _decisive_maskrcnn()
    single = SingleImageMaskRCNN(model).eval()
    for sample in samples:  # what the mask check sees: instances ≥ 0.3, pixels decided
        with torch.no_grad():
            boxes, _, scores, masks = (t.numpy() for t in single(torch.from_numpy(sample)))
        assert (scores >= 0.3).sum() >= 5
        for box, mask in zip(boxes, masks[:, 0], strict=True):
            x1, y1, x2, y2 = np.round(box).astype(int)
            inside = mask[y1:y2, x1:x2]
            # the box's outer ring is the paste's interpolation towards 0; none of it near 0.5
            assert inside.size and (np.abs(inside - 0.5) < 0.05).mean() < 0.01
    out = tmp_path / "decisive-maskrcnn"
    # the defaults: boxes and scores within 2e-3 + 1e-3·max, every shown mask IoU ≥ 0.99
    report = export_maskrcnn_model(
        model,
        out,
        labels=LABELS,
        samples=samples,
        source={"architecture": "maskrcnn_mobilenet_v2_fpn", "weights": "seeded, decisive"},
        max_side=192,
    )
    assert report["passed"]
    assert report["atol"] == 2e-3
    masks_checks = [c for c in report["checks"] if c["output"] == "masks"]
    assert len(masks_checks) == 2
    assert all(c["allowed"] == 0.99 and c["min_mask_iou"] >= 0.99 for c in masks_checks)

    # and the same check fails on a graph that differs: mask logits negated, or scores moved
    import onnx
    from onnx import numpy_helper

    for name, change, output in [
        ("model.roi_heads.mask_predictor.mask_fcn_logits.bias", lambda b: -b, "masks"),
        # one class's logit up by 0.05 (the same shift on all would cancel in the softmax)
        (
            "model.roi_heads.box_predictor.cls_score.bias",
            lambda b: b + np.float32([0, 0.05, 0, 0]),
            "scores",
        ),
    ]:
        graph = onnx.load(str(out / "model.onnx"))
        init = next(i for i in graph.graph.initializer if i.name == name)
        init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), name))
        perturbed = tmp_path / f"perturbed-{output}.onnx"
        onnx.save(graph, str(perturbed))
        with pytest.raises(ParityError, match=f"output {output}"):
            check_parity(
                single,
                perturbed,
                [{"image": s} for s in samples],
                atol=2e-3,
                rtol=1e-3,
                batch_axis=False,
                mask_outputs={"masks": "scores"},
            )


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
