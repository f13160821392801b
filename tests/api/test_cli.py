"""The ``ortserve`` command line (click's CliRunner, no server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from service import cli
from service.settings import Settings

TINY = [
    "tiny-classifier",
    "tiny-embedder",
    "tiny-maskrcnn",
    "tiny-nanodet",
    "tiny-seg",
    "tiny-yolo",
    "tiny-yolo-seg",
    "tiny-yolov5",
]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


@pytest.fixture
def broken_repo(tiny_repo: Path, tmp_path: Path) -> Path:
    """Two good models and three broken ones, each broken in a different way."""
    for name in ("tiny-classifier", "tiny-embedder"):
        shutil.copytree(tiny_repo / name, tmp_path / name)
    # graph and config disagree: only ONNX Runtime can tell
    shutil.copytree(tiny_repo / "tiny-seg", tmp_path / "bad-dims")
    config = yaml.safe_load((tmp_path / "bad-dims" / "config.yaml").read_text())
    config["inputs"][0]["dims"] = [3, 64, 64]
    (tmp_path / "bad-dims" / "config.yaml").write_text(yaml.safe_dump(config))
    # a config typo
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "config.yaml").write_text("task: classify\nformat: logits\n")
    # not an ONNX file at all
    shutil.copytree(tiny_repo / "tiny-yolo", tmp_path / "garbage-onnx")
    (tmp_path / "garbage-onnx" / "model.onnx").write_bytes(b"not a model")
    return tmp_path


def test_models_validate_accepts_a_good_repository(tiny_repo: Path) -> None:
    result = invoke("models", "--repository", str(tiny_repo), "--validate")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "FORMAT", "BATCH", "INPUTS", "PROVIDER", "STATUS"]
    for name in TINY:
        [line] = [ln for ln in lines if ln.startswith(name + " ")]
        assert line.split()[-2:] == ["CPU", "ready"]


def test_models_validate_names_every_broken_model_and_exits_1(broken_repo: Path) -> None:
    result = CliRunner().invoke(
        cli.main, ["models", "-r", str(broken_repo), "--validate", "--json"]
    )
    assert result.exit_code == 1
    rows = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert {n: m["status"] for n, m in rows.items()} == {
        "tiny-classifier": "ready",
        "tiny-embedder": "ready",
        "bad-dims": "failed",
        "typo": "failed",
        "garbage-onnx": "failed",
    }
    assert "dims[1] is 64 in config but 32 in the graph" in rows["bad-dims"]["error"]
    assert "format" in rows["typo"]["error"]
    assert "onnxruntime could not load" in rows["garbage-onnx"]["error"]


def test_models_without_validate_checks_configs_only(broken_repo: Path) -> None:
    result = CliRunner().invoke(cli.main, ["models", "-r", str(broken_repo)])
    assert result.exit_code == 1  # the typo is a config error
    assert "error: model 'typo'" in result.output
    # a graph problem needs --validate to be found
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("bad-dims ")]
    assert line.split()[-1] == "ok"


def test_models_on_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["models", "-r", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "is not a directory" in result.output


def test_serve_maps_options_onto_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import service.__main__ as entry

    seen: list[Settings] = []
    monkeypatch.setattr(entry, "serve", seen.append)
    monkeypatch.setenv("ORTSERVE_LOG_LEVEL", "warning")
    result = invoke(
        "serve",
        "--model-repository",
        str(tmp_path),
        "--port",
        "9123",
        "--providers",
        "cpu",
        "--no-strict-startup",
        "--cors-origins",
        "http://a.example,http://b.example",
    )
    assert result.exit_code == 0, result.output
    [settings] = seen
    assert settings.model_repository == tmp_path
    assert settings.port == 9123
    assert settings.providers == "cpu"
    assert settings.strict_startup is False
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.log_level == "warning"  # unset options still come from the environment
    bad = CliRunner().invoke(cli.main, ["serve", "--port", "0"])
    assert bad.exit_code == 2
    assert "--port" in bad.output


def test_export_and_bench_pass_their_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []

    def fake(module: str, args: tuple[str, ...]) -> int:
        calls.append((module, tuple(args)))
        return 3

    monkeypatch.setattr(cli, "delegate", fake)
    result = CliRunner().invoke(cli.main, ["export", "mobilenet_v2", "--out", "models", "--help"])
    assert result.exit_code == 3
    result = CliRunner().invoke(cli.main, ["bench", "--duration-s", "2"])
    assert result.exit_code == 3
    assert calls == [
        ("export", ("mobilenet_v2", "--out", "models", "--help")),
        ("benchmarks.run", ("--duration-s", "2")),
    ]
