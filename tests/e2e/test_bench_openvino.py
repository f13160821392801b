"""``python -m benchmarks.openvino`` (``make bench-openvino``) end to end on a tiny classifier: real
servers from both venvs, the real load generator, ONNX Runtime alone in each venv. Checks that
each arm ran on its provider, in alternated rounds, and that the ratios are reported; not how fast
anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_openvino import OPENVINO_PYTHON
from tests.support import tiny_models
from tests.support.server import REPO_ROOT

CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
pytestmark = pytest.mark.skipif(
    not OPENVINO_PYTHON.is_file(), reason="OpenVINO environment not built: run `make openvino`"
)


def test_both_providers_are_served_in_alternated_rounds_and_the_ratios_reported(
    tmp_path: Path,
) -> None:
    tiny_models.classifier(tmp_path / "models" / "tiny-classifier")
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.openvino", "--models", str(tmp_path / "models")]
    cmd += ["--openvino-python", str(OPENVINO_PYTHON), "--out", str(out)]
    cmd += ["--scenarios", "classify=tiny-classifier,detect=not-built", "--rounds", "2"]
    cmd += ["--concurrency", "4", "--duration-s", "0.5", "--warmup-s", "0.2", "--latency-s", "0.1"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "not-built is not in" in done.stdout  # a missing model is left out, saying so
    [saved] = out.glob("openvino-*.json")
    assert (out / saved.name.replace(".json", ".md")).read_text().strip() in done.stdout
    report = json.loads(saved.read_text())
    assert report["scenarios"] == {"classify": "tiny-classifier"}
    assert [r["order"] for r in report["rounds"]] == [["cpu", "openvino"], ["openvino", "cpu"]]
    for one in report["rounds"]:
        served, latency = one["served"], one["latency"]
        assert served["openvino"]["tiny-classifier"]["provider_options"][OPENVINO] == {
            "device_type": "CPU",
            "precision": "FP32",
        }
        assert set(served["cpu"]["tiny-classifier"]["provider_options"]) == {CPU}
        for arm in ("cpu", "openvino"):
            assert served[arm]["tiny-classifier"]["errors"] == {}
            assert served[arm]["tiny-classifier"]["ok"] > 0
        assert latency["openvino"]["models"]["tiny-classifier"]["providers"][0] == OPENVINO
        assert latency["cpu"]["models"]["tiny-classifier"]["providers"] == [CPU]
        assert set(latency["cpu"]["models"]["tiny-classifier"]["by_batch"]) == {"1", "8"}
    summary = report["summary"]
    assert len(summary["served"]["tiny-classifier"]["openvino_over_cpu"]["rounds"]) == 2
    assert set(summary["in_process"]) == {"tiny-classifier@1", "tiny-classifier@8"}
    assert all(s["openvino_speedup"]["median"] > 0 for s in summary["in_process"].values())
