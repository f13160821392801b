"""The ``tensor`` task end to end: folders holding only ``model.onnx`` and ``task: tensor``,
served by a real ``python -m service`` and called with the real ``tritonclient.http``; every
output compared with in-process ONNX Runtime on the same graph."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import tensor_graphs
from tests.support.server import Server, running_server

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (dev extra)")

V2 = {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tensor-repo")
    tensor_graphs.regressor(root / "regressor")
    tensor_graphs.mixed_tabular(root / "tabular")
    tensor_graphs.token_tagger(root / "tagger")
    tensor_graphs.unbatched(root / "unbatched")
    # contradictions, recorded as failed at start-up (strict_startup false)
    tensor_graphs.regressor(
        root / "wrong-dtype",
        config={"task": "tensor", "inputs": [{"name": "x", "dtype": "int64", "dims": [4]}]},
    )
    tensor_graphs.unbatched(
        root / "wrong-batch", config={"task": "tensor", "batching": {"max_batch_size": 4}}
    )
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    with running_server(repo, model_control="explicit", strict_startup="false") as srv:
        yield srv


def triton(server: Server) -> Any:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def infer(client: Any, model: str, feeds: dict[str, np.ndarray], binary: bool) -> dict[str, Any]:
    inputs = []
    for name, arr in feeds.items():
        tensor = httpclient.InferInput(name, list(arr.shape), V2[arr.dtype.type])
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def tagger_feeds(rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, tensor_graphs.TAGGER_VOCAB, size=(rows, length), dtype=np.int64)
    mask = np.ones((rows, length), np.int64)
    mask[:, length - 1 :] = 0  # the last token is padding
    return {"input_ids": ids, "attention_mask": mask}


def cases(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        "regressor": {"x": rng.normal(size=(5, 4)).astype(np.float32)},
        "tabular": {
            "num": rng.normal(size=(6, 3)),
            "cat": rng.integers(0, 4, size=(6, 1), dtype=np.int64),
        },
        "tagger": tagger_feeds(3, 7, seed),
        "unbatched": {"v": np.array([1.0, -2.0, 3.5], np.float32)},
    }


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", ["regressor", "tabular", "tagger", "unbatched"])
def test_a_graph_with_only_task_tensor_serves_what_onnxruntime_computes(
    server: Server, repo: Path, model: str, binary: bool
) -> None:
    feeds = cases()[model]
    got = infer(triton(server), model, feeds, binary)
    want = tensor_graphs.reference(repo / model / "model.onnx", feeds)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_the_metadata_lists_the_inputs_and_outputs_completed_from_the_graph(
    server: Server,
) -> None:
    client = triton(server)
    meta = client.get_model_metadata("tabular")
    assert meta["inputs"] == [
        {"name": "num", "datatype": "FP64", "shape": [-1, 3]},
        {"name": "cat", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP64", "shape": [-1, 1]}]
    tagger = client.get_model_metadata("tagger")
    assert tagger["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, 5]}]
    assert client.get_model_metadata("unbatched")["inputs"] == [
        {"name": "v", "datatype": "FP32", "shape": [3]}
    ]
    assert client.get_model_config("tabular")["max_batch_size"] == 8
    assert client.get_model_config("unbatched")["max_batch_size"] == 0
    listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert listed["tagger"]["task"] == "tensor" and listed["tagger"]["status"] == "ready"
    assert listed["tagger"]["default_for"] == []


@pytest.mark.parametrize("model", ["regressor", "tabular", "tagger"])
def test_rows_sent_one_by_one_at_once_equal_one_request_of_all_rows(
    server: Server, repo: Path, model: str
) -> None:
    feeds = cases(seed=7)[model]
    rows = len(next(iter(feeds.values())))
    client = triton(server)
    together = infer(client, model, feeds, binary=True)

    def one(i: int) -> dict[str, Any]:
        return infer(triton(server), model, {n: v[i : i + 1] for n, v in feeds.items()}, True)

    with ThreadPoolExecutor(max_workers=rows) as pool:
        alone = list(pool.map(one, range(rows)))
    want = tensor_graphs.reference(repo / model / "model.onnx", feeds)
    for name, value in want.items():
        stacked = np.concatenate([a[name] for a in alone])
        np.testing.assert_allclose(stacked, together[name], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(together[name], value, rtol=1e-5, atol=1e-6)


def test_requests_of_different_sequence_lengths_at_once_are_never_stacked_together(
    server: Server, repo: Path
) -> None:
    requests = [tagger_feeds(2, length, seed=length) for length in (3, 9, 3, 5, 9, 12)]

    def call(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return infer(triton(server), "tagger", feeds, binary=True)["logits"]

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(call, requests))
    model = repo / "tagger" / "model.onnx"
    for feeds, got in zip(requests, answers, strict=True):
        np.testing.assert_allclose(got, tensor_graphs.reference(model, feeds)["logits"], rtol=1e-5)


def test_a_config_that_contradicts_the_graph_fails_at_start_up_naming_the_field(
    server: Server,
) -> None:
    listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert listed["wrong-dtype"]["status"] == "failed"
    assert (
        "input 'x': dtype is float32 in the graph, int64 in config"
        in (listed["wrong-dtype"]["error"])
    )
    assert listed["wrong-batch"]["status"] == "failed"
    assert "field batching.max_batch_size: 4 > 0" in listed["wrong-batch"]["error"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"inputs": [{"name": "x", "dtype": "float64", "dims": [4]}]},
            "input 'x': dtype is float32 in the graph, float64 in config",
        ),
        (
            {"inputs": [{"name": "x", "dtype": "float32", "dims": [3]}]},
            "input 'x': dims[0] is 3 in config but 4 in the graph",
        ),
        ({"outputs": [{"name": "score", "dims": [1]}]}, "outputs: 'score' is not a graph output"),
    ],
    ids=["dtype", "dims", "name"],
)
def test_a_load_call_that_contradicts_the_graph_is_a_400_naming_the_field(
    server: Server, override: dict[str, Any], message: str
) -> None:
    body = {"parameters": {"config": json.dumps(override)}}
    r = httpx.post(f"{server.url}/v2/repository/models/regressor/load", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    # the serving version stays
    assert httpx.get(f"{server.url}/v2/models/regressor/ready").status_code == 200


def test_a_load_call_with_a_batch_size_on_a_graph_without_a_batch_axis_is_a_400(
    server: Server,
) -> None:
    body = {"parameters": {"config": '{"batching": {"max_batch_size": 2}}'}}
    r = httpx.post(f"{server.url}/v2/repository/models/unbatched/load", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert "field batching.max_batch_size: 2 > 0" in r.json()["error"]
