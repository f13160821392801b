"""The real ``tritonclient[http]`` and ``openai`` clients against a real ``python -m service``.

The tiny models always run; the default models run when ``make models`` has built them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.server import MODELS, Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS, embedding_table

httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (dev extra)")
openai = pytest.importorskip("openai", reason="needs openai (dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

# the repository `make models` builds; ORTSERVE_TEST_MODELS points at another one
DEFAULT_MODELS = MODELS
needs_default_models = pytest.mark.skipif(
    not (DEFAULT_MODELS / "mobilenet_v2" / "model.onnx").is_file(),
    reason="default models not built (make models)",
)


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, **TINY_DEFAULTS) as srv:
        yield srv


def triton(server: Server) -> Any:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def infer(
    client: Any,
    model: str,
    tensors: dict[str, np.ndarray],
    binary: bool,
    outputs: list[str] | None = None,
) -> Any:
    inputs = []
    for name, arr in tensors.items():
        datatype = {np.float32: "FP32", np.int64: "INT64"}[arr.dtype.type]
        tensor = httpclient.InferInput(name, list(arr.shape), datatype)
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    requested = (
        None
        if outputs is None
        else [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    )
    return client.infer(model, inputs, outputs=requested, request_id="e2e")


# -- tritonclient -----------------------------------------------------------------------------
def test_triton_health_and_metadata(server: Server) -> None:
    client = triton(server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "ortserve"
    meta = client.get_model_metadata("tiny-yolo")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 6, 4]}]
    assert client.is_model_ready("tiny-yolo")
    assert client.is_model_ready("tiny-yolo", model_version="1")
    assert client.get_model_config("tiny-embedder")["max_batch_size"] == 16


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_infers_on_every_tiny_model(server: Server, tiny_repo: Path, binary: bool) -> None:
    client = triton(server)
    rng = np.random.default_rng(3)

    x = rng.random((3, 3, 32, 32), dtype=np.float32)
    logits = infer(client, "tiny-classifier", {"input": x}, binary).as_numpy("logits")
    np.testing.assert_allclose(logits, x.mean(axis=(2, 3)) * 20, rtol=1e-5)

    seg = infer(client, "tiny-seg", {"input": x}, binary).as_numpy("logits")
    np.testing.assert_array_equal(seg, x)  # the tiny segmenter is the identity

    images = rng.random((2, 3, 64, 64), dtype=np.float32)
    for model, shape in (("tiny-yolo", (2, 6, 4)), ("tiny-yolov5", (2, 4, 7))):
        out = infer(client, model, {"images": images}, binary).as_numpy("output0")
        assert out.shape == shape
    v8 = infer(client, "tiny-yolo", {"images": images}, binary).as_numpy("output0")
    red_top_left = images[:, 0, :32, :32].mean(axis=(1, 2))
    np.testing.assert_allclose(v8[:, 4, 0], red_top_left, rtol=1e-5)

    image = rng.random((3, 24, 40), dtype=np.float32)
    result = infer(client, "tiny-maskrcnn", {"image": image}, binary)
    assert result.as_numpy("labels").tolist() == [1]
    np.testing.assert_allclose(result.as_numpy("scores"), [image[0].mean()], rtol=1e-5)
    assert result.as_numpy("masks").shape == (1, 1, 24, 40)

    ids = np.array([[2, 4, 5, 6, 3], [2, 7, 3, 0, 0]], np.int64)
    mask = (np.arange(5) < np.array([[5], [3]])).astype(np.int64)
    result = infer(client, "tiny-embedder", {"input_ids": ids, "attention_mask": mask}, binary)
    table = embedding_table(tiny_repo / "tiny-embedder")
    want = np.stack([table[ids[0]].mean(0), table[ids[1, :3]].mean(0)])
    np.testing.assert_allclose(result.as_numpy("sentence_embedding"), want, atol=1e-6)
    assert result.get_response()["id"] == "e2e"


def test_triton_selected_outputs(server: Server) -> None:
    image = np.ones((3, 16, 16), np.float32)
    result = infer(triton(server), "tiny-maskrcnn", {"image": image}, True, outputs=["scores"])
    assert result.as_numpy("scores").tolist() == [1.0]
    assert result.as_numpy("masks") is None


def test_triton_errors_carry_status_and_message(server: Server) -> None:
    client = triton(server)
    wrong_shape = np.zeros((1, 3, 32, 31), np.float32)
    with pytest.raises(InferenceServerException) as bad:
        infer(client, "tiny-classifier", {"input": wrong_shape}, True)
    assert bad.value.status() == "400"
    assert "[-1, 3, 32, 32]" in bad.value.message()
    with pytest.raises(InferenceServerException) as wrong_name:
        infer(client, "tiny-classifier", {"pixels": np.zeros((1, 3, 32, 32), np.float32)}, False)
    assert wrong_name.value.status() == "400"
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404"
    assert not client.is_model_ready("no-such-model")


# -- openai -----------------------------------------------------------------------------------
def openai_client(server: Server) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_openai_embeddings_match_embed(server: Server) -> None:
    texts = ["cat dog", "a red truck on the sea", "apple pear"]
    ours = httpx.post(server.url + "/embed", json={"inputs": texts}).json()
    client = openai_client(server)
    # the client asks for base64 by default and decodes it itself
    default = client.embeddings.create(model="tiny-embedder", input=texts)
    floats = client.embeddings.create(model="tiny-embedder", input=texts, encoding_format="float")
    for response in (default, floats):
        assert response.model == "tiny-embedder"
        assert [d.index for d in response.data] == [0, 1, 2]
        got = np.array([d.embedding for d in response.data])
        np.testing.assert_allclose(got, ours["embeddings"], atol=1e-6)
        assert response.usage.prompt_tokens == ours["usage"]["prompt_tokens"]
    short = client.embeddings.create(model="tiny-embedder", input="cat", dimensions=4)
    assert len(short.data[0].embedding) == 4
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-6)


def test_openai_errors_map_to_the_clients_exceptions(server: Server) -> None:
    client = openai_client(server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="cat")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model="tiny-embedder", input="cat", dimensions=64)
    assert too_many.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny-embedder", input=[[1, 2, 3]])


# -- the default models (after `make models`) -------------------------------------------------
@pytest.fixture(scope="module")
def default_server() -> Iterator[Server]:
    with running_server(DEFAULT_MODELS, ready_timeout_s=300) as srv:
        yield srv


def _example_inputs(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    for spec in meta["inputs"]:
        shape = [d if d != -1 else 2 for d in spec["shape"][:1]]  # two rows when batched
        shape += [
            d if d != -1 else (8 if spec["datatype"] == "INT64" else 160) for d in spec["shape"][1:]
        ]
        if spec["datatype"] == "INT64":
            arr = np.ones(shape, np.int64)
            if spec["name"] == "token_type_ids":
                arr[:] = 0
        else:
            arr = rng.random(shape, dtype=np.float32)
        tensors[spec["name"]] = arr
    return tensors


def _served_onnx(model: str, version: str) -> Path:
    """The model file the server runs for ``model`` at ``version``: a version folder's, or the
    model folder's own when it has no versions."""
    folder = DEFAULT_MODELS / model
    versioned = folder / version / "model.onnx"
    return versioned if versioned.is_file() else folder / "model.onnx"


@needs_default_models
def test_triton_on_every_default_model(default_server: Server) -> None:
    """Every default model through tritonclient, its outputs equal to in-process ONNX Runtime's
    on the same inputs (atol 1e-4): the v2 path adds nothing to and loses nothing from a tensor."""
    import onnxruntime as ort

    client = triton(default_server)
    listed = httpx.get(default_server.url + "/v1/models").json()["models"]
    # pipelines (detect-classify) are served at /pipelines/{name}, not as v2 models
    listed = [m for m in listed if m["task"] != "pipeline"]
    assert listed
    for model in listed:
        meta = client.get_model_metadata(model["name"])
        batched = meta["inputs"][0]["shape"][0] == -1 and model["batching"]["max_batch_size"] > 0
        tensors = _example_inputs(meta)
        result = infer(client, model["name"], tensors, binary=True)
        version = str(result.get_response()["model_version"])
        session = ort.InferenceSession(
            str(_served_onnx(model["name"], version)), providers=["CPUExecutionProvider"]
        )
        wanted = [spec["name"] for spec in meta["outputs"]]
        reference = dict(zip(wanted, session.run(wanted, tensors), strict=True))
        for name in wanted:
            out = result.as_numpy(name)
            assert out is not None, (model["name"], name)
            if batched:
                assert out.shape[0] == 2, (model["name"], name, out.shape)
            if out.dtype.kind == "f":
                assert np.isfinite(out).all(), (model["name"], name)
            assert out.shape == reference[name].shape, (model["name"], name)
            np.testing.assert_allclose(
                out, reference[name], rtol=0, atol=1e-4, err_msg=f"{model['name']}:{name}"
            )


@needs_default_models
def test_openai_on_the_default_embedder(default_server: Server) -> None:
    client = openai_client(default_server)
    response = client.embeddings.create(
        model="all-MiniLM-L6-v2",
        input=["A man is eating food.", "Someone is eating a meal.", "The stock market fell."],
    )
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (3, 384)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2
