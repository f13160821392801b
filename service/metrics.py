"""Prometheus metrics and the access log.

Each app owns its CollectorRegistry (no process-global state), so several apps can live in one
process (tests) and nothing is registered twice. The scaling signals (requests in flight, the
age of the oldest queued request) are read from the models when scraped, not sampled before.
With tracing on, the latency histograms carry the sampled trace ids as exemplars (shown in the
OpenMetrics format, which Prometheus asks for).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as text_format
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Sample
from starlette.types import ASGIApp, Receive, Scope, Send

from service import tracing
from service.asgi import StatusRecorder
from service.runtime.batcher import BatchObserver
from service.runtime.registry import ModelRegistry

access_log = logging.getLogger("service.access")

# paths whose names become label values; anything else is "other" (bounded cardinality)
KNOWN_PATHS = frozenset(
    {
        "/classify",
        "/detect",
        "/segment",
        "/embed",
        "/v1/models",
        "/health/live",
        "/health/ready",
        "/metrics",
    }
)
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingLoad:
    """Per model, at scrape time: requests holding it (leased: decoding, queued, running or
    postprocessing) and how long its oldest queued item has waited. The autoscaling signal:
    a batching server's CPU stays flat while its queue grows."""

    def __init__(self) -> None:
        self.registry: ModelRegistry | None = None

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        inflight, oldest = self._families()
        for name, entry in self.registry.models.items() if self.registry is not None else ():
            versions = list(entry.serving.values())
            inflight.add_metric([name], sum(model.usage.count for model in versions))
            ages = [model.batcher.oldest_queued_s() for model in versions]
            oldest.add_metric([name], max(ages, default=0.0))
        yield inflight
        yield oldest

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "ortserve_model_inflight_requests",
                "Requests holding the model now: decoding, queued, running or postprocessing.",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "ortserve_queue_oldest_age_seconds",
                "How long the oldest item in the model's queue has waited (0: empty).",
                labels=["model"],
            ),
        )


class Metrics:
    def __init__(self, request_timeout_s: float = 30.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # what the queue-age alert compares with (deploy/prometheus/alerts.yml)
        Gauge(
            "ortserve_request_timeout_seconds",
            "The default request deadline (ORTSERVE_REQUEST_TIMEOUT_S).",
            registry=r,
        ).set(request_timeout_s)
        self.requests = Counter(
            "ortserve_requests",
            "HTTP requests by endpoint, model and status.",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ortserve_request_duration_seconds",
            "Request latency, receipt to response.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "ortserve_queue_wait_seconds",
            "Time items wait in a model's queue (batch mean).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "ortserve_inference_seconds",
            "Batch run time (collate + ONNX Runtime + split).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ortserve_batch_size",
            "Items per ONNX Runtime run.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ortserve_queue_depth", "Items waiting in a model's queue.", ["model"], registry=r
        )
        self.model_ready = Gauge(
            "ortserve_model_ready", "1 if the model is serving, else 0.", ["model"], registry=r
        )
        self.model_loads = Counter(
            "ortserve_model_loads",
            "Model (re)loads by result (ok, failed), start-up included.",
            ["model", "result"],
            registry=r,
        )
        self.load_duration = Histogram(
            "ortserve_model_load_duration_seconds",
            "Time to build and warm up a model's serving versions at runtime.",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=r,
        )
        self.serving_version = Gauge(
            "ortserve_model_serving_version",
            "The latest version a model serves (absent once unloaded).",
            ["model"],
            registry=r,
        )
        self.serving_load = ServingLoad()
        r.register(self.serving_load)
        # with worker processes (service.workers): every process's families, merged
        self.gather: Callable[[], Awaitable[list[Metric]]] | None = None

    def watch(self, registry: ModelRegistry) -> None:
        """Read the scaling signals from ``registry``'s models at each scrape."""
        self.serving_load.registry = registry

    def families(self) -> list[Metric]:
        """This process's metrics now (the per-model gauges read from the registry first)."""
        registry = self.serving_load.registry
        for name, entry in registry.models.items() if registry else []:
            self.model_ready.labels(name).set(1.0 if entry.ready else 0.0)
            depth = sum(v.batcher.queue_depth for v in entry.serving.values())
            self.queue_depth.labels(name).set(depth)
        for name, pipeline in registry.pipelines.items() if registry else []:
            self.model_ready.labels(name).set(1.0 if pipeline.ready else 0.0)
        return list(self.registry.collect())

    async def scrape(self, accept: str) -> tuple[bytes, str]:
        """The scrape's body and content type: OpenMetrics (with exemplars) when ``accept``
        asks for it, as Prometheus does, else the classic text format. With worker processes,
        whichever process is scraped answers for all of them."""
        families = self.families() if self.gather is None else await self.gather()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        if "application/openmetrics-text" in accept:
            body = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
            return body, openmetrics.CONTENT_TYPE_LATEST
        return text_format.generate_latest(registry), text_format.CONTENT_TYPE_LATEST

    # -- service.runtime.registry.LifecycleObserver ---------------------------------------------
    def model_loaded(self, model: str, versions: list[int], seconds: float) -> None:
        self.model_loads.labels(model, "ok").inc()
        if seconds > 0:  # start-up loads are timed by the start-up itself
            self.load_duration.labels(model).observe(seconds)
        self.serving_version.labels(model).set(max(versions))

    def load_failed(self, model: str) -> None:
        self.model_loads.labels(model, "failed").inc()

    def model_unloaded(self, model: str) -> None:
        with contextlib.suppress(KeyError):
            self.serving_version.remove(model)
        with contextlib.suppress(KeyError):
            self.model_ready.remove(model)
        with contextlib.suppress(KeyError):
            self.queue_depth.remove(model)

    def batch_observer(self, model: str) -> BatchObserver:
        batch_size = self.batch_size.labels(model)
        queue_wait = self.queue_wait.labels(model)
        inference = self.inference.labels(model)

        def observe(size: int, mean_queue_s: float, inference_s: float) -> None:
            exemplar = tracing.exemplar()  # the batch span, when it was traced
            batch_size.observe(size, exemplar)
            queue_wait.observe(mean_queue_s, exemplar)
            inference.observe(inference_s, exemplar)

        return observe


class _Families:
    """Metric families already collected, as a collector (for an exposition)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


# gauges whose processes' values add up (work held or queued in each); the others are states
# every process reports alike, merged as the worst (``ready``) or the largest
_SUMMED_GAUGES = frozenset({"ortserve_queue_depth", "ortserve_model_inflight_requests"})
_LEAST_GAUGES = frozenset({"ortserve_model_ready"})


def merge(processes: Iterable[list[Metric]]) -> list[Metric]:
    """Several processes' families as one server's: counters and histograms added, gauges per
    ``_SUMMED_GAUGES`` / ``_LEAST_GAUGES`` or else the largest, ``_created`` the earliest; a
    sample's exemplar is the first process's that has one."""
    merged: dict[str, Metric] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for families in processes:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                samples[family.name] = {}
            seen = samples[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = seen.get(key)
                if old is None:
                    seen[key] = sample
                    continue
                value = _combine(family, sample.name, old.value, sample.value)
                seen[key] = old._replace(value=value, exemplar=old.exemplar or sample.exemplar)
    for name, family in merged.items():
        family.samples = list(samples[name].values())
    return list(merged.values())


def _combine(family: Metric, sample: str, a: float, b: float) -> float:
    if sample.endswith("_created"):
        return min(a, b)
    if family.type != "gauge" or family.name in _SUMMED_GAUGES:
        return a + b
    return min(a, b) if family.name in _LEAST_GAUGES else max(a, b)


class MetricsMiddleware:
    """Counts and times every HTTP request and writes one access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            elapsed = time.perf_counter() - started
            # the matched route's template keeps labels bounded (/v2/models/{name}/infer)
            route = scope.get("route")
            path = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            )
            model = str(scope.get("state", {}).get("model", ""))
            status = recorder.status
            self.metrics.requests.labels(path, model, str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed, tracing.exemplar())
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000.0,
                extra={
                    "status": status,
                    "duration_ms": round(elapsed * 1000.0, 2),
                    "model": model,
                    "path": scope["path"],
                    "method": scope["method"],
                    **tracing.log_fields(),
                },
            )
