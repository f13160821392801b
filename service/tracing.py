"""OpenTelemetry tracing: the only module that imports ``opentelemetry``.

Optional (``pip install 'ortserve[otel]'``) and configured only by the standard ``OTEL_*``
variables (``service.settings.OtelSettings``). Off, it costs a module-global check per call: the
rest of the service calls these functions unconditionally. On, each HTTP request is a server span
(a W3C ``traceparent`` continues the caller's trace) with children for the steps it spends its
time in::

    POST /classify                      server span: route, status, model, request id
    ├── prepare                         decode + resize (per input; tokenize for texts, per request)
    ├── queue                           submit → its batch starts; linked to the batch span
    ├── finish                          postprocessing (NMS, top-k, pooling)
    └── render                          the picture, for render=true

and each batch run is one span of its own, ``batch <model>`` (model, version, batch size,
provider), linked to the span of every request in it: a root span, in a trace of its own, since
one batch serves many traces. A request that finds its model idle runs alone (prepare, run,
finish as one job on the model thread); its batch span is then simply its child.

Probes (health, readiness, metrics) are never traced. Sampling is the standard samplers
(``OTEL_TRACES_SAMPLER``, default parent-based always-on); a batch span is sampled when any
request linked to it is, and not made at all otherwise. Exceptions are recorded on the span they
cross, and a 5xx answer marks the server span as an error.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from service.asgi import StatusRecorder

if TYPE_CHECKING:
    from opentelemetry.context import Context as Context  # re-exported: a parent for span()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext as SpanContext  # re-exported: a batch's link
    from opentelemetry.trace import Tracer

    from service.settings import OtelSettings

try:  # the otel extra: the SDK (the API alone comes with other packages and exports nothing)
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.trace import TracerProvider as _TracerProvider
    from opentelemetry.sdk.trace import sampling
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    AVAILABLE = False

log = logging.getLogger(__name__)

# never traced: probes and scrapes come every few seconds and say nothing about a request
UNTRACED_PATHS = ("/health/", "/v2/health/", "/metrics")
Attributes = Mapping[str, str | int | float | bool]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def setup(settings: OtelSettings, version: str) -> bool:
    """Start tracing when the environment asks for it and the SDK is installed; True when on.
    Once per process: an app created while tracing is on shares it."""
    if _tracer is not None:
        return True
    if not settings.configured:
        return False
    if not AVAILABLE:
        log.warning(
            "OTEL_* asks for tracing but the OpenTelemetry SDK is not installed "
            "(pip install 'ortserve[otel]'); tracing is off"
        )
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    exporter: SpanExporter
    if settings.traces_exporter.strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        if settings.exporter_otlp_protocol != "http/protobuf":
            log.warning(
                "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with http/protobuf",
                settings.exporter_otlp_protocol,
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    resource = Resource.create({"service.version": version})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": settings.service_name or "ortserve"}))
    provider = _TracerProvider(resource=resource, sampler=sampler_from(settings))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    configure(provider)
    log.info(
        "tracing on: %s to %s, sampler %s",
        settings.traces_exporter,
        settings.exporter_otlp_traces_endpoint or settings.exporter_otlp_endpoint or "stdout",
        provider.sampler.get_description(),
    )
    return True


def configure(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` (tests give one with an in-memory exporter); None: off."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("ortserve") if provider is not None else None


def shutdown() -> None:
    """Export what is buffered and stop (the app's shutdown)."""
    provider = _provider
    configure(None)
    if provider is not None:
        provider.shutdown()


def sampler_from(settings: OtelSettings) -> sampling.Sampler:
    """The standard sampler ``OTEL_TRACES_SAMPLER`` names, under the rule for batch spans."""
    name = settings.traces_sampler.strip().lower()
    ratio = 1.0 if settings.traces_sampler_arg is None else settings.traces_sampler_arg
    samplers: dict[str, Callable[[], sampling.Sampler]] = {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        log.warning("OTEL_TRACES_SAMPLER=%s is not supported; using parentbased_always_on", name)
        name = "parentbased_always_on"
    return _BatchesFollowRequests(samplers[name]())


if AVAILABLE:

    class _BatchesFollowRequests(sampling.Sampler):
        """A root span with links (a batch run) is sampled exactly when a request it serves is;
        every other span as the configured sampler says. A ratio sampler alone would keep a
        batch span for 1 % of batches, mostly not those of the 1 % of requests kept."""

        def __init__(self, sampler: sampling.Sampler) -> None:
            self._sampler = sampler

        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Link] | None = None,
            trace_state: Any = None,
        ) -> sampling.SamplingResult:
            parent = otel_trace.get_current_span(parent_context).get_span_context()
            if links and not parent.is_valid:
                followed = any(link.context.trace_flags.sampled for link in links)
                decision = (
                    sampling.Decision.RECORD_AND_SAMPLE if followed else sampling.Decision.DROP
                )
                return sampling.SamplingResult(decision, attributes if followed else None)
            return self._sampler.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"BatchesFollowRequests{{{self._sampler.get_description()}}}"


# -- inside a request ------------------------------------------------------------------------------
def current() -> Context | None:
    """This request's context when it is being recorded (to parent spans made on another
    thread); None when tracing is off or the request is not sampled."""
    if _tracer is None or not otel_trace.get_current_span().is_recording():
        return None
    return otel_context.get_current()


def capture() -> SpanContext | None:
    """The current span's context when it is recorded: what a batch span links to."""
    if _tracer is None:
        return None
    span = otel_trace.get_current_span()
    return span.get_span_context() if span.is_recording() else None


def span(
    name: str, attributes: Attributes | None = None, parent: Context | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (or of ``parent``, from ``current()``) for the block;
    nothing when tracing is off or the request is not recorded. Exceptions are recorded on it."""
    if _tracer is None:
        return _NOOP
    if parent is None:
        if not otel_trace.get_current_span().is_recording():
            return _NOOP
    elif not otel_trace.get_current_span(parent).is_recording():
        return _NOOP
    return _tracer.start_as_current_span(name, context=parent, attributes=attributes)


def now_ns() -> int:
    """Wall-clock nanoseconds, the spans' clock (for ``interval``)."""
    return time.time_ns()


def interval(
    name: str,
    start_ns: int,
    end_ns: int | None = None,
    *,
    link: SpanContext | None = None,
    attributes: Attributes | None = None,
    error: BaseException | None = None,
) -> None:
    """A child span of the current one, after the fact: ``start_ns`` → ``end_ns`` (now when
    None), linked to ``link``, failed with ``error``. For time spent waiting elsewhere (the
    queue), which has no block of code of its own to wrap."""
    if _tracer is None or not otel_trace.get_current_span().is_recording():
        return
    links = [Link(link)] if link is not None else ()
    spanned = _tracer.start_span(name, attributes=attributes, links=links, start_time=start_ns)
    if error is not None:
        spanned.record_exception(error)
        spanned.set_status(Status(StatusCode.ERROR, type(error).__name__))
    spanned.end(end_time=end_ns)


def batch_span(
    model: str,
    attributes: Attributes,
    requests: Sequence[SpanContext | None],
    start_ns: int,
    end_ns: int,
    *,
    error: BaseException | None = None,
    parent: Context | None = None,
) -> SpanContext | None:
    """The span of one batch run over the requests' spans (``capture()`` at submit, None for
    those not recorded): a root linked to each, or, given ``parent`` (a request that ran
    alone), that request's child. Made after the run, with its times; None when no request in
    it is recorded (nobody would see it)."""
    if _tracer is None:
        return None
    links = [Link(ctx) for ctx in requests if ctx is not None]
    if parent is None and not links:
        return None
    if parent is not None and not otel_trace.get_current_span(parent).is_recording():
        return None
    spanned = _tracer.start_span(
        f"batch {model}",
        # a root: otherwise it would join whichever request's trace happens to be current
        context=parent if parent is not None else otel_context.Context(),
        attributes={**attributes, "ortserve.batch.size": len(requests)},
        links=links if parent is None else (),
        start_time=start_ns,
    )
    if error is not None:
        spanned.record_exception(error)
        spanned.set_status(Status(StatusCode.ERROR, type(error).__name__))
    spanned.end(end_time=end_ns)
    return spanned.get_span_context()


@contextlib.contextmanager
def using(ctx: SpanContext | None) -> Iterator[None]:
    """``ctx`` as the current span for the block (the batch span while its metrics are
    observed, so that their exemplars point to it)."""
    if ctx is None or _tracer is None:
        yield
        return
    token = otel_context.attach(otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(ctx)))
    try:
        yield
    finally:
        otel_context.detach(token)


def exemplar() -> dict[str, str] | None:
    """The current span's ids as a Prometheus exemplar, when it is sampled."""
    if _tracer is None:
        return None
    ctx = otel_trace.get_current_span().get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def log_fields() -> dict[str, str | bool]:
    """``trace_id`` (and whether it is sampled) for the access-log line; empty when off. A
    request that is not sampled still has a trace id, shared with whatever called it."""
    if _tracer is None:
        return {}
    ctx = otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "trace_sampled": ctx.trace_flags.sampled}


# -- the server span ------------------------------------------------------------------------------
@functools.cache
def _propagator() -> Any:
    return TraceContextTextMapPropagator()


@contextlib.contextmanager
def _server_span(
    tracer: Any, name: str, carrier: dict[str, str], attributes: dict[str, Any]
) -> Iterator[Any]:
    """A server span continuing ``carrier``'s W3C context, current for the block; an exception
    that leaves the block is recorded on it. HTTP and gRPC front ends both open theirs here."""
    server = tracer.start_span(
        name,
        context=_propagator().extract(carrier) if carrier else None,
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
    token = otel_context.attach(otel_trace.set_span_in_context(server))
    try:
        yield server
    except BaseException as exc:
        if server.is_recording():
            server.record_exception(exc)
        raise
    finally:
        otel_context.detach(token)
        server.end()


@contextlib.contextmanager
def rpc_span(service: str, method: str, metadata: Mapping[str, str]) -> Iterator[Any]:
    """A server span for one gRPC call (``rpc.system`` grpc), continuing a ``traceparent`` from
    its metadata; current for the block, so the call's own spans are its children. Yields the
    span (None when tracing is off) for the caller's status and model attributes."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    carrier = {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")}
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    with _server_span(tracer, f"{service}/{method}", carrier, attributes) as server:
        yield server


class TracingMiddleware:
    """A server span per HTTP request (not for probes), continuing an incoming W3C
    ``traceparent``; status, route and model set when the answer is known. Installed only when
    tracing is on. Inside ``RequestIdMiddleware`` (the span carries the request id) and outside
    ``MetricsMiddleware`` (the access log and the latency exemplar see the span)."""

    def __init__(self, app: ASGIApp, request_id: Callable[[], str]) -> None:
        self.app = app
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _tracer
        if scope["type"] != "http" or tracer is None or scope["path"].startswith(UNTRACED_PATHS):
            await self.app(scope, receive, send)
            return
        carrier = {}
        for key, value in scope["headers"]:
            if key in (b"traceparent", b"tracestate"):
                carrier[key.decode()] = value.decode("latin-1")
        method = scope["method"]
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "ortserve.request_id": self.request_id(),
        }
        recorder = StatusRecorder(send)
        with _server_span(tracer, method, carrier, attributes) as server:
            try:
                await self.app(scope, receive, recorder)
            finally:
                if server.is_recording():
                    route = getattr(scope.get("route"), "path", None)
                    if route:
                        server.update_name(f"{method} {route}")
                        server.set_attribute("http.route", route)
                    status = recorder.status
                    server.set_attribute("http.response.status_code", status)
                    model = scope.get("state", {}).get("model")
                    if model:
                        server.set_attribute("ortserve.model", str(model))
                    if status >= 500:
                        server.set_status(Status(StatusCode.ERROR))
