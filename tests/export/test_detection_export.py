"""Ultralytics YOLO → ONNX export (untrained networks from their model yaml: no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ultralytics", reason="Ultralytics (AGPL, optional) is not installed")

from export.detection import export_yolo
from service.runtime.model_config import load_model_config

pytestmark = pytest.mark.export


@pytest.mark.parametrize("spec", ["yolov8n.yaml", "yolo11n.yaml", "yolov5nu.yaml"])
def test_yolo_export_matches_pytorch_and_uses_the_v8_layout(
    tmp_path: Path, spec: str, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / spec.removesuffix(".yaml")
    report = export_yolo(spec, out, size=320)
    assert report["passed"]
    config, labels = load_model_config(out)
    assert config.format == "yolov8"
    assert config.inputs[0].name == "images"
    assert config.outputs[0].dims[0] == 4 + len(labels)
    assert config.outputs[0].dims[1] == 40 * 40 + 20 * 20 + 10 * 10  # strides 8, 16, 32 at 320 px
