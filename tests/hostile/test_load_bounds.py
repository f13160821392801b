"""Bounds on overrides and on loads (issue 30), against a real server on loopback: a load call's
config override, or a model's own config.yaml, that asks for more than the server's ceilings, a
warm-up that would not fit in memory, or a config that can never batch, is a 400 ``load_failed``
naming the field, the limit and the setting; the server stays alive, its memory stays where it
was, and what served before still serves.

The issue's case: ``{"batching": {"instances": 16, "max_batch_size": 4096}}`` on mobilenet_v2 was
accepted and its warm-up got the process OOM-killed at 22.6 GB.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper

from devtools.server import rss_mb
from tests.api.conftest import b64, png, solid
from tests.support import tiny_models
from tests.support.server import MODELS, Server, running_server

ISSUE_CASE = {"batching": {"instances": 16, "max_batch_size": 4096}}
RSS_GROWTH_MB = 150.0  # a refused load must not have allocated its batches


def wide_classifier(folder: Path, side: int = 512) -> None:
    """A colour classifier on ``float32[B,3,side,side]``: 3 MiB an item at 512, so 16 instances
    × 4096 items would need terabytes whatever the machine."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        tiny_models.const("w", np.eye(3, dtype=np.float32) * 20.0),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide-classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    config = tiny_models.classifier_config({"max_batch_size": 1, "max_queue_size": 16})
    config["inputs"] = [{"name": "input", "dtype": "float32", "dims": [3, side, side]}]
    config["image"] = {"resize": "stretch", "width": side, "height": side}
    tiny_models.save_model(folder, graph, config)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bounds")
    tiny_models.classifier(root / "clf")
    tiny_models.maskrcnn(root / "seg")  # resize fit, one image per run
    wide_classifier(root / "wide")
    # a folder whose own config.yaml asks for more than the ceilings allow
    tiny_models.classifier(root / "greedy")
    config = yaml.safe_load((root / "greedy" / "config.yaml").read_text())
    config["batching"] = {"max_batch_size": 8, "max_queue_size": 1_000_000}
    (root / "greedy" / "config.yaml").write_text(yaml.safe_dump(config))
    if (MODELS / "mobilenet_v2" / "model.onnx").is_file():
        shutil.copytree(MODELS / "mobilenet_v2", root / "mobilenet_v2")
    return root


def _serve(repo: Path, **settings: str) -> Iterator[Server]:
    with running_server(
        repo,
        model_control="explicit",
        startup_models="clf",
        strict_startup="false",
        intra_op_threads="1",
        default_classify_model="clf",
        **settings,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    """The default ceilings."""
    yield from _serve(repo)


@pytest.fixture(scope="module")
def raised(repo: Path) -> Iterator[Server]:
    """Ceilings raised to the config's own maxima: only the memory estimate stands."""
    yield from _serve(repo, model_max_instances="16", model_max_batch_size="4096")


def _load(server: Server, name: str, config: dict[str, Any] | None = None) -> httpx.Response:
    body = {"parameters": {"config": json.dumps(config)}} if config is not None else None
    return httpx.post(f"{server.url}/v2/repository/models/{name}/load", json=body, timeout=60)


def _assert_alive_and_serving(server: Server) -> None:
    assert server.process.poll() is None, server.log_tail()
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200
    answer = httpx.post(
        f"{server.url}/classify", json={"images": [b64(png(solid((255, 0, 0))))]}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["predictions"][0]["label"] == "red"


OVER_CEILING = [
    ("clf", ISSUE_CASE, ["batching.instances", "ceiling of 8", "ORTSERVE_MODEL_MAX_INSTANCES"]),
    (
        "clf",
        {"batching": {"max_batch_size": 4096}},
        ["batching.max_batch_size", "ceiling of 256", "ORTSERVE_MODEL_MAX_BATCH_SIZE"],
    ),
    (
        "clf",
        {"batching": {"max_queue_size": 1_000_000}},
        ["batching.max_queue_size", "ceiling of 4096", "ORTSERVE_MODEL_MAX_QUEUE_SIZE"],
    ),
    (
        "clf",
        {"batching": {"max_delay_ms": 1000}},
        ["batching.max_delay_ms", "ceiling of 100", "ORTSERVE_MODEL_MAX_DELAY_MS"],
    ),
    (
        "clf",
        {"runtime": {"providers": [{"name": "cpu", "intra_op_threads": 100_000}]}},
        ["runtime.providers.0.intra_op_threads", "ORTSERVE_MODEL_MAX_THREADS"],
    ),
    (
        "clf",
        {"runtime": {"providers": [{"name": "openvino", "num_of_threads": 100_000}]}},
        ["runtime.providers.0.num_of_threads", "ORTSERVE_MODEL_MAX_THREADS"],
    ),
    ("greedy", None, ["batching.max_queue_size", "ORTSERVE_MODEL_MAX_QUEUE_SIZE"]),
    (
        "seg",
        {"batching": {"max_batch_size": 8}},
        ["image.resize fit", "batching.max_batch_size 8"],
    ),
]


@pytest.mark.parametrize(("name", "override", "words"), OVER_CEILING)
def test_a_load_over_a_ceiling_is_a_400_naming_the_field_the_limit_and_the_setting(
    server: Server, name: str, override: dict[str, Any] | None, words: list[str]
) -> None:
    got = _load(server, name, override)
    assert got.status_code == 400, got.text
    assert got.json()["error_type"] == "load_failed"
    for word in words:
        assert word in got.json()["error"], got.json()["error"]
    _assert_alive_and_serving(server)


def test_the_issue_case_is_a_400_from_the_memory_estimate_and_the_server_lives(
    raised: Server, repo: Path
) -> None:
    """16 instances × batch 4096 with the ceilings out of the way: refused before any session
    opens or any batch is allocated, naming the estimate, the budget and the setting."""
    before = rss_mb(raised.process.pid)
    names = ["wide"] + (["mobilenet_v2"] if (repo / "mobilenet_v2").is_dir() else [])
    for name in names:
        got = _load(raised, name, ISSUE_CASE)
        assert got.status_code == 400, got.text
        body = got.json()
        assert body["error_type"] == "load_failed"
        error = body["error"]
        assert "16 instance(s) running batches of 4096" in error, error
        assert "GiB" in error and "load memory budget" in error
        assert "ORTSERVE_MODEL_MEMORY_BUDGET_MB" in error
        _assert_alive_and_serving(raised)
    assert rss_mb(raised.process.pid) - before < RSS_GROWTH_MB
    assert httpx.get(f"{raised.url}/v2/models/wide/ready", timeout=5).status_code != 200


def test_a_load_within_the_bounds_still_loads(server: Server) -> None:
    got = _load(server, "wide", {"batching": {"max_batch_size": 2}})
    assert got.status_code == 200, got.text
    assert httpx.get(f"{server.url}/v2/models/wide/ready", timeout=5).status_code == 200
