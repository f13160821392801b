"""``python -m benchmarks.batching`` (the GPU check of ``make bench-gpu``) end to end on CPU, on a
tiny classifier: a real server, the real load generator. Checks that both modes are served as
configured and reported, not how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.support import tiny_models

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU = "CPUExecutionProvider"


def batching_bench(model_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "benchmarks.batching", "--model-dir", str(model_dir)]
    cmd += ["--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_serves_the_model_batched_and_one_by_one_and_reports_the_ratio(tmp_path: Path) -> None:
    model = tmp_path / "tiny-classifier"
    tiny_models.classifier(model, max_batch_size=16)
    out = tmp_path / "results"
    done = batching_bench(
        model,
        out,
        *("--providers", "cpu", "--concurrency", "8", "--duration-s", "1", "--repeat", "2"),
        *("--warmup-s", "0.3", "--limit-s", "0.1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dynamic / batch-1 at concurrency 8:" in done.stdout
    [saved] = out.glob("batching-*.json")
    assert (out / saved.name.replace(".json", ".md")).read_text().strip() in done.stdout
    report = json.loads(saved.read_text())
    assert report["modes"] == {
        "dynamic": {"model": "tiny-classifier", "providers": [CPU], "max_batch_size": 16},
        "batch-1": {"model": "tiny-classifier-batch1", "providers": [CPU], "max_batch_size": 1},
    }
    [point] = report["points"]
    assert point["concurrency"] == 8
    for mode in ("dynamic", "batch-1"):
        assert point[mode]["errors"] == {}
        assert point[mode]["ok"] > 0
        assert len(point[mode]["runs_rps"]) == 2
    assert point["batch-1"]["mean_batch_size"] == 1.0  # max_batch_size 1: never merged
    assert point["dynamic"]["mean_batch_size"] > 1.0  # 8 clients at once: merged
    ratio = point["dynamic_over_batch1"]
    assert len(ratio["rounds"]) == 2
    # each round's ratio is that round's two measured throughputs, and the median is theirs
    assert ratio["rounds"] == pytest.approx(
        [
            a / b
            for a, b in zip(point["dynamic"]["runs_rps"], point["batch-1"]["runs_rps"], strict=True)
        ]
    )
    assert ratio["median"] == pytest.approx(np.median(ratio["rounds"]))
    limit = report["limit"]
    assert limit["providers"] == [CPU]
    assert sorted(int(b) for b in limit["by_batch"]) == [1, 2, 4, 8, 16]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA"
)
def test_asking_for_cuda_without_it_exits_1_saying_why(tmp_path: Path) -> None:
    model = tmp_path / "tiny-classifier"
    tiny_models.classifier(model)
    done = batching_bench(model, tmp_path / "results", "--providers", "cuda")
    assert done.returncode == 1
    assert "cannot run on --providers cuda" in done.stderr
    assert "CUDAExecutionProvider" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists()
