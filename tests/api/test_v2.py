"""Open Inference Protocol v2 routes, in process (the real tritonclient is in tests/e2e)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.support.tiny_models import embedding_table


def json_tensor(name: str, arr: np.ndarray, datatype: str) -> dict[str, object]:
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr.tolist()}


def binary_body(inputs: list[tuple[str, np.ndarray, str]], **extra: object) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": dt,
                "parameters": {"binary_data_size": arr.nbytes},
            }
            for name, arr, dt in inputs
        ],
        **extra,
    }
    head = orjson.dumps(header)
    little = [np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")) for _, arr, _ in inputs]
    return head + b"".join(arr.tobytes() for arr in little), len(head)


def read_binary(content: bytes, header_length: int) -> dict[str, np.ndarray]:
    """Decode a binary v2 response the way tritonclient does."""
    header = orjson.loads(content[:header_length])
    out, offset = {}, header_length
    # the wire is little-endian whatever this machine is
    dtypes = {
        "FP32": "<f4",
        "FP16": "<f2",
        "INT64": "<i8",
        "INT32": "<i4",
        "UINT8": "u1",
        "BOOL": "?",
    }
    for tensor in header["outputs"]:
        size = tensor["parameters"]["binary_data_size"]
        raw = content[offset : offset + size]
        out[tensor["name"]] = np.frombuffer(raw, dtypes[tensor["datatype"]]).reshape(
            tensor["shape"]
        )
        offset += size
    assert offset == len(content)
    return out


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "ortserve"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        ("tiny-classifier", [("input", "FP32", [-1, 3, 32, 32])], [("logits", "FP32", [-1, 3])]),
        (
            "tiny-embedder",
            [("input_ids", "INT64", [-1, -1]), ("attention_mask", "INT64", [-1, -1])],
            [("sentence_embedding", "FP32", [-1, 8])],
        ),
        (
            "tiny-maskrcnn",
            [("image", "FP32", [3, -1, -1])],  # no batch axis: max_batch_size 0
            [
                ("boxes", "FP32", [-1, 4]),
                ("labels", "INT64", [-1]),
                ("scores", "FP32", [-1]),
                ("masks", "FP32", [-1, 1, -1, -1]),
            ],
        ),
    ],
)
def test_model_metadata_lists_datatypes_and_shapes_with_the_batch_axis(
    client: TestClient, model: str, inputs: list, outputs: list
) -> None:
    meta = client.get(f"/v2/models/{model}").json()
    assert meta["name"] == model
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        tuple(i) for i in inputs
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        tuple(o) for o in outputs
    ]
    assert client.get(f"/v2/models/{model}/versions/1").json() == meta
    assert client.get(f"/v2/models/{model}/ready").json() == {"ready": True}


def test_model_config_follows_tritons_layout(client: TestClient) -> None:
    config = client.get("/v2/models/tiny-classifier/config").json()
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000


def test_unknown_model_and_version_are_404_with_an_error_member(client: TestClient) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/tiny-seg/versions/2"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert isinstance(r.json()["error"], str)
        assert r.json()["error_type"] == "model_not_found", (path, r.json())


def test_json_inference_splits_rows_through_the_batcher_and_restacks_them(
    client: TestClient,
) -> None:
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    r = client.post(
        "/v2/models/tiny-classifier/infer",
        json={"id": "req-7", "inputs": [json_tensor("input", x, "FP32")]},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model_name"] == "tiny-classifier"
    assert body["id"] == "req-7"
    [out] = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("logits", "FP32", [5, 3])
    # the tiny classifier's logits are 20 × the mean of each channel
    want = x.mean(axis=(2, 3)) * 20
    np.testing.assert_allclose(np.reshape(out["data"], (5, 3)), want, rtol=1e-5)
    # rows ran as batcher items: the five rows were batched together (max_batch_size 8)
    assert int(r.headers["x-batch-size"]) > 1
    # batch invariance: each row alone gives the same numbers
    alone = client.post(
        "/v2/models/tiny-classifier/infer", json={"inputs": [json_tensor("input", x[3:4], "FP32")]}
    ).json()
    np.testing.assert_allclose(alone["outputs"][0]["data"], want[3], rtol=1e-6)


def test_binary_tensors_in_and_out(client: TestClient) -> None:
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    body, n = binary_body([("input", x, "FP32")], parameters={"binary_data_output": True})
    r = client.post(
        "/v2/models/tiny-classifier/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(n)},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    out = read_binary(r.content, int(r.headers["inference-header-content-length"]))
    np.testing.assert_allclose(out["logits"], x.mean(axis=(2, 3)) * 20, rtol=1e-5)


def test_per_output_binary_choice_and_output_selection(client: TestClient) -> None:
    image = np.random.default_rng(2).random((3, 20, 30), dtype=np.float32)
    r = client.post(
        "/v2/models/tiny-maskrcnn/infer",
        json={
            "inputs": [json_tensor("image", image, "FP32")],
            "outputs": [
                {"name": "scores"},
                {"name": "masks", "parameters": {"binary_data": True}},
            ],
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    header = orjson.loads(r.content[:n])
    scores, masks = header["outputs"]
    assert scores["name"] == "scores"
    assert scores["data"] == pytest.approx([float(image[0].mean())], rel=1e-5)
    assert masks["shape"] == [1, 1, 20, 30]
    got = np.frombuffer(r.content[n:], np.float32).reshape(1, 1, 20, 30)
    np.testing.assert_array_equal(got[0, 0], image[0])  # the mask is the red channel


def test_text_rows_are_padded_by_collate_and_keep_their_own_results(client: TestClient) -> None:
    table = embedding_table_of(client)
    ids = np.array([[2, 4, 5, 3], [2, 6, 3, 0]], np.int64)  # row 2 is padded by the client
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64)
    r = client.post(
        "/v2/models/tiny-embedder/infer",
        json={
            "inputs": [
                json_tensor("input_ids", ids, "INT64"),
                json_tensor("attention_mask", mask, "INT64"),
            ]
        },
    )
    assert r.status_code == 200, r.text
    got = np.reshape(r.json()["outputs"][0]["data"], (2, 8))
    want = np.stack([table[ids[0]].mean(0), table[ids[1, :3]].mean(0)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def embedding_table_of(client: TestClient) -> np.ndarray:
    folder: Path = client.app.state.registry.models["tiny-embedder"].folder  # type: ignore[attr-defined]
    return embedding_table(folder)


def test_gzip_request_bodies_are_accepted(client: TestClient) -> None:
    x = np.ones((1, 3, 32, 32), np.float32)
    payload = orjson.dumps({"inputs": [json_tensor("input", x, "FP32")]})
    r = client.post(
        "/v2/models/tiny-classifier/infer",
        content=gzip.compress(payload),
        headers={"content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == pytest.approx([20.0, 20.0, 20.0])


X = np.zeros((1, 3, 32, 32), np.float32)


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"inputs": [json_tensor("pixels", X, "FP32")]}, "unknown inputs ['pixels']"),
        ({"inputs": [json_tensor("input", X, "FP64")]}, "datatype is FP64, the model takes FP32"),
        (
            {"inputs": [json_tensor("input", np.zeros((1, 3, 32, 31), np.float32), "FP32")]},
            "does not match the model's [-1, 3, 32, 32]",
        ),
        (
            {"inputs": [{**json_tensor("input", X, "FP32"), "data": [1.0, 2.0]}]},
            "2 values for shape",
        ),
        (
            {"inputs": [{**json_tensor("input", X, "FP32"), "data": ["a"] * 3072}]},
            "only numbers",
        ),
        ({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32"}]}, "send data"),
        (
            {"inputs": [json_tensor("input", X, "FP32")], "outputs": [{"name": "probs"}]},
            "unknown output 'probs'",
        ),
        ({"inputs": []}, "invalid inference request"),
        ({"inputs": [json_tensor("input", X, "FP32")], "surprise": 1}, "invalid inference request"),
        (
            {"inputs": [json_tensor("input", np.zeros((0, 3, 32, 32), np.float32), "FP32")]},
            "empty tensors",
        ),
    ],
)
def test_invalid_requests_are_400_with_the_v2_error_member(
    client: TestClient, request_body: dict, message: str
) -> None:
    r = client.post("/v2/models/tiny-classifier/infer", json=request_body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_text_inputs_must_agree_and_must_all_be_sent(client: TestClient) -> None:
    ids = np.array([[2, 4, 3]], np.int64)
    missing = client.post(
        "/v2/models/tiny-embedder/infer", json={"inputs": [json_tensor("input_ids", ids, "INT64")]}
    )
    assert missing.status_code == 400
    assert "missing inputs ['attention_mask']" in missing.json()["error"]
    ragged = client.post(
        "/v2/models/tiny-embedder/infer",
        json={
            "inputs": [
                json_tensor("input_ids", ids, "INT64"),
                json_tensor("attention_mask", np.ones((1, 4), np.int64), "INT64"),
            ]
        },
    )
    assert ragged.status_code == 400
    assert "same shape" in ragged.json()["error"]
    fractional = client.post(
        "/v2/models/tiny-embedder/infer",
        json={
            "inputs": [
                {"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [2.5]},
                json_tensor("attention_mask", np.ones((1, 1), np.int64), "INT64"),
            ]
        },
    )
    assert fractional.status_code == 400
    assert "fractions" in fractional.json()["error"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda body, n: (body[:-4], str(n)), "ends before"),
        (lambda body, n: (body + b"xxxx", str(n)), "not claimed"),
        (lambda body, n: (body, "abc"), "must be an integer"),
        (lambda body, n: (body, str(len(body) + 1)), "Inference-Header-Content-Length is"),
    ],
)
def test_malformed_binary_requests_are_400(client: TestClient, mutate, message: str) -> None:
    body, n = binary_body([("input", X, "FP32")])
    content, header = mutate(body, n)
    r = client.post(
        "/v2/models/tiny-classifier/infer",
        content=content,
        headers={"Inference-Header-Content-Length": header},
    )
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_a_request_with_more_rows_than_the_queue_holds_is_413(client: TestClient) -> None:
    rows = np.zeros((65, 3, 32, 32), np.float32)  # tiny-classifier: max_queue_size 64
    body, n = binary_body([("input", rows, "FP32")])
    r = client.post(
        "/v2/models/tiny-classifier/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(n)},
    )
    assert r.status_code == 413
    assert r.json()["error_type"] == "payload_too_large"
    assert "max_queue_size" in r.json()["error"]


def test_infer_on_an_unknown_model_is_404(client: TestClient) -> None:
    r = client.post("/v2/models/nope/infer", json={"inputs": [json_tensor("input", X, "FP32")]})
    assert r.status_code == 404
    assert r.json()["error_type"] == "model_not_found"
    assert "nope" in r.json()["error"]
