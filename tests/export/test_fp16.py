"""``--precision fp16`` for every exporter but the classifiers (test_classifiers.py has theirs):
tiny or random-init exports whose fp16 graph passes its task's check against fp32, stores its
weights in float16 (about half the file), says fp16 in its metadata and description, loads in
the service unchanged (float32 IO) and serves a request through the service's own processor;
and a deliberately too-tight limit makes the same check fail."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

pytest.importorskip("torchvision")

import torch

from export.classifiers import sample_images
from export.common import read_metadata
from export.verify import ParityError
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelRegistry
from service.settings import Settings

pytestmark = pytest.mark.export


def loaded(folder: Path) -> LoadedModel:
    """The folder as the service loads it: config, graph check, processor, warm-up."""
    settings = Settings(model_repository=folder.parent, providers="cpu")
    return ModelRegistry(settings).build(folder.name, folder)[1]


def serve(folder: Path, raw: Any, params: Any) -> Any:
    """One request's way through the service's processor and session (no batcher thread)."""
    model = loaded(folder)
    feeds, meta = model.processor.prepare(raw)
    if not model.config.batched:  # as the batcher's runner: one item is the whole feed
        outputs = model.session.run(feeds)
    else:
        outputs = model.session.run(model.processor.collate([feeds]))
        outputs = {k: v[0] for k, v in outputs.items()}
    return model.processor.finish(outputs, meta, params)  # type: ignore[arg-type]


def assert_fp16_folder(folder: Path, report: dict[str, Any]) -> None:
    """What every fp16 export shares: the check passed and is recorded, half-size float16
    weights, fp16 in the metadata and description, float32 (or int64) IO."""
    import json

    fp16 = report["fp16"]
    assert all(
        (c["measured"] <= c["limit"]) if k.startswith("max_") else (c["measured"] >= c["limit"])
        for k, c in fp16["checks"].items()
        if c["limit"] is not None
    )
    assert json.loads((folder / "parity.json").read_text())["fp16"] == fp16
    assert 0.45 < fp16["size_ratio"] < 0.65  # the weights are most of the file
    model = onnx.load(str(folder / "model.onnx"))
    weights = [i for i in model.graph.initializer if len(i.dims) > 1]
    assert weights
    assert {i.data_type for i in weights} == {onnx.TensorProto.FLOAT16}
    assert read_metadata(model)["precision"] == "fp16"
    config = loaded(folder).config
    assert "fp16" in config.description
    io_types = {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert onnx.TensorProto.FLOAT16 not in io_types


def jpeg(index: int = 0) -> bytes:
    return sample_images()[index]


# -- YOLO --------------------------------------------------------------------------------------


def yolo_checkpoint(tmp_path: Path, spec: str) -> str:
    """An untrained Ultralytics network whose batch-norm statistics come from three photos (an
    untrained net's activations otherwise fade to ~1e-7, and its class scores to 1e-4 — no
    detections to compare), saved as a checkpoint the exporter loads like a trained one."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO(spec)
    photos = [
        np.asarray(Image.open(io.BytesIO(j)).convert("RGB").resize((160, 160)), np.float32)
        for j in sample_images()
    ]
    batch = torch.from_numpy(np.stack(photos).transpose(0, 3, 1, 2) / 255.0)
    for module in yolo.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # the running statistics become this batch's
    yolo.model.train()
    with torch.no_grad():
        yolo.model(batch)
    for module in yolo.model.modules():
        if type(module).__name__ in ("Detect", "Segment"):
            for branch in module.cv3:  # class logits around -2: a few confident detections
                torch.nn.init.constant_(branch[-1].bias, -2.0)
    path = tmp_path / spec.replace(".yaml", ".pt")
    yolo.save(str(path))
    return str(path)


# untrained heads have flat box distributions and hundreds of near-tied, overlapping boxes, and
# batch-norm statistics from three photos leave some channels badly conditioned: fp16 noise
# moves boxes by many pixels and NMS keeps other ones. The random-init test checks that the
# comparison runs on real detections and that raw outputs stay within 5 % of their range; the
# default limits (2 % raw, 2 px, 0.02) are for trained models (NanoDet: docs/export.md)
UNTRAINED_YOLO = {
    "max_rel_diff": 0.05,
    "max_box_px": 1e4,
    "max_score_diff": 1.0,
    "max_unmatched": 1e4,
    "min_mask_iou": 0.0,
}


@pytest.mark.parametrize("spec", ["yolov8n.yaml", "yolov8n-seg.yaml"])
def test_yolo_fp16_export_agrees_with_fp32_and_serves(
    tmp_path: Path, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ultralytics", reason="Ultralytics (AGPL, optional) is not installed")
    from export.detection import export_yolo
    from service.tasks.detection import DetectParams
    from service.tasks.segmentation import SegmentParams

    monkeypatch.chdir(tmp_path)
    weights = yolo_checkpoint(tmp_path, spec)
    out = tmp_path / "yolo-fp16"
    seg = "seg" in spec
    limits = UNTRAINED_YOLO if seg else {k: v for k, v in UNTRAINED_YOLO.items() if "mask" not in k}
    report = export_yolo(weights, out, size=160, precision="fp16", fp16_limits=limits)
    assert_fp16_folder(out, report)
    checks = report["fp16"]["checks"]
    assert checks["detections"]["measured"] > 0  # the comparison saw detections
    assert ("min_mask_iou" in checks) == seg
    result = serve(out, jpeg(), SegmentParams() if seg else DetectParams())
    assert result.width > 0
    if seg:
        return  # the same check as for detection models: one too-tight run is enough
    with pytest.raises(ParityError, match="max_rel_diff"):
        export_yolo(
            weights,
            tmp_path / "never",
            size=160,
            precision="fp16",
            fp16_limits={**limits, "max_rel_diff": 1e-6},
        )
    assert not (tmp_path / "never").exists()


# -- semantic segmenters and the U-Net ---------------------------------------------------------


def test_deeplabv3_fp16_export_agrees_with_fp32_and_serves(tmp_path: Path) -> None:
    from export.segmentation import export_semantic
    from service.tasks.segmentation import SegmentParams

    torch.manual_seed(0)
    out = tmp_path / "deeplab-fp16"
    arch = "deeplabv3_mobilenet_v3_large"
    report = export_semantic(arch, out, size=96, precision="fp16")
    assert_fp16_folder(out, report)
    assert report["fp16"]["checks"]["min_pixel_agreement"]["measured"] >= 0.99
    result = serve(out, jpeg(), SegmentParams(mask_format="map"))
    assert result.class_map.shape == (result.height, result.width)
    with pytest.raises(ParityError, match="max_rel_diff"):
        export_semantic(
            arch, tmp_path / "never", size=96, precision="fp16", fp16_limits={"max_rel_diff": 1e-7}
        )


def test_unet_fp16_export_through_the_cli_agrees_with_fp32(tmp_path: Path) -> None:
    import json

    from export.__main__ import main
    from export.segmentation import export_unet

    out = tmp_path / "unet-fp16"
    argv = ["segmenter", "--arch", "unet", "--random-init", "--size", "64"]
    assert main([*argv, "--precision", "fp16", "--out", str(out)]) == 0
    report = json.loads((out / "parity.json").read_text())
    assert_fp16_folder(out, report)
    with pytest.raises(ParityError, match="min_pixel_agreement"):
        export_unet(
            None,
            tmp_path / "never",
            size=64,
            precision="fp16",
            fp16_limits={"min_pixel_agreement": 1.01},  # more than every pixel
        )


# -- Mask R-CNN --------------------------------------------------------------------------------


def tiny_maskrcnn() -> torch.nn.Module:
    """torchvision's Mask R-CNN over a small random backbone (three strided convs), batch-norm
    free, its class and mask logits scaled up so that instances clear the 0.5 threshold."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, 2, 1),
        torch.nn.ReLU(),
    )
    backbone.out_channels = 32  # type: ignore[assignment]
    model = MaskRCNN(
        backbone,
        num_classes=3,
        min_size=96,
        max_size=128,
        box_detections_per_img=10,
        rpn_anchor_generator=AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
    )
    with torch.no_grad():  # decisive classes and masks: instances above the 0.5 threshold
        model.roi_heads.box_predictor.cls_score.weight.mul_(100.0)
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(50.0)
    return model.eval()


def test_maskrcnn_fp16_export_agrees_with_fp32_and_serves(tmp_path: Path) -> None:
    from export.maskrcnn import export_maskrcnn_model
    from service.tasks.imaging import decode_image
    from service.tasks.segmentation import SegmentParams

    samples = []
    for photo in sample_images()[:2]:
        img = decode_image(photo, max_pixels=10**8).image
        img.thumbnail((128, 128))
        samples.append(np.asarray(img, np.float32).transpose(2, 0, 1).copy() / 255.0)
    kwargs: dict[str, Any] = {
        "labels": ["background", "a", "b"],
        "samples": samples,
        "source": {"architecture": "tiny-maskrcnn", "weights": "random-init"},
        "max_side": 128,
        "atol": 3.0,  # untrained: see test_maskrcnn_export_matches_pytorch
        "min_mask_iou": 0.0,
        "precision": "fp16",
        # untrained mask logits sit near 0 over much of a box, so a few small masks flip
        # pixels in fp16 as in fp32 parity; boxes, classes and scores keep the default limits
        "fp16_limits": {"min_mask_iou": 0.0},
    }
    model = tiny_maskrcnn()
    out = tmp_path / "maskrcnn-fp16"
    report = export_maskrcnn_model(model, out, **kwargs)
    assert_fp16_folder(out, report)
    fp16 = report["fp16"]
    assert fp16["outputs_compared"] == []  # the detection count varies: compared as instances
    # NMS sits inside the control flow, which stays fp32 with its subgraphs
    assert {"Loop", "TopK", "RoiAlign"} <= set(fp16["kept_fp32_ops"])
    assert fp16["checks"]["detections"]["measured"] > 0
    result = serve(out, jpeg(), SegmentParams(confidence=0.0))
    assert result.width > 0
    tight = {**kwargs, "fp16_limits": {"max_score_diff": 1e-9}}
    with pytest.raises(ParityError, match="max_score_diff"):
        export_maskrcnn_model(model, tmp_path / "never", **tight)
    assert not (tmp_path / "never").exists()


# -- text encoders and word vectors ------------------------------------------------------------


def tiny_bert(folder: Path) -> Path:
    """A two-layer, 32-wide random BERT with MiniLM's tokenizer and pooling config."""
    import shutil

    from transformers import BertConfig, BertModel

    from export.text import minilm_dir

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, folder / name)
    return folder


def test_text_encoder_fp16_export_agrees_with_fp32_and_serves(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from export.common import ExportError
    from export.text import export_text
    from service.tasks.embedding import EmbedParams

    model_dir = tiny_bert(tmp_path / "tiny-bert")
    out = tmp_path / "bert-fp16"
    report = export_text(model_dir, out, precision="fp16")
    assert_fp16_folder(out, report)
    assert report["fp16"]["min_cosine"] >= 0.999
    embedding = serve(out, "A man is eating food.", EmbedParams())
    assert abs(float(np.linalg.norm(embedding.vector)) - 1.0) < 1e-3
    with pytest.raises(ParityError, match="min_cosine"):
        export_text(
            model_dir, tmp_path / "never", precision="fp16", fp16_limits={"min_cosine": 1.0001}
        )
    with pytest.raises(ExportError, match="choose one"):
        export_text(model_dir, tmp_path / "never", precision="fp16", quantize="int8")


def test_glove_fp16_export_halves_the_table_and_keeps_the_vectors(tmp_path: Path) -> None:
    from export.glove import export_glove
    from service.tasks.embedding import EmbedParams

    rng = np.random.default_rng(0)
    words = ["king", "queen", "man", "woman", "cat", "mat", "the", "a", "and", "sat", "on"]
    words += [f"w{i}" for i in range(2000)]
    np.save(tmp_path / "table.npy", rng.normal(0, 0.5, (len(words), 50)).astype(np.float32))
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    out = tmp_path / "vectors-fp16"
    args = (tmp_path / "table.npy", out)
    report = export_glove(*args, vocab=tmp_path / "words.txt", precision="fp16")
    assert_fp16_folder(out, report)
    assert report["fp16"]["min_cosine"] >= 0.9999
    embedding = serve(out, "The king and the queen.", EmbedParams(normalize=False))
    table = np.load(tmp_path / "table.npy")
    want = table[[words.index(w) for w in ("the", "king", "and", "the", "queen")]].mean(0)
    np.testing.assert_allclose(embedding.vector, want, atol=2e-3)  # fp16 table: ~3 digits
    with pytest.raises(ParityError, match="max_rel_diff"):
        export_glove(
            tmp_path / "table.npy",
            tmp_path / "never",
            vocab=tmp_path / "words.txt",
            precision="fp16",
            fp16_limits={"max_rel_diff": 1e-7},
        )


# -- NanoDet -----------------------------------------------------------------------------------

NANODET = Path(__file__).resolve().parents[2] / "models" / "nanodet-coco" / "model.onnx"


@pytest.mark.skipif(not NANODET.is_file(), reason="nanodet-coco not built: run `make models`")
def test_nanodet_fp16_of_the_trained_graph_keeps_its_coco_detections(tmp_path: Path) -> None:
    """The fp16 step of ``export nanodet --precision fp16`` on the real (trained) final graph of
    the default detector: the full export also needs the TF.js reference, which takes minutes."""
    from export.nanodet import nanodet_fp16

    fp32 = tmp_path / "model.onnx"
    fp32.write_bytes(NANODET.read_bytes())
    photos = sample_images()[:2]
    report, half = nanodet_fp16(fp32, photos)
    checks = report["checks"]
    assert checks["detections"]["measured"] > 0  # real objects found by both
    assert checks["max_box_px"]["measured"] <= 2.0
    assert 0.45 < report["size_ratio"] < 0.55
    weights = [i for i in half.graph.initializer if len(i.dims) > 1]
    assert {i.data_type for i in weights} == {onnx.TensorProto.FLOAT16}
    with pytest.raises(ParityError, match="max_score_diff"):
        nanodet_fp16(fp32, photos, {"max_score_diff": 1e-9})
