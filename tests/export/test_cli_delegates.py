"""``ortserve export`` and ``ortserve bench`` really launch their modules (no stub): a small export
writes a servable folder, bench's real argument parser answers, and exit codes come back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.model_config import load_model_config

ORTSERVE = [sys.executable, "-m", "service.cli"]


def test_ortserve_export_writes_a_model_folder(tmp_path: Path) -> None:
    out = tmp_path / "tiny-mnv2"
    options = ["--arch", "mobilenet_v2", "--random-init", "--num-classes", "3", "--image-size"]
    done = subprocess.run(
        [*ORTSERVE, "export", "classifier", *options, "64", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config, labels = load_model_config(out)
    assert config.task == "classify" and len(labels) == 3
    assert (out / "parity.json").is_file()


def test_ortserve_export_passes_the_exit_code_back() -> None:
    done = subprocess.run(
        [*ORTSERVE, "export", "no-such-family"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2  # argparse's usage error, from the real export parser
    assert "invalid choice" in done.stderr


def test_ortserve_bench_runs_the_benchmark_module() -> None:
    done = subprocess.run(
        [*ORTSERVE, "bench", "--help"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0
    assert "--memory-requests" in done.stdout  # an option only benchmarks.run has
