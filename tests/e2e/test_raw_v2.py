"""Raw inputs over v2 (service.core.raw): encoded images and UTF-8 texts sent to a typed model as
one BYTES input, through the real ``tritonclient.http`` against a real server, answer what the
typed endpoints answer for the same inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.api.conftest import b64, png, solid
from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

RED, GREEN = png(solid((255, 0, 0))), png(solid((0, 255, 0), w=64, h=48))


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, **TINY_DEFAULTS) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def _bytes_input(name: str, items: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
    return tensor


def _results(answer: Any) -> list[Any]:
    return [json.loads(r) for r in answer.as_numpy("result").tolist()]


def test_classify_takes_encoded_images_and_answers_scores_ids_and_the_typed_result(
    server: Server, client: triton.InferenceServerClient
) -> None:
    answer = client.infer(
        "tiny-classifier", [_bytes_input("image", [RED, GREEN])], parameters={"top_k": 2}
    )
    typed = httpx.post(
        f"{server.url}/classify", json={"images": [b64(RED), b64(GREEN)], "top_k": 2}, timeout=10
    ).json()["results"]
    assert _results(answer) == typed
    scores, ids = answer.as_numpy("scores"), answer.as_numpy("class_ids")
    assert scores.shape == ids.shape == (2, 2)
    want = [[p["score"] for p in r["predictions"]] for r in typed]
    np.testing.assert_allclose(scores, want, atol=1e-6)
    assert ids.tolist() == [[p["class_id"] for p in r["predictions"]] for r in typed]
    assert typed[0]["predictions"][0]["label"] == "red"
    assert answer.get_response()["model_version"] == "1"


def test_detect_and_segment_answer_their_typed_results_as_json(
    server: Server, client: triton.InferenceServerClient
) -> None:
    for model, path, params in (
        ("tiny-yolo", "/detect", {"confidence": 0.3}),
        ("tiny-seg", "/segment", {"mask_format": "rle"}),
    ):
        answer = client.infer(model, [_bytes_input("image", [GREEN])], parameters=params)
        typed = httpx.post(
            f"{server.url}{path}", json={"images": [b64(GREEN)], "model": model, **params}
        ).json()["results"]
        assert _results(answer) == typed, model


@pytest.mark.parametrize("binary", [True, False])
def test_embed_takes_texts_and_answers_the_embeddings_of_embed(
    server: Server, client: triton.InferenceServerClient, binary: bool
) -> None:
    texts = ["a red circle", "the blue square"]
    answer = client.infer(
        "tiny-embedder",
        [_bytes_input("text", [t.encode() for t in texts], binary)],
        outputs=[triton.InferRequestedOutput("embedding", binary_data=binary)],
    )
    typed = httpx.post(f"{server.url}/embed", json={"inputs": texts}, timeout=10).json()
    np.testing.assert_allclose(answer.as_numpy("embedding"), typed["embeddings"], atol=1e-6)


def test_the_metadata_lists_the_raw_signature_beside_the_tensors(server: Server) -> None:
    meta = httpx.get(f"{server.url}/v2/models/tiny-embedder", timeout=5).json()
    assert [t["name"] for t in meta["inputs"]] == ["input_ids", "attention_mask"]
    assert meta["raw"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [t["name"] for t in meta["raw"]["outputs"]] == ["embedding", "result"]
    clf = httpx.get(f"{server.url}/v2/models/tiny-classifier", timeout=5).json()
    assert clf["raw"]["inputs"][0]["name"] == "image"


@pytest.mark.parametrize(
    ("model", "name", "items", "params", "status", "says"),
    [
        ("tiny-classifier", "image", [b"not an image"], {}, 400, "image"),
        ("tiny-classifier", "image", [RED], {"top_k": 0}, 422, "top_k"),
        ("tiny-classifier", "image", [RED], {"render": True}, 400, "render"),
        ("tiny-yolo", "image", [RED], {"classes": "no-such-label"}, 400, "no-such-label"),
        ("tiny-embedder", "text", [b"\xff\xfe"], {}, 400, "UTF-8"),
    ],
)
def test_bad_raw_inputs_and_parameters_are_4xx_naming_the_cause(
    server: Server,
    client: triton.InferenceServerClient,
    model: str,
    name: str,
    items: list[bytes],
    params: dict[str, Any],
    status: int,
    says: str,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [_bytes_input(name, items)], parameters=params)
    assert info.value.status() == str(status), info.value
    assert says in str(info.value.message())
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200


def test_raw_bytes_with_a_bad_frame_are_a_400(server: Server) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    body = header + (1000).to_bytes(4, "little") + b"abcd"  # claims 1000 bytes, has 4
    got = httpx.post(
        f"{server.url}/v2/models/tiny-classifier/infer",
        content=body,
        headers={"inference-header-content-length": str(len(header))},
        timeout=5,
    )
    assert got.status_code == 400, got.text
    assert "longer than the data" in got.json()["error"]
