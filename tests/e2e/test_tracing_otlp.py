"""A real server, configured only by OTEL_* variables, exports its traces over OTLP/HTTP to a
loopback receiver (devtools.otlp decodes the protobuf with opentelemetry-proto)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.otlp import Receiver, Span, otlp_receiver
from tests.api.conftest import b64, png, solid
from tests.reliability.models import slow_classifier
from tests.support.server import Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

pytest.importorskip("opentelemetry.sdk.trace", reason="pip install -e '.[otel]'")
pytest.importorskip("opentelemetry.proto", reason="pip install -e '.[otel]'")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SERVER = 2  # SpanKind SERVER in the protobuf enum
RED = b64(png(solid((255, 0, 0))))


@pytest.fixture(scope="module")
def repository(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models plus a slow classifier (≈0.1 s a run, batches of 4), so that requests
    sent together queue behind a run and are batched."""
    root = tmp_path_factory.mktemp("traced-models")
    for folder in tiny_repo.iterdir():
        shutil.copytree(folder, root / folder.name)
    slow_classifier(root / "slow", max_batch_size=4, max_queue_size=32)
    return root


def otel_env(receiver: Receiver, **more: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "ortserve-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s, not 5 s
        **more,
    }


@pytest.fixture(scope="module")
def traced(repository: Path) -> Iterator[tuple[Server, Receiver]]:
    with (
        otlp_receiver() as receiver,
        running_server(
            repository, extra_env=otel_env(receiver), log_format="json", **TINY_DEFAULTS
        ) as server,
    ):
        yield server, receiver


def servers_of(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.kind == SERVER]


def tree(spans: list[Span], root: Span, depth: int = 0) -> list[str]:
    """The span tree under ``root`` as indented lines (for assertions and the report)."""
    lines = [f"{'  ' * depth}{root.name} {(root.end_ns - root.start_ns) / 1e6:.1f} ms"]
    for child in sorted(
        (s for s in spans if s.parent_id == root.span_id and s.trace_id == root.trace_id),
        key=lambda s: s.start_ns,
    ):
        lines += tree(spans, child, depth + 1)
    return lines


def test_one_request_is_a_tree_continuing_the_callers_trace(
    traced: tuple[Server, Receiver],
) -> None:
    server, receiver = traced
    receiver.clear()
    response = httpx.post(
        server.url + "/classify",
        json={"images": [RED]},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "x-request-id": "req-42"},
    )
    assert response.status_code == 200
    spans = receiver.wait_for(lambda got: any(s.kind == SERVER for s in got))
    (root,) = servers_of(spans)
    assert (root.trace_id, root.parent_id) == (TRACE_ID, PARENT_ID)
    assert root.name == "POST /classify" and root.service == "ortserve-test"
    assert root.attributes["ortserve.request_id"] == "req-42"
    assert root.attributes["http.response.status_code"] == 200
    shape = [line.rsplit(" ", 2)[0] for line in tree(spans, root)]
    # an idle model runs the lone request's prepare, run and finish as one job
    assert shape == ["POST /classify", "  prepare", "  batch tiny-classifier", "  finish"]
    (batch,) = [s for s in spans if s.name == "batch tiny-classifier"]
    assert batch.attributes["ortserve.batch.size"] == 1
    assert batch.attributes["ortserve.model"] == "tiny-classifier"
    assert batch.attributes["ortserve.provider"] == "CPUExecutionProvider"
    # the JSON access log ties the trace to the request id (read after the server's flush)
    assert TRACE_ID in server.log()


def test_one_batch_span_links_every_request_batched_in_it(
    traced: tuple[Server, Receiver],
) -> None:
    server, receiver = traced
    receiver.clear()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            first = asyncio.ensure_future(
                client.post("/classify", json={"model": "slow", "images": [RED]})
            )
            await asyncio.sleep(0.02)  # the first one runs alone; these queue behind it
            rest = [
                client.post("/classify", json={"model": "slow", "images": [RED]}) for _ in range(8)
            ]
            return [r.status_code for r in await asyncio.gather(first, *rest)]

    assert asyncio.run(burst()) == [200] * 9
    spans = receiver.wait_for(lambda got: len(servers_of(got)) == 9)
    requests = {s.span_id: s for s in servers_of(spans)}
    assert len(requests) == 9 and len({s.trace_id for s in requests.values()}) == 9
    batches = {s.span_id: s for s in spans if s.name == "batch slow"}
    queued = [s for s in spans if s.name == "queue"]
    assert len(queued) >= 7  # all but the lone one (and maybe one that found it idle)
    for queue in queued:
        request = requests[queue.parent_id]
        ((_, batch_id),) = queue.links  # the queue wait points to its batch...
        batch = batches[batch_id]
        assert (request.trace_id, request.span_id) in batch.links  # ...which points back
        assert batch.parent_id == "" and batch.trace_id != request.trace_id
        assert batch.attributes["ortserve.batch.size"] == len(batch.links)
        assert queue.end_ns <= batch.start_ns + 2_000_000  # the wait ends as its batch starts
    assert max(len(b.links) for b in batches.values()) >= 2
    assert all(b.attributes["ortserve.model.version"] == 1 for b in batches.values())


def test_probes_and_scrapes_are_not_traced(traced: tuple[Server, Receiver]) -> None:
    server, receiver = traced
    receiver.clear()
    for path in ("/health/live", "/health/ready", "/metrics", "/v2/health/ready") * 3:
        assert httpx.get(server.url + path).status_code == 200
    assert httpx.post(server.url + "/embed", json={"inputs": ["marker"]}).status_code == 200
    spans = receiver.wait_for(lambda got: any(s.name == "POST /embed" for s in got))
    assert [s.name for s in servers_of(spans)] == ["POST /embed"]


def test_errors_are_recorded(traced: tuple[Server, Receiver]) -> None:
    server, receiver = traced
    receiver.clear()
    response = httpx.post(server.url + "/classify", json={"images": [b64(b"not an image")]})
    assert response.status_code == 400
    spans = receiver.wait_for(lambda got: bool(servers_of(got)))
    (prepare,) = [s for s in spans if s.name == "prepare"]
    assert prepare.status == 2 and "exception" in prepare.events


def test_ratio_zero_traces_only_what_the_caller_sampled(repository: Path) -> None:
    sampler = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    with (
        otlp_receiver() as receiver,
        running_server(
            repository, extra_env=otel_env(receiver, **sampler), **TINY_DEFAULTS
        ) as server,
    ):
        for _ in range(5):
            assert httpx.post(server.url + "/embed", json={"inputs": ["x"]}).status_code == 200
        sampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        unsampled = {"traceparent": f"00-{'1' * 32}-{PARENT_ID}-00"}
        for text, headers in (("y", unsampled), ("z", sampled)):
            response = httpx.post(server.url + "/embed", json={"inputs": [text]}, headers=headers)
            assert response.status_code == 200
        spans = receiver.wait_for(lambda got: bool(servers_of(got)))
        assert {s.trace_id for s in spans} == {TRACE_ID}
        assert len(servers_of(spans)) == 1


def test_a_grpc_call_is_a_server_span_continuing_the_callers_trace(repository: Path) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (dev)")
    import numpy as np

    from tests.support.server import free_port

    port = free_port()
    with (
        otlp_receiver() as receiver,
        running_server(
            repository, extra_env=otel_env(receiver), grpc_port=str(port), **TINY_DEFAULTS
        ),
    ):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        image = grpcclient.InferInput("input", [1, 3, 32, 32], "FP32")
        image.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
        client.infer(
            "tiny-classifier",
            [image],
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        spans = receiver.wait_for(lambda got: any(s.kind == SERVER for s in got))
    (root,) = servers_of(spans)
    assert root.name == "inference.GRPCInferenceService/ModelInfer"
    assert (root.trace_id, root.parent_id) == (TRACE_ID, PARENT_ID)
    assert root.attributes["rpc.system"] == "grpc"
    assert root.attributes["ortserve.model"] == "tiny-classifier"
    # the call's own spans are its children: its wait in the model's queue (the batch's span,
    # linked to it, is a trace of its own)
    assert "  queue" in [line.rsplit(" ", 2)[0] for line in tree(spans, root)]
