"""The gRPC front end (``service.grpc``) through real clients against a real ``python -m service``:
``tritonclient.grpc`` (sync and asyncio), grpcio's own health and reflection clients.

Answers are compared with the HTTP v2 front end's for the same request; every error kind is
checked for its status code and for a message free of internal exception text.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.api.conftest import b64, png, solid
from tests.reliability.models import slow_classifier
from tests.support import tensor_graphs
from tests.support.server import MODELS, Server, free_port, running_server
from tests.support.tiny_models import TINY_DEFAULTS, build_repository, classifier, embedder

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient and grpcio (dev)")
grpc = pytest.importorskip("grpc")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
reflection_pb2 = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")
reflection_pb2_grpc = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2_grpc")
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402
from google.protobuf.unknown_fields import UnknownFieldSet  # noqa: E402
from tritonclient.grpc import aio as grpcclient_aio  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_BODY_BYTES = 1_000_000
API_KEY = "grpc-test-key"
# words of a Python exception or traceback: never in what a client is told
INTERNAL = re.compile(r'Traceback|Exception|File "|line \d+|onnxruntime|numpy|\.py\b')


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-repo")
    classifier(root / "tiny-classifier")
    embedder(root / "tiny-embedder")
    slow_classifier(root / "slow", work=24, max_batch_size=1, max_queue_size=1)
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("task: classify\nformat: nonsense\n")
    return root


def _settings(**extra: str) -> dict[str, str]:
    return {
        "default_classify_model": "tiny-classifier",
        "default_embed_model": "tiny-embedder",
        "intra_op_threads": "1",
        "strict_startup": "false",  # "broken" fails and the rest serves
        "model_control": "explicit",
        "max_body_bytes": str(MAX_BODY_BYTES),
        **extra,
    }


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[tuple[Server, str]]:
    port = free_port()
    with running_server(repo, grpc_port=str(port), **_settings()) as srv:
        yield srv, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def keyed(repo: Path) -> Iterator[tuple[Server, str]]:
    """API keys on, and a management network that loopback callers are not in."""
    port = free_port()
    settings = _settings(api_keys=API_KEY, management_networks="10.0.0.0/8")
    with running_server(repo, grpc_port=str(port), **settings) as srv:
        yield srv, f"127.0.0.1:{port}"


def client(target: str) -> Any:
    return grpcclient.InferenceServerClient(target)


def tensor(name: str, arr: np.ndarray) -> Any:
    datatype = {np.float32: "FP32", np.int64: "INT64", np.float64: "FP64"}[arr.dtype.type]
    t = grpcclient.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr)
    return t


def http_v2(url: str, model: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The HTTP front end's answer (JSON tensors) for the same inputs."""
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": {np.float32: "FP32", np.int64: "INT64"}[arr.dtype.type],
                "data": arr.reshape(-1).tolist(),
            }
            for name, arr in tensors.items()
        ]
    }
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


def raises(code: str, call: Any, *args: Any, **kwargs: Any) -> str:
    """``call`` fails with gRPC status ``code``; returns the message, checked for internals."""
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    assert caught.value.status() == f"StatusCode.{code}", caught.value
    message = str(caught.value.message())
    assert not INTERNAL.search(message), message
    return message


def images(rows: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 3, 32, 32), dtype=np.float32)


def tokens() -> dict[str, np.ndarray]:
    ids = np.array([[2, 4, 5, 3, 0], [2, 6, 7, 8, 3]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}


# -- probes and metadata ---------------------------------------------------------------------
def test_grpc_probes_and_metadata_answer(server: tuple[Server, str]) -> None:
    _, target = server
    c = client(target)
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready("tiny-classifier")
    assert not c.is_model_ready("broken")
    assert c.get_server_metadata().name == "ortserve"
    meta = c.get_model_metadata("tiny-classifier", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "3", "32", "32"]}
    ]
    config = c.get_model_config("tiny-embedder", as_json=True)["config"]
    assert config["max_batch_size"] == 16
    assert [i["data_type"] for i in config["input"]] == ["TYPE_INT64", "TYPE_INT64"]
    assert config["parameters"]["task"]["string_value"] == "embed"


# -- inference --------------------------------------------------------------------------------
def test_grpc_classifier_answer_equals_the_http_v2_answer(server: tuple[Server, str]) -> None:
    srv, target = server
    x = images(3)
    result = client(target).infer("tiny-classifier", [tensor("input", x)], request_id="r1")
    assert result.get_response().id == "r1"
    want = http_v2(srv.url, "tiny-classifier", {"input": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), want, atol=1e-5)
    assert result.as_numpy("logits").shape == (3, 3)


def test_grpc_embedder_raw_and_typed_contents_equal_http(server: tuple[Server, str]) -> None:
    srv, target = server
    feeds = tokens()
    want = http_v2(srv.url, "tiny-embedder", feeds)["sentence_embedding"]
    raw = client(target).infer("tiny-embedder", [tensor(n, a) for n, a in feeds.items()])
    np.testing.assert_allclose(raw.as_numpy("sentence_embedding"), want, atol=1e-5)

    request = service_pb2.ModelInferRequest(model_name="tiny-embedder")
    for name, arr in feeds.items():
        t = request.inputs.add(name=name, datatype="INT64", shape=arr.shape)
        t.contents.int64_contents.extend(arr.reshape(-1).tolist())
    with grpc.insecure_channel(target) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    out = answer.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("sentence_embedding", "FP32", [2, 8])
    typed = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 8)
    np.testing.assert_allclose(typed, want, atol=1e-5)


def test_grpc_typed_fp32_contents_classify(server: tuple[Server, str]) -> None:
    srv, target = server
    x = images(1, seed=3)
    request = service_pb2.ModelInferRequest(model_name="tiny-classifier")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(
        x.reshape(-1).tolist()
    )
    with grpc.insecure_channel(target) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(1, 3)
    np.testing.assert_allclose(got, http_v2(srv.url, "tiny-classifier", {"input": x})["logits"])


def test_grpc_asyncio_client_infers_concurrently(server: tuple[Server, str]) -> None:
    _, target = server

    async def run() -> list[np.ndarray]:
        c = grpcclient_aio.InferenceServerClient(target)
        try:
            results = await asyncio.gather(
                *(c.infer("tiny-classifier", [tensor("input", images(1, i))]) for i in range(8))
            )
        finally:
            await c.close()
        return [r.as_numpy("logits") for r in results]

    got = asyncio.run(run())
    alone = [
        client(target).infer("tiny-classifier", [tensor("input", images(1, i))]) for i in range(8)
    ]
    for g, a in zip(got, alone, strict=True):
        np.testing.assert_allclose(g, a.as_numpy("logits"), atol=1e-5)


def test_grpc_statistics_count_the_batcher_runs(server: tuple[Server, str]) -> None:
    _, target = server
    c = client(target)
    before = c.get_inference_statistics("tiny-classifier", as_json=True)["model_stats"][0]
    c.infer("tiny-classifier", [tensor("input", images(2))])
    after = c.get_inference_statistics("tiny-classifier", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
    assert int(after["execution_count"]) >= int(before.get("execution_count", 0)) + 1
    everything = c.get_inference_statistics(as_json=True)["model_stats"]
    assert {"tiny-classifier", "tiny-embedder"} <= {s["name"] for s in everything}


# -- errors -----------------------------------------------------------------------------------
def test_grpc_errors_carry_the_error_tables_codes(server: tuple[Server, str]) -> None:
    _, target = server
    c = client(target)
    raises("NOT_FOUND", c.infer, "no-such-model", [tensor("input", images(1))])
    raises("NOT_FOUND", c.get_model_metadata, "no-such-model")
    message = raises(
        "INVALID_ARGUMENT", c.infer, "tiny-classifier", [tensor("input", images(1)[:, :, :16])]
    )
    assert "shape" in message
    wrong = images(1).astype(np.float64)
    assert "datatype" in raises(
        "INVALID_ARGUMENT", c.infer, "tiny-classifier", [tensor("input", wrong)]
    )
    # token ids outside the vocabulary: the client's mistake, as over HTTP
    bad = tokens()
    bad["input_ids"][0, 1] = 10_000
    raises("INVALID_ARGUMENT", c.infer, "tiny-embedder", [tensor(n, a) for n, a in bad.items()])
    # over the message limit (ORTSERVE_MAX_BODY_BYTES): refused before it is decoded
    raises("RESOURCE_EXHAUSTED", c.infer, "tiny-classifier", [tensor("input", images(100))])
    # a model that failed to load is not ready
    raises("UNAVAILABLE", c.get_model_metadata, "broken")


def test_grpc_typed_contents_are_checked(server: tuple[Server, str]) -> None:
    _, target = server

    def infer(request: Any) -> grpc.RpcError:
        with grpc.insecure_channel(target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, timeout=30)
        return caught.value

    request = service_pb2.ModelInferRequest(model_name="tiny-classifier")
    request.inputs.add(
        name="input", datatype="FP32", shape=[1, 3, 32, 32]
    ).contents.fp32_contents.extend([0.5] * 10)
    error = infer(request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10 values" in error.details()

    request = service_pb2.ModelInferRequest(model_name="tiny-classifier")
    t = request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
    t.contents.int_contents.extend([1] * 3072)
    error = infer(request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fp32_contents" in error.details()


def test_grpc_deadline_shorter_than_the_run_is_deadline_exceeded(
    server: tuple[Server, str],
) -> None:
    _, target = server
    c = client(target)
    c.infer("slow", [tensor("input", images(1))], client_timeout=30)  # warm
    raises("DEADLINE_EXCEEDED", c.infer, "slow", [tensor("input", images(1))], client_timeout=0.02)


def test_grpc_queue_full_is_resource_exhausted(server: tuple[Server, str]) -> None:
    _, target = server

    async def flood() -> list[BaseException | Any]:
        c = grpcclient_aio.InferenceServerClient(target)
        try:
            calls = [
                c.infer("slow", [tensor("input", images(1, i))], client_timeout=30)
                for i in range(8)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await c.close()

    results = asyncio.run(flood())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert refused, "a queue of one and eight calls at once: some must be refused"
    for error in refused:
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
        assert not INTERNAL.search(str(error.message()))
    assert len(refused) < len(results)


# -- health and reflection ---------------------------------------------------------------------
def test_grpc_health_follows_readiness(server: tuple[Server, str]) -> None:
    _, target = server
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def check(service: str) -> Any:
            request = health_pb2.HealthCheckRequest(service=service)
            return stub.Check(request, timeout=10).status

        serving = health_pb2.HealthCheckResponse.SERVING
        assert check("") == serving
        assert check("inference.GRPCInferenceService") == serving
        assert check("tiny-classifier") == serving
        assert check("broken") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            check("no-such-model")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="tiny-embedder"), timeout=10)
        assert next(iter(watch)).status == serving
        watch.cancel()


def test_grpc_reflection_lists_the_services(server: tuple[Server, str]) -> None:
    _, target = server
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="inference.GRPCInferenceService"
                ),
            ]
        )
        listed, described = list(stub.ServerReflectionInfo(requests, timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


# -- the repository -------------------------------------------------------------------------
def test_grpc_repository_index_unload_and_load(server: tuple[Server, str]) -> None:
    _, target = server
    c = client(target)
    index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
    assert index["tiny-embedder"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE"
    c.unload_model("tiny-embedder")
    raises("NOT_FOUND", c.is_model_ready, "tiny-embedder")
    c.load_model("tiny-embedder", config=json.dumps({"batching": {"max_batch_size": 4}}))
    assert c.is_model_ready("tiny-embedder")
    assert c.get_model_config("tiny-embedder", as_json=True)["config"]["max_batch_size"] == 4
    c.load_model("tiny-embedder")
    assert c.get_model_config("tiny-embedder", as_json=True)["config"]["max_batch_size"] == 16
    raises("INVALID_ARGUMENT", c.load_model, "tiny-embedder", config="{not json")


# -- keys and management -------------------------------------------------------------------
def test_grpc_api_key_is_required_when_set(keyed: tuple[Server, str]) -> None:
    _, target = keyed
    c = client(target)
    x = [tensor("input", images(1))]
    assert c.is_server_live()  # the probes stay public, as over HTTP
    raises("UNAUTHENTICATED", c.infer, "tiny-classifier", x)
    raises("UNAUTHENTICATED", c.get_model_metadata, "tiny-classifier")
    raises("UNAUTHENTICATED", c.infer, "tiny-classifier", x, headers={"authorization": "Bearer no"})
    good = {"authorization": f"Bearer {API_KEY}"}
    assert c.infer("tiny-classifier", x, headers=good).as_numpy("logits").shape == (1, 3)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_management_from_an_untrusted_network_is_permission_denied(
    keyed: tuple[Server, str],
) -> None:
    """The server trusts only 10.0.0.0/8 for management; this client calls from 127.0.0.1
    (grpc cannot bind a client's source address, so the network is narrowed instead)."""
    _, target = keyed
    c = client(target)
    good = {"authorization": f"Bearer {API_KEY}"}
    raises("UNAUTHENTICATED", c.get_model_repository_index)
    raises("PERMISSION_DENIED", c.get_model_repository_index, headers=good)
    raises("PERMISSION_DENIED", c.unload_model, "tiny-classifier", headers=good)
    assert c.is_model_ready("tiny-classifier", headers=good)


# -- raw inputs (service.core.raw): encoded images and texts to a typed model ------------------
def _raw_input(name: str, items: list[bytes]) -> Any:
    tensor = grpcclient.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_))
    return tensor


def test_raw_images_and_texts_over_grpc_answer_what_the_typed_endpoints_answer(
    server: tuple[Server, str],
) -> None:
    srv, target = server
    c = client(target)
    red = png(solid((255, 0, 0)))
    answer = c.infer("tiny-classifier", [_raw_input("image", [red])], parameters={"top_k": 2})
    typed = httpx.post(
        f"{srv.url}/classify", json={"images": [b64(red)], "top_k": 2}, timeout=10
    ).json()["results"]
    assert [json.loads(r) for r in answer.as_numpy("result").tolist()] == typed
    assert answer.as_numpy("class_ids")[0].tolist() == [
        p["class_id"] for p in typed[0]["predictions"]
    ]
    texts = ["a red circle", "the blue square"]
    embedded = c.infer("tiny-embedder", [_raw_input("text", [t.encode() for t in texts])])
    want = httpx.post(
        f"{srv.url}/embed", json={"inputs": texts, "model": "tiny-embedder"}, timeout=10
    ).json()["embeddings"]
    np.testing.assert_allclose(embedded.as_numpy("embedding"), want, atol=1e-6)
    with pytest.raises(InferenceServerException) as info:
        c.infer("tiny-classifier", [_raw_input("image", [b"not an image"])])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_cancelled_call_is_counted_as_a_client_gone_and_the_server_goes_on(
    server: tuple[Server, str],
) -> None:
    srv, target = server

    async def cancel_one() -> None:
        c = grpcclient_aio.InferenceServerClient(target)
        try:
            call = asyncio.ensure_future(
                c.infer("slow", [tensor("input", images(1, 99))], client_timeout=30)
            )
            await asyncio.sleep(0.03)  # queued or running on the slow model
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            await c.close()

    def cancelled() -> float:
        metrics = httpx.get(f"{srv.url}/metrics", timeout=5).text
        rows = [
            line
            for line in metrics.splitlines()
            if line.startswith("ortserve_requests_total")
            and "ModelInfer" in line
            and 'status="499"' in line
        ]
        return sum(float(row.rsplit(" ", 1)[1]) for row in rows)

    before = cancelled()  # an earlier test's expired deadline may have counted one already
    asyncio.run(cancel_one())
    for _ in range(50):  # the server notices the cancellation when the call's task ends
        if cancelled() >= before + 1:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert cancelled() == before + 1
    c = client(target)
    assert (
        c.infer("slow", [tensor("input", images(1))], client_timeout=30).as_numpy("logits")
        is not None
    )


# -- ortserve's metadata extension: the raw signature (ModelMetadataResponse.raw = 1000) -------
RAW_FIELD = 1000  # service/grpc/protos/grpc_service.proto
HTTP_TO_GRPC = {404: grpc.StatusCode.NOT_FOUND, 503: grpc.StatusCode.UNAVAILABLE}


def _metadata_call(channel: Any) -> Any:
    """ModelMetadata with the server's own messages, built from the descriptor its reflection
    serves, in a pool of their own (this process holds tritonclient's stubs, which define the
    same names): what a generic client such as grpcurl does."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService"
    )
    (answer,) = stub.ServerReflectionInfo(iter([ask]), timeout=10)
    pool = descriptor_pool.DescriptorPool()
    for blob in answer.file_descriptor_response.file_descriptor_proto:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(blob))
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("inference.ModelMetadataRequest")
    )
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("inference.ModelMetadataResponse")
    )
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelMetadata",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    return lambda name: call(request(name=name), timeout=10)


def _tensors(repeated: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in repeated]


def assert_grpc_metadata_equals_http(srv: Server, target: str) -> dict[str, Any]:
    """Every model and pipeline the server lists: gRPC ModelMetadata (the server's own messages)
    says what ``GET /v2/models/{name}`` says, the raw signature included, or fails with the code
    of the HTTP status; tritonclient.grpc reads the same metadata and skips field 1000. Returns
    the raw signatures by model (None: the model has none)."""
    listed = httpx.get(f"{srv.url}/v1/models", timeout=10).json()["models"]
    assert listed
    signatures: dict[str, Any] = {}
    triton = client(target)
    with grpc.insecure_channel(target) as channel:
        metadata = _metadata_call(channel)
        for row in listed:
            name = row["name"]
            http = httpx.get(f"{srv.url}/v2/models/{name}", timeout=10)
            if http.status_code != 200:  # a pipeline, a failed model: the same refusal
                with pytest.raises(grpc.RpcError) as caught:
                    metadata(name)
                assert caught.value.code() == HTTP_TO_GRPC[http.status_code], name
                continue
            want = http.json()
            got = metadata(name)
            assert (got.name, list(got.versions), got.platform) == (
                want["name"],
                want["versions"],
                want["platform"],
            )
            assert _tensors(got.inputs) == want["inputs"], name
            assert _tensors(got.outputs) == want["outputs"], name
            raw = (
                {"inputs": _tensors(got.raw.inputs), "outputs": _tensors(got.raw.outputs)}
                if got.HasField("raw")
                else None
            )
            assert raw == want["raw"], name
            signatures[name] = raw

            standard = triton.get_model_metadata(name)  # tritonclient's own stubs
            assert _tensors(standard.inputs) == want["inputs"], name
            assert _tensors(standard.outputs) == want["outputs"], name
            skipped = [f.field_number for f in UnknownFieldSet(standard)]
            assert skipped == ([RAW_FIELD] if raw is not None else []), name
            as_json = triton.get_model_metadata(name, as_json=True)
            assert set(as_json) == {"name", "versions", "platform", "inputs", "outputs"}, name
    return signatures


@pytest.fixture(scope="module")
def every_task(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """One tiny model per task, a pipeline and a tensor-task graph."""
    root = build_repository(tmp_path_factory.mktemp("grpc-every-task"))
    tensor_graphs.regressor(root / "regressor")
    port = free_port()
    settings = {**TINY_DEFAULTS, "intra_op_threads": "1"}
    with running_server(root, grpc_port=str(port), **settings) as srv:
        yield srv, f"127.0.0.1:{port}"


def test_grpc_metadata_has_the_raw_signature_of_http_for_every_task(
    every_task: tuple[Server, str],
) -> None:
    srv, target = every_task
    signatures = assert_grpc_metadata_equals_http(srv, target)
    tasks = {
        row["name"]: row["task"]
        for row in httpx.get(f"{srv.url}/v1/models", timeout=10).json()["models"]
    }
    with_raw = {tasks[name] for name, raw in signatures.items() if raw is not None}
    assert with_raw == {"classify", "detect", "segment", "embed"}
    assert signatures["regressor"] is None  # the tensor task: unset, as HTTP's is null
    assert signatures["tiny-embedder"]["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]}
    ]


@pytest.mark.skipif(
    not (MODELS / "mobilenet_v2" / "model.onnx").is_file(),
    reason="default models not built: run `make models`",
)
def test_grpc_metadata_has_the_raw_signature_of_http_for_every_default_model() -> None:
    port = free_port()
    with running_server(MODELS, grpc_port=str(port)) as srv:
        signatures = assert_grpc_metadata_equals_http(srv, f"127.0.0.1:{port}")
        listed = httpx.get(f"{srv.url}/v1/models", timeout=10).json()["models"]
    typed = {m["name"] for m in listed if m["task"] in {"classify", "detect", "segment", "embed"}}
    assert "mobilenet_v2" in typed
    assert {name for name, raw in signatures.items() if raw is not None} == typed
    assert signatures["mobilenet_v2"]["inputs"][0]["name"] == "image"
