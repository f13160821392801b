"""Health and model listing: GET /health/live, /health/ready, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from service.api.deps import registry_of, settings_of
from service.errors import ModelNotFoundError
from service.runtime.registry import ServedModel
from service.schemas.common import BatchingInfo, ModelInfo, ModelList, TensorInfo

router = APIRouter(tags=["health"])
models_router = APIRouter(tags=["models"])
TASKS = ("classify", "detect", "segment", "embed")


class Liveness(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready", examples=["ready"])
    models: dict[str, str] = Field(description="Status per model.")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state
    registry = getattr(state, "registry", None)
    m = state.metrics
    for name, served in registry.models.items() if registry else []:
        m.model_ready.labels(name).set(1.0 if served.ready else 0.0)
        m.queue_depth.labels(name).set(served.batcher.queue_depth if served.batcher else 0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/health/live", response_model=Liveness, summary="The process is up")
async def live() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/health/ready",
    response_model=Readiness,
    summary="Every model is loaded and warmed up",
    responses={
        503: {"model": Readiness, "description": "Starting, shutting down or a model failed."}
    },
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    registry = getattr(state, "registry", None)
    models = {
        name: m.status if m.ready or m.status != "ready" else "unhealthy"
        for name, m in (registry.models.items() if registry else [])
    }
    strict = settings_of(request).strict_startup
    settled = all(s == "ready" or (s == "failed" and not strict) for s in models.values())
    is_ready = (
        bool(getattr(state, "ready", False))
        and settled
        and any(s == "ready" for s in models.values())
    )
    body = Readiness(status="ready" if is_ready else "not_ready", models=models)
    return JSONResponse(body.model_dump(), status_code=200 if is_ready else 503)


def model_info(served: ServedModel, defaults: list[str]) -> ModelInfo:
    config = served.config
    info = ModelInfo(
        name=served.name,
        task=config.task if config else None,
        format=config.format if config else None,
        status=served.status if served.ready or served.status != "ready" else "unhealthy",
        error=served.error,
        labels=len(served.labels),
        default_for=defaults,
    )
    if config is not None:
        info.inputs = [TensorInfo(name=t.name, dtype=t.dtype, dims=t.dims) for t in config.inputs]
        info.outputs = [TensorInfo(name=t.name, dtype=t.dtype, dims=t.dims) for t in config.outputs]
        b = config.batching
        info.batching = BatchingInfo(
            max_batch_size=b.max_batch_size,
            max_delay_ms=b.max_delay_ms,
            max_queue_size=b.max_queue_size,
        )
    if served.session is not None:
        info.providers = served.session.providers
    if served.batcher is not None and info.batching is not None:
        stats = served.batcher.stats
        info.batching.queue_depth = served.batcher.queue_depth
        info.batching.mean_batch_size = round(stats.mean_batch_size, 3)
        info.batching.batches = stats.batches
        info.batching.items = stats.items
        info.batching.failed_batches = stats.failed_batches
        info.batching.expired = stats.expired
        info.batching.dropped_disconnected = stats.dropped_disconnected
        info.batching.rejected_overloaded = stats.rejected_overloaded
    return info


@models_router.get(
    "/v1/models", response_model=ModelList, summary="Every model with its status and IO"
)
async def list_models(request: Request) -> ModelList:
    registry = registry_of(request)
    defaults: dict[str, list[str]] = {}
    for task in TASKS:
        try:
            defaults.setdefault(registry.default_for(task), []).append(task)
        except ModelNotFoundError:  # a task without any model has no default
            continue
    return ModelList(
        models=[model_info(m, defaults.get(n, [])) for n, m in registry.models.items()]
    )
