"""``make bench`` end to end, shortened: the default classifier and embedder, two rounds, real
servers and the real load generator. Checks that it runs and reports, not how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.server import MODELS, REPO_ROOT

NEEDED = ("mobilenet_v2", "all-MiniLM-L6-v2")

pytestmark = pytest.mark.skipif(
    any(not (MODELS / name / "model.onnx").is_file() for name in NEEDED),
    reason="default models not built: run `make models`",
)


def test_bench_interleaves_rounds_and_reports_ratios_per_round(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    for name in NEEDED:  # only these two: loading every default model is not what is tested
        (repo / name).symlink_to(MODELS / name)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.run", "--models", str(repo)]
    cmd += ["--only", "classify,embed", "--concurrency", "1,4", "--duration-s", "1"]
    cmd += ["--repeat", "2", "--limit-s", "0.2", "--memory-requests", "40", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| scenario | limit items/s (batch) |" in done.stdout
    assert done.stdout.count("[round ") == 4  # 2 rounds × 2 scenarios
    [saved] = out.glob("bench-*.json")
    assert (out / saved.name.replace(".json", ".md")).read_text().strip() in done.stdout
    report = json.loads(saved.read_text())
    assert set(report["scenarios"]) == {"classify", "embed"}
    for entry in report["scenarios"].values():
        assert len(entry["limit"]["rounds"]) == 2
        assert entry["limit"]["items_per_s"] > 0
        prepared = entry["limit"]["with_preparation"]  # decoding beside the model
        assert prepared["items_per_s"] > 0
        assert set(prepared["by_batch"]) == set(entry["limit"]["by_batch"])
        assert prepared["items_per_s"] == max(prepared["by_batch"].values())
        for kind in ("served", "naive"):
            assert [run["concurrency"] for run in entry[kind]] == [1, 4]
            for run in entry[kind]:
                assert run["errors"] == {}
                assert run["ok"] > 0
                assert len(run["runs_rps"]) == 2
        for i, ratios in enumerate(entry["ratios"]):
            for key in (
                "served_over_limit",
                "served_over_naive",
                "served_over_limit_with_preparation",
            ):
                assert len(ratios[key]["rounds"]) == 2
                # the median of the per-round ratios, each one finite and positive
                assert all(np.isfinite(r) and r > 0 for r in ratios[key]["rounds"])
                assert ratios[key]["median"] == pytest.approx(np.median(ratios[key]["rounds"]))
            # served / naive per round is the two servers' measured throughputs of that round
            # (one item per request in both scenarios)
            served, naive = entry["served"][i]["runs_rps"], entry["naive"][i]["runs_rps"]
            assert ratios["served_over_naive"]["rounds"] == pytest.approx(
                [a / b for a, b in zip(served, naive, strict=True)]
            )
            limits = [
                r["by_batch"][str(entry["limit"]["best_batch"])] for r in entry["limit"]["rounds"]
            ]
            assert ratios["served_over_limit"]["rounds"] == pytest.approx(
                [a / b for a, b in zip(served, limits, strict=True)]
            )
    memory = report["memory"]
    assert memory["requests_first"] == 20 and memory["requests_total"] == 40
    assert memory["rss_loaded_mb"] > 0 and memory["rss_after_load_mb"] > 0
    assert memory["rss_after_total_mb"] > 0
