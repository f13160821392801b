"""Tracing in process (the SDK with an in-memory exporter), and the scrape's scaling signals.

The end-to-end check, a real server exporting OTLP/HTTP to a receiver, is
tests/e2e/test_tracing_otlp.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import tracing
from service.app import create_app
from service.settings import OtelSettings, Settings
from tests.api.conftest import b64, png, solid
from tests.support.tiny_models import TINY_DEFAULTS

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="pip install -e '.[otel]'")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.sampler_from(OtelSettings()))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    yield exporter
    tracing.configure(None)


@pytest.fixture
def traced_client(tiny_repo: Path, exported: InMemorySpanExporter) -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))
    with TestClient(app) as client:
        exported.clear()  # start-up has no spans, but be sure
        yield client


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return sorted(
        s.name for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    )


def test_a_lone_request_is_one_tree_with_its_batch_as_a_child(
    traced_client: TestClient, exported: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        response = traced_client.post("/classify", json={"images": [b64(png(solid((255, 0, 0))))]})
    assert response.status_code == 200
    spans = exported.get_finished_spans()
    (server,) = by_name(spans, "POST /classify")
    assert server.kind is SpanKind.SERVER and server.parent is None
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["ortserve.model"] == "tiny-classifier"
    assert server.attributes["ortserve.request_id"] == response.headers["x-request-id"]
    assert children(spans, server) == ["batch tiny-classifier", "finish", "prepare"]
    (batch,) = by_name(spans, "batch tiny-classifier")
    assert batch.attributes is not None
    assert batch.attributes["ortserve.batch.size"] == 1
    assert batch.attributes["ortserve.model.version"] == 1
    assert batch.attributes["ortserve.provider"] == "CPUExecutionProvider"
    # the access-log line carries the trace id next to the request id
    (line,) = [r for r in caplog.records if getattr(r, "path", "") == "/classify"]
    assert server.context is not None
    assert vars(line)["trace_id"] == format(server.context.trace_id, "032x")


def test_an_incoming_traceparent_is_continued(
    traced_client: TestClient, exported: InMemorySpanExporter
) -> None:
    response = traced_client.post(
        "/embed",
        json={"inputs": ["hello", "world wide"]},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    assert response.status_code == 200
    spans = exported.get_finished_spans()
    (server,) = by_name(spans, "POST /embed")
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    names = children(spans, server)
    assert "tokenize" in names and "finish" in names


def test_probes_and_scrapes_make_no_spans(
    traced_client: TestClient, exported: InMemorySpanExporter
) -> None:
    for path in ("/health/live", "/health/ready", "/metrics", "/v2/health/ready"):
        assert traced_client.get(path).status_code == 200
    assert exported.get_finished_spans() == ()


def test_a_failed_request_is_an_error_span(
    traced_client: TestClient, exported: InMemorySpanExporter
) -> None:
    response = traced_client.post("/classify", json={"images": [b64(b"not an image")]})
    assert response.status_code == 400
    spans = exported.get_finished_spans()
    (server,) = by_name(spans, "POST /classify")
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is the client's error
    (prepare,) = by_name(spans, "prepare")
    assert prepare.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in prepare.events)


def test_render_has_its_own_span(traced_client: TestClient, exported: InMemorySpanExporter) -> None:
    response = traced_client.post(
        "/detect", json={"images": [b64(png(solid((255, 0, 0), 64, 64)))], "render": True}
    )
    assert response.status_code == 200
    (server,) = by_name(exported.get_finished_spans(), "POST /detect")
    assert "render" in children(exported.get_finished_spans(), server)


def test_the_sampler_follows_the_parent_and_batches_follow_their_requests() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

    never = tracing.sampler_from(
        OtelSettings(traces_sampler="parentbased_traceidratio", traces_sampler_arg=0.0)
    )
    sampled = SpanContext(int(TRACE_ID, 16), int(PARENT_ID, 16), True, TraceFlags(1))
    unsampled = SpanContext(int(TRACE_ID, 16), int(PARENT_ID, 16), True, TraceFlags(0))
    parent = trace.set_span_in_context(NonRecordingSpan(sampled))
    assert not never.should_sample(None, 1, "POST /embed").decision.is_sampled()
    assert never.should_sample(parent, 1, "POST /embed").decision.is_sampled()
    assert never.should_sample(None, 1, "batch", links=[Link(sampled)]).decision.is_sampled()
    assert not never.should_sample(None, 1, "batch", links=[Link(unsampled)]).decision.is_sampled()


def test_tracing_is_off_without_an_exporter_and_costs_nothing(tiny_repo: Path) -> None:
    assert not OtelSettings().configured  # this test process sets no OTEL_ endpoint
    assert OtelSettings(exporter_otlp_endpoint="http://127.0.0.1:4318").configured
    assert not OtelSettings(exporter_otlp_endpoint="http://x", sdk_disabled=True).configured
    assert not OtelSettings(exporter_otlp_endpoint="http://x", traces_exporter="none").configured
    assert not tracing.enabled()
    assert tracing.span("prepare") is tracing.span("finish")  # one shared no-op
    assert tracing.capture() is None and tracing.exemplar() is None and tracing.log_fields() == {}
    app = create_app(Settings(model_repository=tiny_repo, **TINY_DEFAULTS))
    assert not any(m.cls is tracing.TracingMiddleware for m in app.user_middleware)


def test_the_scrape_has_the_scaling_signals_and_exemplars_in_openmetrics(
    traced_client: TestClient, exported: InMemorySpanExporter
) -> None:
    assert traced_client.post("/embed", json={"inputs": ["hi"]}).status_code == 200
    text = traced_client.get("/metrics").text
    assert 'ortserve_model_inflight_requests{model="tiny-embedder"} 0.0' in text
    assert 'ortserve_queue_oldest_age_seconds{model="tiny-embedder"} 0.0' in text
    assert "trace_id" not in text  # the classic format has no exemplars
    scrape = traced_client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    (server,) = by_name(exported.get_finished_spans(), "POST /embed")
    assert server.context is not None
    trace_id = format(server.context.trace_id, "032x")
    assert any(
        line.startswith('ortserve_request_duration_seconds_bucket{endpoint="/embed"')
        and f'trace_id="{trace_id}"' in line
        for line in scrape.text.splitlines()
    )
    assert scrape.text.rstrip().endswith("# EOF")


def test_each_pipeline_stage_is_a_span_over_its_models_spans(
    traced_client: TestClient, exported: InMemorySpanExporter
) -> None:
    arr = solid((0, 0, 0), 64, 64)
    arr[:32, :32] = (255, 0, 0)
    response = traced_client.post("/pipelines/tiny-pipeline", json={"images": [b64(png(arr))]})
    assert response.status_code == 200, response.text
    spans = exported.get_finished_spans()
    (server,) = by_name(spans, "POST /pipelines/{name}")
    assert children(spans, server) == ["stage classify", "stage crop", "stage detect"]
    (detect,) = by_name(spans, "stage detect")
    assert detect.attributes is not None and detect.attributes["ortserve.model"] == "tiny-yolo"
    assert "batch tiny-yolo" in children(spans, detect)  # the lone image ran on an idle model
    (classify,) = by_name(spans, "stage classify")
    assert "batch tiny-classifier" in children(spans, classify)
