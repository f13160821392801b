"""benchmarks.limit.Limit: the model alone in every arrangement the server may run it in (one
session on all cores; with ``instances``, that many sessions side by side), the better counted."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from PIL import Image

from benchmarks.limit import Limit
from benchmarks.scenarios import Scenario
from tests.support import tiny_models


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 200, 0)).save(buf, format="PNG")
    return buf.getvalue()


def scenario() -> Scenario:
    return Scenario("classify", "clf", "/classify", ["{}"], 1, [png()])


def test_the_limit_measures_instances_side_by_side_and_keeps_the_better(tmp_path: Path) -> None:
    tiny_models.classifier(tmp_path / "clf", max_batch_size=4)
    config = yaml.safe_load((tmp_path / "clf" / "config.yaml").read_text())
    config["batching"]["instances"] = 2
    (tmp_path / "clf" / "config.yaml").write_text(yaml.safe_dump(config))
    limit = Limit(tmp_path, scenario())
    assert sorted(limit.arrangements) == [1, 2]
    assert [len(s) for s in limit.arrangements.values()] == [1, 2]
    rounds = [limit.measure(0.05) for _ in range(2)]
    for measured in rounds:
        assert set(measured["sessions"]) == {1, 2, 4}
        assert set(measured["sessions"].values()) <= {1, 2}
        assert all(rate > 0 for rate in measured["with_preparation"].values())
    summary = limit.summary(rounds)
    assert summary["sessions"] in (1, 2)
    assert summary["items_per_s"] == max(summary["by_batch"].values())


def test_a_single_instance_model_has_one_arrangement(tmp_path: Path) -> None:
    tiny_models.classifier(tmp_path / "clf", max_batch_size=2)
    limit = Limit(tmp_path, scenario())
    assert list(limit.arrangements) == [1]
    measured = limit.measure(0.05)
    assert set(measured["sessions"].values()) == {1}
