"""Ultralytics YOLO segmentation (-seg) models: exported with ``python -m export yolo`` and served
by ``/segment``; the service's decoding (NMS, prototype × coefficient masks, box crop, letterbox
undone) agrees with Ultralytics' own predictor (``retina_masks=True``) on the same ONNX file.

No -seg weights can be downloaded here, so the network is YOLOv8n-seg from its yaml, seeded,
with its head scaled so that random weights give the output spread of a trained model.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.tasks.segmentation import rle_decode
from tests.support.server import Server, running_server

ultralytics = pytest.importorskip(
    "ultralytics", reason="Ultralytics (AGPL, optional) is not installed"
)
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.export
SIZE = 320
CONF, IOU = 0.52, 0.45


def _give_the_head_a_trained_spread(model: Any) -> None:
    """A freshly initialised YOLO shrinks its activations layer after layer: every score is
    0.5 ± 1e-6 and every mask logit ~1e-4. Batch-norm statistics taken from a photo keep every
    layer at unit variance; the head's last convolutions are then scaled, measured on the same
    photo, so that box offsets, mask coefficients and prototypes vary by about 1 and a few
    dozen candidates pass the score threshold, as with a trained model."""
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((SIZE, SIZE))
    x = torch.from_numpy((np.asarray(image, np.float32) / 255).transpose(2, 0, 1)[None].copy())
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = 1.0  # running statistics := this photo's
    with torch.no_grad():
        model.train()(x)

    head = model.model[-1]
    targets = {b[-1]: 2.0 for b in head.cv2}  # box distribution logits
    targets |= {b[-1]: 1.5 for b in head.cv3}  # class logits
    targets |= {b[-1]: 1.0 for b in head.cv4}  # mask coefficients
    targets[head.proto.cv3.conv] = 1.0  # prototypes
    stats: dict[Any, tuple[float, float]] = {}
    hooks = [
        layer.register_forward_hook(
            lambda mod, _i, out: stats.__setitem__(mod, (out.mean().item(), out.std().item()))
        )
        for layer in targets
    ]
    with torch.no_grad():
        for branch in head.cv3:
            branch[-1].bias.zero_()
        model.eval()(x)
        for hook in hooks:
            hook.remove()
        for layer, target in targets.items():
            layer.weight.mul_(target / max(stats[layer][1], 1e-12))
        for branch in head.cv3:  # centre, then max over 80 classes ≈ +3 σ: a few % of candidates
            mean, std = stats[branch[-1]]
            branch[-1].bias.fill_(-mean * 1.5 / max(std, 1e-12) - 5.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.detection import export_yolo

    work = tmp_path_factory.mktemp("yoloseg")
    torch.manual_seed(0)
    yolo = ultralytics.YOLO("yolov8n-seg.yaml")
    _give_the_head_a_trained_spread(yolo.model)
    yolo.save(str(work / "seeded-seg.pt"))
    repo = work / "models"
    export_yolo(str(work / "seeded-seg.pt"), repo / "yolov8n-seg", size=SIZE, max_batch_size=4)
    return repo


@pytest.fixture(scope="module")
def server(exported: Path) -> Iterator[Server]:
    with running_server(exported) as srv:
        yield srv


def _photo(name: str, size: tuple[int, int] | None, crop: tuple[int, int, int, int] | None):
    from skimage import data

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    if crop is not None:
        image = image.crop(crop)
    if size is not None:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image


def _segment(server: Server, png: bytes, **form: str) -> dict[str, Any]:
    r = httpx.post(
        server.url + "/segment",
        files=[("file", ("x.png", png, "image/png"))],
        data={"confidence": str(CONF), "iou": str(IOU), **form},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_served_masks_agree_with_ultralytics_predictor(
    exported: Path, server: Server, tmp_path: Path
) -> None:
    """The whole path: a 320×320 photo, so neither side resizes it (cv2 and Pillow resample
    differently) and the ONNX outputs are the same on both sides."""
    image = _photo("astronaut", (SIZE, SIZE), None)
    path = tmp_path / "astronaut.png"
    image.save(path)
    onnx_path = exported / "yolov8n-seg" / "model.onnx"
    theirs = ultralytics.YOLO(str(onnx_path), task="segment").predict(
        str(path),
        imgsz=SIZE,
        conf=CONF,
        iou=IOU,
        max_det=100,  # the service's instance cap
        retina_masks=True,
        verbose=False,
        device="cpu",
    )[0]
    [result] = _segment(server, path.read_bytes())["results"]
    assert result["kind"] == "instance"
    assert (result["width"], result["height"]) == image.size
    ours = result["instances"]
    assert len(theirs.boxes) >= 5, "the seeded network gives instances to compare"
    assert len(ours) == len(theirs.boxes)
    for k in range(len(theirs.boxes)):
        box = theirs.boxes.xyxy[k].tolist()
        score = float(theirs.boxes.conf[k])
        near = [
            g
            for g in ours
            if g["class_id"] == int(theirs.boxes.cls[k])
            and [g["box"][c] for c in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=1.0)
        ]
        assert near, f"instance {k} ({score:.4f}, {box}) is missing"
        # boxes are compared clipped to the image, where two instances can coincide
        got = min(near, key=lambda g: abs(g["score"] - score))
        assert abs(got["score"] - score) <= 1e-3
        mask = rle_decode(got["mask"])
        want = theirs.masks.data[k].numpy().astype(bool)
        assert mask.shape == want.shape == (image.height, image.width)
        assert _iou(mask, want) >= 0.99, f"instance {k}: mask IoU {_iou(mask, want):.3f}"


# 640×320: the letterbox pads 80 input px = 20 prototype px, so Ultralytics' two-step resize
# (prototypes ×f, crop, resize) samples where the service's single resize does. 600×260 puts
# the image edge mid-pixel; there the two resamplings differ by a fraction of a pixel, which
# moves the zero crossings of these random-weight masks (far noisier than a trained model's).
@pytest.mark.parametrize(
    ("width", "height", "min_iou", "min_mean_iou"),
    # docs/detection-segmentation.md publishes min 1.0 / 0.86 and mean 1.0 / 0.97: a few points under
    [(640, 320, 0.999, 0.999), (600, 260, 0.83, 0.95)],
)
def test_letterboxed_decoding_agrees_with_ultralytics_ops(
    exported: Path, width: int, height: int, min_iou: float, min_mean_iou: float
) -> None:
    """Same ONNX outputs into both decoders: NMS, masks, box crop and letterbox undone."""
    import onnxruntime as ort
    from ultralytics.utils import ops

    from service.model_config import load_model_config
    from service.tasks.imaging import ImageProcessor
    from service.tasks.segmentation import instances_from_yolo_seg

    nms = getattr(importlib.import_module("ultralytics.utils.nms"), "non_max_suppression", None)
    config, labels = load_model_config(exported / "yolov8n-seg")
    assert config.image is not None
    buf = io.BytesIO()
    _photo("coffee", (width, height), None).save(buf, format="PNG")
    feeds, geo = ImageProcessor(config.image, "images", max_pixels=10**8).preprocess(buf.getvalue())
    assert geo.pad_y > 0
    session = ort.InferenceSession(str(exported / "yolov8n-seg" / "model.onnx"))
    output, protos = session.run(None, {"images": feeds["images"][None]})
    ours = instances_from_yolo_seg(output[0], protos[0], geo, CONF, IOU, max_instances=100)
    [pred] = (nms or ops.non_max_suppression)(
        torch.from_numpy(output), CONF, IOU, nc=len(labels), max_det=100
    )
    pred[:, :4] = ops.scale_boxes((SIZE, SIZE), pred[:, :4], (height, width))
    masks = ops.process_mask_native(
        torch.from_numpy(protos[0]), pred[:, 6:], pred[:, :4], (height, width)
    ).numpy()
    keep = masks.reshape(len(masks), -1).any(1)  # Ultralytics drops empty masks, as we do
    pred, masks = pred[keep], masks[keep].astype(bool)
    assert len(pred) >= 5
    assert len(ours) == len(pred)
    ious = []
    for inst, row, want in zip(ours, pred.tolist(), masks, strict=True):
        assert inst.class_id == int(row[5])
        assert inst.score == pytest.approx(row[4], abs=1e-5)
        assert list(inst.box) == pytest.approx(row[:4], abs=1.0)
        ious.append(_iou(rle_decode(inst.rle), want))
    print(
        f"{width}×{height}: {len(ious)} instances, mask IoU min {min(ious):.3f} mean {np.mean(ious):.3f}"
    )
    assert min(ious) >= min_iou, ious
    assert float(np.mean(ious)) >= min_mean_iou, ious


def test_yolo_seg_batch_invariance_and_render(server: Server) -> None:
    images = []
    for name in ("astronaut", "chelsea"):
        buf = io.BytesIO()
        _photo(name, None, None).save(buf, format="PNG")
        images.append(buf.getvalue())
    singles = [_segment(server, png)["results"][0] for png in images]
    r = httpx.post(
        server.url + "/segment",
        files=[("file", (f"{i}.png", png, "image/png")) for i, png in enumerate(images)],
        data={"confidence": str(CONF), "iou": str(IOU)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    for single, batched in zip(singles, r.json()["results"], strict=True):
        assert len(single["instances"]) == len(batched["instances"]) > 0
        for a, b in zip(single["instances"], batched["instances"], strict=True):
            assert a["class_id"] == b["class_id"]
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert _iou(rle_decode(a["mask"]), rle_decode(b["mask"])) >= 0.99
    picture = httpx.post(
        server.url + "/segment",
        files=[("file", ("a.png", images[0], "image/png"))],
        data={"confidence": str(CONF), "render": "true"},
        timeout=60,
    )
    assert picture.status_code == 200
    assert Image.open(io.BytesIO(picture.content)).size == (512, 512)
