"""``inference.GRPCInferenceService``: the v2 protocol's gRPC methods on the core.

Thin, as the HTTP routes: each method turns its metadata into a ``Caller`` (the peer's address,
``authorization: Bearer …``), asks ``Core.begin`` for a context (the caller's key; the call's
deadline as the request timeout; the call's cancellation as a disconnect), calls one core
operation and encodes what it returns. Every refusal is a ``ServiceError`` whose ``grpc_code``
is the status sent, with its message; anything else is logged and answered ``INTERNAL`` with a
fixed message. Each call is counted in ``ortserve_requests`` / ``ortserve_request_duration_seconds``
with its method path (``/inference.GRPCInferenceService/ModelInfer``) as the endpoint and the
HTTP status of the same outcome, and written to the access log with ``protocol: grpc``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import orjson
from google.protobuf import json_format

from service import tracing
from service.api.v2_codec import decoder, parse_body
from service.api.v2_raw import raw_request
from service.context import RequestContext
from service.core import Core
from service.errors import (
    INTERNAL_MESSAGE,
    BadRequestError,
    DeadlineExceededError,
    NotReadyError,
    ServiceError,
)
from service.grpc import tensors
from service.grpc.callers import caller_of
from service.grpc.protos import grpc_service_pb2 as pb
from service.grpc.protos import grpc_service_pb2_grpc as pb_grpc
from service.metrics import Metrics
from service.runtime.model import LoadedModel
from service.schemas.v2 import TensorMetadata

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")
SERVICE = "inference.GRPCInferenceService"
INLINE_BYTES = 64 * 1024  # requests (and answers) up to this are coded on the event loop
R = TypeVar("R")


def _version(version: str) -> str | None:
    return version or None  # the protocol's empty version: the latest


def _metadata(context: Any) -> dict[str, str]:
    """The call's text metadata (a ``traceparent`` among it)."""
    return {
        key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
    }


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The service, on whichever core the app has built (None while it starts up)."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics: Metrics | None = getattr(app.state, "metrics", None)

    @property
    def core(self) -> Core:
        core: Core | None = getattr(self.app.state, "core", None)
        if core is None:  # the port opens before start-up has built the core
            raise NotReadyError("the server is starting up: models are loading")
        return core

    # -- the one wrapper: context, errors, metrics, access log -----------------------------------
    async def _call(
        self,
        method: str,
        context: Any,
        operation: Callable[[RequestContext], Awaitable[R]],
        *,
        management: bool = False,
    ) -> R:
        started = time.perf_counter()
        model = ""
        code, status, message = grpc.StatusCode.OK, 200, ""

        def label(name: str) -> None:
            nonlocal model
            model = name

        try:
            with tracing.rpc_span(SERVICE, method, _metadata(context)) as span:
                try:
                    ctx = self._begin(context, management=management)
                    ctx.on_model = label
                    return await operation(ctx)
                finally:
                    if span is not None and span.is_recording() and model:
                        span.set_attribute("ortserve.model", model)
        except ServiceError as exc:
            code, status, message = grpc.StatusCode[exc.grpc_code], exc.status_code, exc.message
            if status >= 500:
                log.warning("grpc %s failed: %s", method, exc.message)
        except asyncio.CancelledError:  # the client cancelled: nobody reads an answer
            code, status = grpc.StatusCode.CANCELLED, 499
            raise
        except Exception:
            log.exception("grpc %s: unexpected error", method)
            code, status, message = grpc.StatusCode.INTERNAL, 500, INTERNAL_MESSAGE
        finally:
            self._observe(method, model, code, status, time.perf_counter() - started)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _begin(self, context: Any, *, management: bool) -> RequestContext:
        loop = asyncio.get_running_loop()
        started = loop.time()
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError("the call's deadline passed before it was served")

        async def cancelled() -> bool:
            return bool(context.cancelled() or context.done())

        return self.core.begin(
            caller_of(context),
            started=started,
            timeout_s=remaining,
            is_disconnected=cancelled,
            protocol="grpc",
            management=management,
        )

    def _observe(
        self, method: str, model: str, code: grpc.StatusCode, status: int, elapsed: float
    ) -> None:
        path = f"/{SERVICE}/{method}"
        if self.metrics is not None:
            self.metrics.requests.labels(path, model, str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
        access_log.info(
            "GRPC %s %s %.1fms",
            path,
            code.name,
            elapsed * 1000.0,
            extra={
                "status": status,
                "grpc_code": code.name,
                "duration_ms": round(elapsed * 1000.0, 2),
                "model": model,
                "path": path,
                "method": "GRPC",
                "protocol": "grpc",
            },
        )

    # -- probes and metadata -----------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=Core.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        core: Core | None = getattr(self.app.state, "core", None)
        return pb.ServerReadyResponse(ready=core is not None and core.ready().ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            ready = self.core.model_ready(ctx, request.name, _version(request.version))
            return pb.ModelReadyResponse(ready=ready)

        return await self._call("ModelReady", context, run)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            meta = Core.server_metadata()
            return pb.ServerMetadataResponse(
                name=meta.name, version=meta.version, extensions=meta.extensions
            )

        return await self._call("ServerMetadata", context, run)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            meta = self.core.model_metadata(ctx, request.name, _version(request.version))
            answer = pb.ModelMetadataResponse(
                name=meta.name, versions=meta.versions, platform=meta.platform
            )
            _tensors(answer.inputs, meta.inputs)
            _tensors(answer.outputs, meta.outputs)
            if meta.raw is not None:  # ortserve's field 1000: standard clients skip it
                _tensors(answer.raw.inputs, meta.raw.inputs)
                _tensors(answer.raw.outputs, meta.raw.outputs)
            return answer

        return await self._call("ModelMetadata", context, run)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            config = self.core.model_config(ctx, request.name)
            message = json_format.ParseDict(config, pb.ModelConfig(), ignore_unknown_fields=True)
            return pb.ModelConfigResponse(config=message)

        return await self._call("ModelConfig", context, run)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            core = self.core
            wanted = _version(request.version)
            names = [request.name] if request.name else sorted(core.registry.models)
            answer = pb.ModelStatisticsResponse()
            for name in names:
                entry = core.entry(ctx, name)
                for version, model in sorted(entry.serving.items()):
                    if wanted is None or wanted == str(version):
                        _statistics(answer.model_stats.add(), model)
            return answer

        return await self._call("ModelStatistics", context, run)

    # -- repository (management) ------------------------------------------------------------
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            rows = await self.core.repository_index(ctx, ready_only=request.ready)
            answer = pb.RepositoryIndexResponse()
            for row in rows:
                answer.models.add(
                    name=row.name, version=row.version or "", state=row.state, reason=row.reason
                )
            return answer

        return await self._call("RepositoryIndex", context, run, management=True)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            await self.core.load(ctx, request.model_name, _override(request.parameters))
            return pb.RepositoryModelLoadResponse()

        return await self._call("RepositoryModelLoad", context, run, management=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            await self.core.unload(ctx, request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._call("RepositoryModelUnload", context, run, management=True)

    # -- inference --------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def run(ctx: RequestContext) -> Any:
            core = self.core
            name = request.model_name
            core.entry(ctx, name)  # NOT_FOUND before any decoding
            body, header_length = tensors.request_body(request)
            inline = len(body) <= INLINE_BYTES
            parsed, binary = parse_body(
                body,
                content_encoding=None,
                header_length=str(header_length),
                max_body_bytes=self.max_body_bytes,
            )
            raw = raw_request(parsed, binary)
            if raw is not None:  # encoded images or texts: the typed model's own processing
                model_name, version, outputs = await core.run_raw(
                    ctx, name, _version(request.model_version), raw.items, raw.parameters
                )
                context.set_trailing_metadata(_timing(ctx))
                return tensors.raw_response(raw, model_name, version, outputs)

            decoded, inferred = await core.infer(
                ctx,
                name,
                _version(request.model_version),
                decoder(parsed, binary),
                lambda d: d.items,
                inline=inline,
            )
            model = inferred.model
            args = (decoded, inferred.outputs, model.config, model.version)
            if (
                inline
                and sum(v.nbytes for o in inferred.outputs for v in o.values()) <= INLINE_BYTES
            ):
                answer = tensors.response(*args)
            else:
                answer = await core.inference.in_pool(tensors.response, *args)
            context.set_trailing_metadata(_timing(ctx))
            return answer

        return await self._call("ModelInfer", context, run)


def _tensors(into: Any, tensors: list[TensorMetadata]) -> None:
    for t in tensors:
        into.add(name=t.name, datatype=t.datatype, shape=t.shape)


def _override(entries: Any) -> dict[str, Any] | None:
    """A load's ``config`` parameter (JSON, as tritonclient sends it) as the config override."""
    unknown = [key for key in entries if key != "config"]
    if unknown:
        raise BadRequestError(
            f"unsupported load parameters {sorted(unknown)}: only 'config' (file overrides are "
            "not supported)"
        )
    if "config" not in entries:
        return None
    value = entries["config"]
    if value.WhichOneof("parameter_choice") != "string_param":
        raise BadRequestError("the load parameter 'config' must be a JSON string")
    try:
        config = orjson.loads(value.string_param)
    except orjson.JSONDecodeError:
        raise BadRequestError("the load parameter 'config' is not valid JSON") from None
    if not isinstance(config, dict):
        raise BadRequestError("the load parameter 'config' must be a JSON object")
    return config


def _statistics(stats: Any, model: LoadedModel) -> None:
    """What the batcher counts, in Triton's shape: items (inference_count, success count),
    runs (execution_count) and runs per batch size. Durations are not accumulated per model
    here (they are Prometheus histograms: ortserve_inference_seconds, ortserve_queue_wait_seconds),
    so every ``ns`` is 0."""
    counted = model.batcher.stats
    stats.name = model.name
    stats.version = str(model.version)
    stats.inference_count = counted.items
    stats.execution_count = counted.batches
    stats.inference_stats.success.count = counted.items
    stats.inference_stats.fail.count = counted.expired + counted.rejected_overloaded
    for size, runs in sorted(counted.batch_sizes.items()):
        row = stats.batch_stats.add(batch_size=size)
        row.compute_infer.count = runs


def _timing(ctx: RequestContext) -> tuple[tuple[str, str], ...]:
    """The HTTP front end's timing headers, as trailing metadata."""
    return tuple(ctx.timings())
