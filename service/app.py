"""create_app(settings): lifespan, routers, middleware and the one error handler."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import __version__, tracing
from service.api import demo, embed, health, openai, pipelines, repository, v2, vision
from service.api import openapi as openapi_docs
from service.api.fast import FastPath
from service.auth import Guard
from service.core import Core
from service.errors import (
    INTERNAL_MESSAGE,
    ClientDisconnectedError,
    ServiceError,
    service_body,
    validation_details,
    validation_summary,
)
from service.metrics import Metrics, MetricsMiddleware
from service.middleware import (
    BodyLimitMiddleware,
    ConnectionLimitMiddleware,
    RequestIdMiddleware,
    error_body,
    request_id_var,
)
from service.runtime.registry import ModelRegistry
from service.settings import OtelSettings, Settings

log = logging.getLogger("service")
# FastAPI's native telemetry (0.16x) looks up the OpenTelemetry providers on every request (an
# environment read each time) and, once one is set, makes HTTP spans of its own beside
# service.tracing's: off, where the FastAPI release has it.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def _error(
    status: int,
    message: str,
    error_type: str,
    headers: dict[str, str] | None = None,
    details: list[dict[str, object]] | None = None,
) -> JSONResponse:
    body = service_body(message, error_type, request_id_var.get(), details)
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request %s failed: %s", request_id_var.get(), exc.message)
        return _error(exc.status_code, exc.message, exc.error_type, exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # anywhere Starlette notices it (a body or form being read): nobody reads the answer;
        # a 499 in the access log and metrics, no traceback
        gone = ClientDisconnectedError("the client closed the connection")
        return _error(gone.status_code, gone.message, gone.error_type)

    @app.exception_handler(RequestValidationError)
    async def request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(exc.errors())
        return _error(422, validation_summary(details), "validation_error", details=details)

    @app.exception_handler(ValidationError)
    async def body_validation(_: Request, exc: ValidationError) -> JSONResponse:
        details = validation_details(exc.errors())
        return _error(422, validation_summary(details), "validation_error", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        return _error(
            exc.status_code,
            str(exc.detail),
            kinds.get(exc.status_code, "http_error"),
            dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("request %s: unexpected error", request_id_var.get(), exc_info=exc)
        return _error(500, INTERNAL_MESSAGE, "internal_error")


RegistryFactory = Callable[[Settings, Metrics], ModelRegistry]


def create_app(
    settings: Settings | None = None, *, registry_factory: RegistryFactory | None = None
) -> FastAPI:
    """The app; ``registry_factory`` makes its registry in the lifespan (a worker process's
    ``MirrorRegistry``; by default a ``ModelRegistry`` that loads the repository itself)."""
    settings = settings or Settings()

    metrics = Metrics(settings.request_timeout_s)
    # OTEL_* only; off (and free) unless an exporter is configured and the otel extra installed
    traced = tracing.setup(OtelSettings(), __version__)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_workers, thread_name_prefix="preprocess"
        )
        registry = (
            registry_factory(settings, metrics)
            if registry_factory is not None
            else ModelRegistry(settings, observer=metrics)
        )
        metrics.watch(registry)
        core = Core(settings, registry, pool, guard)
        app.state.core = core
        app.state.registry = registry  # for tests and tools that look inside
        # loading and warm-up block: keep them off the event loop so /health/live answers
        await asyncio.to_thread(registry.load)
        registry.start()
        watcher = (
            asyncio.get_running_loop().create_task(registry.watch(), name="repository-poll")
            if registry.watches
            else None
        )
        core.started = True
        log.info(
            "ready: %d model(s) from %s (model control: %s)",
            len(registry.models),
            settings.model_repository,
            settings.model_control,
        )
        try:
            yield
        finally:
            core.started = False
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await registry.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            if traced:
                await asyncio.to_thread(tracing.shutdown)  # exports what is buffered

    app = FastAPI(
        title="ortserve",
        version=__version__,
        description="Batched, typed REST inference for ONNX models: classify, detect, segment, embed.",
        lifespan=lifespan,
        **_NO_NATIVE_TELEMETRY,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    guard = Guard(settings.api_keys, settings.admin_keys, settings.management_networks)
    _install_error_handlers(app)
    # every route that reaches a model or its metadata asks the core for a context, which checks
    # the caller's key (service.auth); the probes, metrics, docs and demo files are public
    for module in (vision, embed, pipelines):
        app.include_router(module.router)
    app.include_router(health.models_router)
    app.include_router(health.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.include_router(v2.health_router)
    app.include_router(openai.router)
    app.include_router(demo.router)
    openapi_docs.install(app)
    # innermost: the probes and v2 inference answered without FastAPI's routing (service.api.fast)
    app.add_middleware(FastPath, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id", "x-request-timeout-ms"],
        )
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.request_timeout_s,
        max_bodies_bytes=settings.max_bodies_bytes,
    )
    app.add_middleware(ConnectionLimitMiddleware, max_connections=settings.max_connections)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if traced:
        app.add_middleware(tracing.TracingMiddleware, request_id=request_id_var.get)
    app.add_middleware(RequestIdMiddleware)
    return app


__all__ = ["create_app", "error_body"]
