"""``make bench``'s pipeline scenario, shortened: the server-side pipeline against the client-side
alternative, through ``benchmarks.run --only pipeline``. Checks that it runs and reports both
ways, not how fast either is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.pipeline import NEEDED

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "models"

pytestmark = pytest.mark.skipif(
    any(not (MODELS / name / "config.yaml").is_file() for name in NEEDED),
    reason="default models not built: run `make models`",
)


def test_bench_reports_the_pipeline_against_the_client_side_alternative(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    for name in NEEDED:  # only these: loading every default model is not what is tested
        (repo / name).symlink_to(MODELS / name)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.run", "--models", str(repo), "--only", "pipeline"]
    cmd += ["--repeat", "2", "--duration-s", "2", "--pipeline-concurrency", "4"]
    cmd += ["--memory-requests", "0", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[round ") == 2
    assert "server-side / client-side images/s:" in done.stdout
    assert "/detect alone / client-side images/s:" in done.stdout
    [saved] = out.glob("bench-*.json")
    result = json.loads(saved.read_text())["pipeline"]
    assert result["concurrency"] == 4
    assert len(result["server_over_client"]["rounds"]) == 2
    assert len(result["ceiling_over_client"]["rounds"]) == 2
    for way in ("server_side", "client_side", "detect_only"):
        assert result[way]["images_per_s"] > 0
        assert result[way]["errors"] == 0
