"""The event loop never blocks on a stuck model run (issue 30): while a run holds a model
thread for seconds, a reload and an unload of that model go through, and ``/health/live``
answers every probe within 100 ms. Real server, loopback only.

A run outlives its request when the request's deadline passes first (504): the model thread
cannot be interrupted, so the run goes on, and stopping the old version must wait for it. That
wait used to be ``executor.shutdown(wait=True)`` on the event loop, which stalled every request
until the run ended.

The model is a real graph whose work depends on its input, like a model with an early exit: a
``Loop`` of 1024×1024 matrix products whose trip count is the mean pixel value × ``ITERATIONS``.
The warm-up's zeros run no iteration (loads stay instant); a white image runs them all (seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.api.conftest import b64, png, solid
from tests.support import tiny_models
from tests.support.server import Server, running_server

ITERATIONS = 320  # products of 1024×1024 matrices for a white image: seconds on one thread
SIZE = 1024
PROBE_LIMIT_S = 0.1
WHITE = {"images": [b64(png(solid((255, 255, 255))))]}
SHORT_DEADLINE = {"x-request-timeout-ms": "300"}


def stuck_classifier(folder: Path) -> None:
    """``tiny-classifier``'s IO and answer, plus an input-dependent Loop that adds exactly 0."""
    # orthogonal: the product neither grows nor shrinks, however many times it is applied
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((SIZE, SIZE)))
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_in", "q"], ["x_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [SIZE, SIZE]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [SIZE, SIZE]),
        ],
    )
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        tiny_models.const("w", np.eye(3, dtype=np.float32) * 20.0),
        helper.make_node("MatMul", ["flat", "w"], ["base_logits"]),
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        tiny_models.const("iterations", np.array(float(ITERATIONS), dtype=np.float32)),
        helper.make_node("Mul", ["mean", "iterations"], ["trips_f"]),
        helper.make_node("Floor", ["trips_f"], ["trips_floor"]),
        helper.make_node("Cast", ["trips_floor"], ["trips"], to=TensorProto.INT64),
        tiny_models.const("q", q.astype(np.float32)),
        tiny_models.const("go", np.array(True)),
        helper.make_node("Loop", ["trips", "go", "q"], ["x_final"], body=body),
        helper.make_node("ReduceSum", ["x_final"], ["total"], keepdims=0),
        tiny_models.const("zero", np.array(0.0, dtype=np.float32)),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["base_logits", "nothing"], ["logits"]),
    ]
    config = tiny_models.classifier_config({"max_batch_size": 1, "max_queue_size": 8})
    tiny_models.save_model(folder, tiny_models.classifier_graph(nodes, "stuck-classifier"), config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("stuck")
    stuck_classifier(root / "stuck")
    with running_server(
        root,
        model_control="explicit",
        intra_op_threads="1",
        default_classify_model="stuck",
    ) as srv:
        yield srv


def _hold_the_model(server: Server) -> None:
    """A white image's run (seconds), whose request gives up at 300 ms: the run goes on."""
    got = httpx.post(f"{server.url}/classify", json=WHITE, headers=SHORT_DEADLINE, timeout=30)
    assert got.status_code == 504, got.text


def _probe_until(server: Server, done: threading.Event, timeout_s: float = 60.0) -> list[float]:
    """``/health/live`` every 50 ms until ``done``: each probe's latency (s), all 200."""
    latencies: list[float] = []
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.get("/health/live")  # the connection is open before the measuring starts
        while not done.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            got = client.get("/health/live")
            latencies.append(time.perf_counter() - started)
            assert got.status_code == 200
            time.sleep(0.05)
    assert done.is_set(), "the stuck run never ended"
    return latencies


def _released(server: Server, count: int) -> bool:
    return server.log().count("model stuck version 1: released") >= count


def test_a_reload_while_a_run_is_stuck_never_stalls_the_loop(server: Server) -> None:
    released_before = server.log().count("model stuck version 1: released")
    _hold_the_model(server)
    started = time.perf_counter()
    reload = httpx.post(f"{server.url}/v2/repository/models/stuck/load", timeout=30)
    assert reload.status_code == 200, reload.text
    assert time.perf_counter() - started < 2.0  # the swap does not wait for the old run
    done = threading.Event()

    def watch_release() -> None:
        while not _released(server, released_before + 1):
            time.sleep(0.02)
        done.set()

    threading.Thread(target=watch_release, daemon=True).start()
    latencies = _probe_until(server, done)
    # the old version's stop waited on its stuck run for a while, and the probes went on
    assert len(latencies) >= 10, latencies
    assert max(latencies) < PROBE_LIMIT_S, latencies
    answer = httpx.post(f"{server.url}/classify", json={"images": [b64(png(solid((255, 0, 0))))]})
    assert answer.status_code == 200
    assert answer.json()["results"][0]["predictions"][0]["label"] == "red"


def test_an_unload_while_a_run_is_stuck_never_stalls_the_loop(server: Server) -> None:
    _hold_the_model(server)
    done = threading.Event()
    result: dict[str, object] = {}

    def unload() -> None:
        started = time.perf_counter()
        got = httpx.post(f"{server.url}/v2/repository/models/stuck/unload", timeout=60)
        result["status"], result["seconds"] = got.status_code, time.perf_counter() - started
        done.set()

    threading.Thread(target=unload, daemon=True).start()
    latencies = _probe_until(server, done)
    assert result["status"] == 200
    assert isinstance(result["seconds"], float) and result["seconds"] > 0.5  # it waited the run
    assert len(latencies) >= 10, latencies
    assert max(latencies) < PROBE_LIMIT_S, latencies
    assert httpx.get(f"{server.url}/v2/models/stuck/ready", timeout=5).status_code != 200
