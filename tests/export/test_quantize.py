"""int8 static quantization of vision folders (export/quantize.py) on tiny real models: a gate
that passes writes a servable folder with parity.json; one that fails writes nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from export.common import read_metadata
from export.quantize.gates import Gates
from export.quantize.metrics import average_precision, mean_iou
from export.quantize.vision import quantize_vision
from export.verify import ParityError
from service.model_config import load_model_config
from service.tasks.classification import ClassifyParams
from service.tasks.factory import processor_for
from tests.support import tiny_models
from tests.support.server import MODELS

pytestmark = pytest.mark.export

FEW = {"calibration_count": 16, "heldout_count": 24, "latency": False}


def conv_classifier(folder: Path) -> None:
    """The colour classifier with a quantizable body: two 1×1 Convs (identity) + Relu before the
    mean colour (the first stays fp32, the second gets Q/DQ pairs); logits = 20 · mean RGB."""
    weights = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "conv_w")
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["conv"], name="body_conv"),
        helper.make_node("Relu", ["conv"], ["relu1"], name="body_relu1"),
        helper.make_node("Conv", ["relu1", "conv_w"], ["conv2"], name="body_conv2"),
        helper.make_node("Relu", ["conv2"], ["relu"], name="body_relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        tiny_models.const("w", np.eye(3, dtype=np.float32) * 20.0),
        helper.make_node("MatMul", ["flat", "w"], ["logits"], name="head"),
    ]
    graph = tiny_models.classifier_graph(nodes, "conv-classifier")
    graph.initializer.append(weights)
    config = tiny_models.classifier_config()
    config["image"] = {"resize": "stretch", "width": 32, "height": 32, "mean": [0, 0, 0]}
    tiny_models.save_model(folder, graph, config)


@pytest.fixture(scope="module")
def fp32_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fp32") / "colours"
    conv_classifier(folder)
    return folder


def test_a_passing_gate_writes_an_int8_folder_that_serves(
    fp32_classifier: Path, tmp_path: Path
) -> None:
    out = tmp_path / "colours-int8"
    report = quantize_vision(fp32_classifier, out, **FEW)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["gate"]["gate"] == "top1_agreement"
    assert parity["gate"]["value"] >= 0.9 == parity["gate"]["min"]
    assert parity == json.loads(json.dumps(report))
    # the calibration and held-out photos are disjoint
    images = parity["images"]
    assert not set(images["calibration_photos"]) & set(images["heldout_photos"])
    model = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert read_metadata(model)["precision"] == "int8"
    # the output node (the logits' MatMul) and the first Conv stay fp32
    kept = parity["recipe"]["nodes_kept_fp32"]
    assert "head" in kept and "body_conv" in kept and "body_conv2" not in kept
    config, labels = load_model_config(out)
    assert config.name == "colours-int8" and labels == tiny_models.COLOURS
    # served: the service's own processor and ONNX Runtime give the colour of a red image
    processor = processor_for(out, config, labels, max_image_pixels=10**6)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (230, 20, 10)).save(buf, format="PNG")
    feeds, meta = processor.prepare(buf.getvalue())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, processor.collate([feeds]))[0]
    result = processor.finish({"logits": logits[0]}, meta, ClassifyParams(top_k=1))
    assert result.predictions[0].label == "red"


def test_an_impossible_gate_refuses_and_writes_nothing(
    fp32_classifier: Path, tmp_path: Path
) -> None:
    out = tmp_path / "colours-int8"
    with pytest.raises(ParityError, match="top1_agreement"):
        quantize_vision(fp32_classifier, out, gates=Gates(min_top1_agreement=1.01), **FEW)
    assert list(tmp_path.iterdir()) == []


def test_cli_quantizes_a_detector_and_a_semantic_segmenter(tmp_path: Path) -> None:
    from export.__main__ import main

    tiny_models.yolo(tmp_path / "fp32" / "dets")
    tiny_models.semantic(tmp_path / "fp32" / "seg")
    few = ["--calibration-count", "8", "--heldout-count", "8", "--no-latency"]
    for name, gate in (("dets", "map50_drop"), ("seg", "miou_drop")):
        out = tmp_path / f"{name}-int8"
        argv = ["quantize", "--model-dir", str(tmp_path / "fp32" / name), "--out", str(out)]
        assert main([*argv, *few]) == 0
        parity = json.loads((out / "parity.json").read_text())
        assert parity["gate"]["gate"] == gate and parity["passed"]
        load_model_config(out)
    # a failing gate: exit status 1 and no folder
    out = tmp_path / "refused-int8"
    argv = ["quantize", "--model-dir", str(tmp_path / "fp32" / "seg"), "--out", str(out)]
    assert main([*argv, *few, "--max-miou-drop", "-1"]) == 1
    assert not out.exists()


def test_instance_segmenters_are_refused_with_a_reason(tmp_path: Path) -> None:
    from export.common import ExportError

    tiny_models.maskrcnn(tmp_path / "masks")
    with pytest.raises(ExportError, match="instance segmentation"):
        quantize_vision(tmp_path / "masks", tmp_path / "masks-int8", **FEW)
    assert not (tmp_path / "masks-int8").exists()


def test_map_is_one_for_the_reference_itself_and_drops_for_missed_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], dtype=np.float32)
    classes = np.array([0, 1])
    ref = [(boxes, classes)]
    same = [(boxes, np.array([0.9, 0.8], dtype=np.float32), classes)]
    assert average_precision(ref, same) == (1.0, 2)
    missed = [(boxes[:1], np.array([0.9], dtype=np.float32), classes[:1])]
    assert average_precision(ref, missed)[0] == pytest.approx(0.5)
    a = np.zeros((4, 4), dtype=np.uint8)
    b = a.copy()
    b[:2] = 1
    assert mean_iou([a], [a]) == (1.0, 1)
    assert mean_iou([a], [b]) == (pytest.approx((0.5 + 0.0) / 2), 2)


def test_exporter_quantize_flag_writes_the_int8_folder_or_nothing(tmp_path: Path) -> None:
    from export.__main__ import main

    argv = ["classifier", "--arch", "mobilenet_v2", "--random-init", "--image-size", "64"]
    argv += [
        "--quantize",
        "int8",
        "--calibration-count",
        "8",
        "--heldout-count",
        "8",
        "--no-latency",
    ]
    # untrained weights agree with themselves on little: the gate flags decide
    out = tmp_path / "mnv2-int8"
    assert main([*argv, "--min-top1-agreement", "0", "--out", str(out)]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["precision"] == "int8" and parity["fp32_model"] == "mnv2-int8"
    assert read_metadata(onnx.load(str(out / "model.onnx")))["precision"] == "int8"
    refused = tmp_path / "refused-int8"
    assert main([*argv, "--min-top1-agreement", "1.01", "--out", str(refused)]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnv2-int8"]


@pytest.mark.slow
@pytest.mark.skipif(
    not (MODELS / "mobilenet_v2" / "model.onnx").is_file(),
    reason="mobilenet_v2 not built: run `make models`",
)
def test_mobilenet_v2_int8_passes_its_gate_with_the_default_recipe(tmp_path: Path) -> None:
    out = tmp_path / "mobilenet_v2-int8"
    report = quantize_vision(MODELS / "mobilenet_v2", out, latency=False)
    assert report["gate"]["counted"] == "images fp32 gives > 0.5"
    assert report["gate"]["value"] >= 0.9
    assert report["recipe"]["nodes_kept_fp32"] == [
        "/classifier/classifier.1/Gemm",
        "/features/features.0/features.0.0/Conv",
    ]
    config, labels = load_model_config(out)
    assert config.name == "mobilenet_v2-int8" and len(labels) == 1000
