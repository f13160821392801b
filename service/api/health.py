"""Health and model listing: GET /health/live, /health/ready, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.api.deps import registry_of, settings_of
from service.errors import ModelNotFoundError, NotReadyError
from service.runtime.registry import ModelEntry, PipelineEntry
from service.schemas.common import BatchingInfo, ModelInfo, ModelList, TensorInfo, VersionInfo

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
    for name, entry in registry.models.items() if registry else []:
        m.model_ready.labels(name).set(1.0 if entry.ready else 0.0)
        m.queue_depth.labels(name).set(sum(v.batcher.queue_depth for v in entry.serving.values()))
    for name, pipeline in registry.pipelines.items() if registry else []:
        m.model_ready.labels(name).set(1.0 if pipeline.ready else 0.0)
    body, media_type = m.exposition(request.headers.get("accept", ""))
    return Response(body, media_type=media_type)


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
    entries: list[ModelEntry | PipelineEntry] = (
        [*registry.models.values(), *registry.pipelines.values()] if registry else []
    )
    models = {entry.name: status_of(entry) for entry in entries}
    settings = settings_of(request)
    # with a fixed model set (control none), a failed model keeps a strict server unready; a
    # managed repository (poll, explicit) may hold failed or no models and still serve the rest
    fixed = settings.model_control == "none"
    tolerated = not (fixed and settings.strict_startup)
    settled = all(s == "ready" or (s == "failed" and tolerated) for s in models.values())
    is_ready = (
        bool(getattr(state, "ready", False))
        and settled
        and (any(s == "ready" for s in models.values()) or not fixed)
    )
    body = Readiness(status="ready" if is_ready else "not_ready", models=models)
    return JSONResponse(body.model_dump(), status_code=200 if is_ready else 503)


def status_of(entry: ModelEntry | PipelineEntry) -> str:
    """loading, ready or failed; unhealthy when it should serve but a batcher has died."""
    return entry.status if entry.ready or entry.status != "ready" else "unhealthy"


def model_info(entry: ModelEntry, defaults: list[str]) -> ModelInfo:
    config = entry.config
    latest = entry.latest
    info = ModelInfo(
        name=entry.name,
        task=config.task if config else None,
        format=config.format if config else None,
        status=status_of(entry),
        error=entry.error,
        labels=len(latest.labels) if latest else 0,
        default_for=defaults,
        versions=[
            VersionInfo(version=v, status="ready" if m.ready else "unhealthy")
            for v, m in sorted(entry.serving.items())
        ],
    )
    if config is not None:
        info.inputs = [TensorInfo(name=t.name, dtype=t.dtype, dims=t.dims) for t in config.inputs]
        info.outputs = [TensorInfo(name=t.name, dtype=t.dtype, dims=t.dims) for t in config.outputs]
        b = config.batching
        info.batching = BatchingInfo(
            max_batch_size=b.max_batch_size,
            max_delay_ms=b.max_delay_ms,
            max_queue_size=b.max_queue_size,
            instances=b.instances,
        )
    if latest is not None and info.batching is not None:
        info.providers = latest.session.providers
        info.provider_options = latest.session.provider_options
        stats = latest.batcher.stats
        info.batching.queue_depth = latest.batcher.queue_depth
        info.batching.mean_batch_size = round(stats.mean_batch_size, 3)
        info.batching.batches = stats.batches
        info.batching.items = stats.items
        info.batching.failed_batches = stats.failed_batches
        info.batching.expired = stats.expired
        info.batching.dropped_disconnected = stats.dropped_disconnected
        info.batching.rejected_overloaded = stats.rejected_overloaded
    return info


def pipeline_info(entry: PipelineEntry) -> ModelInfo:
    """A pipeline in the model listing: its steps, and whether its models let it serve."""
    return ModelInfo(
        name=entry.name,
        task="pipeline",
        format=None,
        status=status_of(entry),
        error=entry.error,
        versions=[
            VersionInfo(version=1, status="ready" if entry.ready else "unhealthy")
            for _ in entry.serving
        ],
        steps=list(entry.config.steps) if entry.config is not None else None,
    )


@models_router.get(
    "/v1/models", response_model=ModelList, summary="Every model with its status and IO"
)
async def list_models(request: Request) -> ModelList:
    registry = registry_of(request)
    defaults: dict[str, list[str]] = {}
    for task in TASKS:
        try:
            defaults.setdefault(registry.default_for(task), []).append(task)
        except (ModelNotFoundError, NotReadyError):  # a task without any model has no default
            continue
    return ModelList(
        models=[model_info(m, defaults.get(n, [])) for n, m in registry.models.items()]
        + [pipeline_info(p) for p in registry.pipelines.values()]
    )
