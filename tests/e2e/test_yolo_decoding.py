"""The service's YOLOv8 decoding agrees with an independent reference on a real Ultralytics
export: the YOLOv8n ONNX file shipped by the ``nudenet`` package (its labels are nudenet's)."""

from __future__ import annotations

import ast
import importlib.util
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from PIL import Image

from tests.support.server import Server, running_server

SPEC = importlib.util.find_spec("nudenet")
pytestmark = pytest.mark.skipif(
    SPEC is None, reason="nudenet is not installed (pip install --no-deps nudenet)"
)
SIZE = 320


def nudenet_files() -> tuple[Path, list[str]]:
    assert SPEC is not None and SPEC.origin is not None
    root = Path(SPEC.origin).parent
    tree = ast.parse((root / "nudenet.py").read_text())
    labels = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__labels"
    )
    return root / "320n.onnx", labels


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    onnx_path, labels = nudenet_files()
    repo = tmp_path_factory.mktemp("yolo")
    folder = repo / "nudenet-320n"
    folder.mkdir()
    # a copy: the server refuses a model file that links outside its folder (the perimeter)
    shutil.copyfile(onnx_path, folder / "model.onnx")
    session = ort.InferenceSession(str(onnx_path))
    out = session.get_outputs()[0]
    config = {
        "task": "detect",
        "format": "yolov8",
        "inputs": [
            {"name": session.get_inputs()[0].name, "dtype": "float32", "dims": [3, SIZE, SIZE]}
        ],
        "outputs": [{"name": out.name, "dtype": "float32", "dims": [4 + len(labels), -1]}],
        "image": {"resize": "letterbox", "width": SIZE, "height": SIZE, "pad_value": 114},
        "labels": labels,
        "batching": {
            "max_batch_size": 0 if isinstance(session.get_inputs()[0].shape[0], int) else 4
        },
    }
    if config["batching"]["max_batch_size"] == 0:  # static batch of 1: keep the axis in dims
        config["inputs"][0]["dims"] = [1, 3, SIZE, SIZE]
        config["outputs"][0]["dims"] = [1, 4 + len(labels), -1]
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with running_server(repo) as srv:
        yield srv


def reference(
    image: Image.Image, onnx_path: Path, conf: float, iou: float
) -> list[tuple[int, float, list[float]]]:
    """Letterbox (Ultralytics' rule), run, decode and per-class greedy NMS, written out plainly."""
    w, h = image.size
    r = min(SIZE / w, SIZE / h)
    nw, nh = round(w * r), round(h * r)
    left, top = round((SIZE - nw) / 2 - 0.1), round((SIZE - nh) / 2 - 0.1)
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    canvas[top : top + nh, left : left + nw] = np.asarray(
        image.resize((nw, nh), Image.Resampling.BILINEAR)
    )
    x = (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(onnx_path))
    pred = session.run(None, {session.get_inputs()[0].name: x})[0][0].T  # [N, 4+C]
    candidates = []
    for row in pred:
        cls = int(np.argmax(row[4:]))
        score = float(row[4 + cls])
        if score < conf:
            continue
        cx, cy, bw, bh = (float(v) for v in row[:4])
        box = [
            (cx - bw / 2 - left) / r,
            (cy - bh / 2 - top) / r,
            (cx + bw / 2 - left) / r,
            (cy + bh / 2 - top) / r,
        ]
        box = [
            min(max(box[0], 0), w),
            min(max(box[1], 0), h),
            min(max(box[2], 0), w),
            min(max(box[3], 0), h),
        ]
        candidates.append((cls, score, box))
    candidates.sort(key=lambda c: -c[1])
    kept: list[tuple[int, float, list[float]]] = []
    for cand in candidates:
        if all(k[0] != cand[0] or _iou(k[2], cand[2]) <= iou for k in kept):
            kept.append(cand)
    return kept


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def photo_image(photo: str) -> Image.Image:
    """A square, two wide and a tall input (letterbox padding on each axis), one of them grey."""
    from skimage import data

    if photo == "astronaut-tall":
        return Image.fromarray(data.astronaut()).convert("RGB").crop((80, 0, 380, 512))
    image = Image.fromarray(getattr(data, photo)()).convert("RGB")
    if photo == "coffee":
        image = image.crop((0, 0, 600, 260))  # a wide, non-square input
    return image


@pytest.mark.parametrize("photo", ["astronaut", "chelsea", "coffee", "astronaut-tall", "camera"])
def test_yolov8_decoding_matches_the_reference(server: Server, photo: str) -> None:
    onnx_path, labels = nudenet_files()
    image = photo_image(photo)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    conf, iou = 0.05, 0.45
    r = httpx.post(
        server.url + "/detect",
        files=[("file", ("x.png", buf.getvalue(), "image/png"))],
        data={"confidence": str(conf), "iou": str(iou)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]["detections"]
    want = reference(image, onnx_path, conf, iou)
    # an empty reference would make the comparison below [] == []: every photo must give boxes
    assert want, f"the reference finds nothing in {photo}: pick another input or threshold"
    if photo.startswith("astronaut"):
        assert labels[want[0][0]] == "FACE_FEMALE", "the astronaut's face scores highest"
    assert len(got) == len(want)
    for g, (cls, score, box) in zip(got, want, strict=True):
        assert g["label"] == labels[cls]
        assert abs(g["score"] - score) <= 1e-3
        assert [g["box"][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=1.0)


def test_ultralytics_own_predictor_agrees_with_the_service(server: Server, tmp_path: Path) -> None:
    """Ultralytics' predictor on the same ONNX file. The image is already 320×320, so neither side
    resizes (cv2 and Pillow resample differently) and the comparison isolates the decoding."""
    ultralytics = pytest.importorskip(
        "ultralytics", reason="Ultralytics (AGPL, optional) is not installed"
    )
    from skimage import data

    onnx_path, labels = nudenet_files()
    image = (
        Image.fromarray(data.astronaut())
        .convert("RGB")
        .resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    )
    path = tmp_path / "face.png"
    image.save(path)
    conf, iou = 0.05, 0.45
    local = tmp_path / "320n.onnx"
    local.symlink_to(onnx_path)
    result = ultralytics.YOLO(str(local), task="detect").predict(
        str(path), imgsz=SIZE, conf=conf, iou=iou, verbose=False, device="cpu"
    )[0]
    theirs = sorted(
        zip(
            result.boxes.cls.tolist(),
            result.boxes.conf.tolist(),
            result.boxes.xyxy.tolist(),
            strict=True,
        ),
        key=lambda t: -t[1],
    )
    r = httpx.post(
        server.url + "/detect",
        files=[("file", ("face.png", path.read_bytes(), "image/png"))],
        data={"confidence": str(conf), "iou": str(iou)},
        timeout=60,
    )
    ours = r.json()["results"][0]["detections"]
    assert theirs, "Ultralytics finds the astronaut's face"
    assert len(ours) == len(theirs)
    for g, (cls, score, box) in zip(ours, theirs, strict=True):
        assert g["label"] == labels[int(cls)]
        assert abs(g["score"] - score) <= 1e-3
        assert [g["box"][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=1.0)
