"""Prometheus metrics and the access log.

Each app owns its CollectorRegistry (no process-global state), so several apps can live in one
process (tests) and nothing is registered twice.
"""

from __future__ import annotations

import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.runtime.batcher import BatchObserver

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
            batch_size.observe(size)
            queue_wait.observe(mean_queue_s)
            inference.observe(inference_s)

        return observe


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
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            # the matched route's template keeps labels bounded (/v2/models/{name}/infer)
            route = scope.get("route")
            path = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            )
            model = str(scope.get("state", {}).get("model", ""))
            self.metrics.requests.labels(path, model, str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
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
                },
            )
