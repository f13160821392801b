"""Ultralytics YOLO → ONNX export (untrained networks from their model yaml: no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ultralytics", reason="Ultralytics (AGPL, optional) is not installed")

from export.detection import export_yolo
from service.model_config import load_model_config

pytestmark = pytest.mark.export


def _export(tmp_path: Path, spec: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any]:
    """Export an untrained network at 320 px; Ultralytics writes its side files in the cwd."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / spec.removesuffix(".yaml")
    report = export_yolo(spec, out, size=320)
    assert report["passed"]
    config, labels = load_model_config(out)
    return report, config, labels


@pytest.mark.parametrize("spec", ["yolov8n.yaml", "yolo11n.yaml", "yolov5nu.yaml"])
def test_yolo_export_matches_pytorch_and_uses_the_v8_layout(
    tmp_path: Path, spec: str, monkeypatch
) -> None:
    _, config, labels = _export(tmp_path, spec, monkeypatch)
    assert config.format == "yolov8"
    assert config.inputs[0].name == "images"
    assert config.outputs[0].dims[0] == 4 + len(labels)
    assert config.outputs[0].dims[1] == 40 * 40 + 20 * 20 + 10 * 10  # strides 8, 16, 32 at 320 px


@pytest.mark.parametrize("spec", ["yolov8n-seg.yaml", "yolo11n-seg.yaml"])
def test_yolo_seg_export_adds_coefficients_and_prototypes(
    tmp_path: Path, spec: str, monkeypatch
) -> None:
    report, config, labels = _export(tmp_path, spec, monkeypatch)
    assert {c["output"] for c in report["checks"]} == {"output0", "output1"}
    assert (config.task, config.format) == ("segment", "yolov8-seg")
    assert [o.name for o in config.outputs] == ["output0", "output1"]
    assert config.outputs[0].dims == [4 + len(labels) + 32, 40 * 40 + 20 * 20 + 10 * 10]
    assert config.outputs[1].dims == [32, 80, 80]  # prototypes at a quarter of the input


def test_yolo_tasks_the_service_cannot_serve_are_refused(tmp_path: Path, monkeypatch) -> None:
    from export.common import ExportError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError, match="task 'pose' is not served"):
        export_yolo("yolov8n-pose.yaml", tmp_path / "pose", size=320)
    assert not (tmp_path / "pose").exists()
