"""Open Inference Protocol datatypes through tiny identity models: BOOL, UINT8, INT32, FP16 (and
FP32, INT64), as JSON and as little-endian binary tensors, values and byte order intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from service.app import create_app
from service.settings import Settings
from tests.api.test_v2 import binary_body, json_tensor, read_binary
from tests.support.tiny_models import TINY_DEFAULTS, build_repository, save_model

# config dtype, v2 datatype, onnx type, numpy type
TYPES = [
    ("bool", "BOOL", TensorProto.BOOL, np.bool_),
    ("uint8", "UINT8", TensorProto.UINT8, np.uint8),
    ("int32", "INT32", TensorProto.INT32, np.int32),
    ("float16", "FP16", TensorProto.FLOAT16, np.float16),
    ("int64", "INT64", TensorProto.INT64, np.int64),
    ("float32", "FP32", TensorProto.FLOAT, np.float32),
]


def identity(folder: Path, dtype: str, onnx_type: int) -> None:
    """``x [B,3,2,2] → y`` unchanged, declared as a (raw-output) classifier so it loads."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity-{dtype}",
        [helper.make_tensor_value_info("x", onnx_type, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("y", onnx_type, ["batch", 3, 2, 2])],
    )
    save_model(
        folder,
        graph,
        {
            "task": "classify",
            "format": "classification-probs",
            "inputs": [{"name": "x", "dtype": dtype, "dims": [3, 2, 2]}],
            "outputs": [{"name": "y", "dtype": dtype, "dims": [3, 2, 2]}],
            "image": {"resize": "stretch", "width": 2, "height": 2},
            "batching": {"max_batch_size": 4, "max_delay_ms": 1, "max_queue_size": 16},
        },
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = build_repository(tmp_path_factory.mktemp("v2-types"))
    for dtype, _, onnx_type, _ in TYPES:
        identity(root / f"identity-{dtype}", dtype, onnx_type)
    with TestClient(create_app(Settings(model_repository=root, **TINY_DEFAULTS))) as c:
        yield c


def sample(np_type: type, rows: int = 2) -> np.ndarray:
    rng = np.random.default_rng(7)
    if np_type is np.bool_:
        return rng.random((rows, 3, 2, 2)) > 0.5
    if np_type in (np.float16, np.float32):
        return (rng.standard_normal((rows, 3, 2, 2)) * 100).astype(np_type)
    info = np.iinfo(np_type)
    # the extremes too: a byte-order slip shows there first
    values = rng.integers(info.min, info.max, size=(rows, 3, 2, 2), endpoint=True, dtype=np_type)
    values.flat[0], values.flat[1] = info.min, info.max
    return values


@pytest.mark.parametrize(("dtype", "datatype", "onnx_type", "np_type"), TYPES)
def test_json_tensors_keep_their_datatype_and_values(
    client: TestClient, dtype: str, datatype: str, onnx_type: int, np_type: type
) -> None:
    x = sample(np_type)
    r = client.post(
        f"/v2/models/identity-{dtype}/infer", json={"inputs": [json_tensor("x", x, datatype)]}
    )
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    assert (out["datatype"], out["shape"]) == (datatype, [2, 3, 2, 2])
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np_type).reshape(x.shape), x)


@pytest.mark.parametrize(("dtype", "datatype", "onnx_type", "np_type"), TYPES)
def test_binary_tensors_are_little_endian_both_ways(
    client: TestClient, dtype: str, datatype: str, onnx_type: int, np_type: type
) -> None:
    x = sample(np_type)
    body, n = binary_body([("x", x, datatype)], parameters={"binary_data_output": True})
    r = client.post(
        f"/v2/models/identity-{dtype}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(n)},
    )
    assert r.status_code == 200, r.text
    header_length = int(r.headers["inference-header-content-length"])
    raw = r.content[header_length:]
    assert raw == np.ascontiguousarray(x, dtype=np.dtype(np_type).newbyteorder("<")).tobytes()
    out = read_binary(r.content, header_length)
    np.testing.assert_array_equal(out["y"].reshape(x.shape), x)


def test_a_datatype_the_model_does_not_take_is_a_400(client: TestClient) -> None:
    x = sample(np.int32)
    r = client.post(
        "/v2/models/identity-uint8/infer", json={"inputs": [json_tensor("x", x, "INT32")]}
    )
    assert r.status_code == 400
    assert "datatype is INT32, the model takes UINT8" in r.text
