"""Probes, metrics and the model listing: GET /health/live, /health/ready, /metrics, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.api.deps import context_for, core_of
from service.schemas.common import ModelList

router = APIRouter(tags=["health"])
models_router = APIRouter(tags=["models"])


class Liveness(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready", examples=["ready"])
    models: dict[str, str] = Field(description="Status per model.")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body, media_type = await request.app.state.metrics.scrape(request.headers.get("accept", ""))
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
    core = getattr(request.app.state, "core", None)
    state = core.ready() if core is not None else None
    is_ready = state is not None and state.ready
    body = Readiness(
        status="ready" if is_ready else "not_ready", models=state.models if state else {}
    )
    return JSONResponse(body.model_dump(), status_code=200 if is_ready else 503)


@models_router.get(
    "/v1/models", response_model=ModelList, summary="Every model with its status and IO"
)
async def list_models(request: Request) -> ModelList:
    return core_of(request).models(context_for(request))
