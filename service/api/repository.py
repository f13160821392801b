"""The Open Inference Protocol model-repository extension (Triton's, also KServe's):

    POST /v2/repository/index                  every model in the repository, with its state
    POST /v2/repository/models/{name}/load     (re)load from its folder, optionally with a config
    POST /v2/repository/models/{name}/unload   stop routing to it, drain, release

``tritonclient.http``'s ``get_model_repository_index``, ``load_model`` and ``unload_model`` work
against these unchanged. Load and unload need ``ORTSERVE_MODEL_CONTROL`` explicit (unload) or
explicit / poll (load, which then forces a reload); the semantics are in service.runtime.registry.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.api.deps import context_for, core_of, parse_json
from service.api.openapi import json_body
from service.errors import BadRequestError
from service.schemas.common import error_responses
from service.schemas.v2 import (
    LoadRequest,
    RepositoryActionResponse,
    RepositoryIndexRequest,
    RepositoryModel,
    UnloadRequest,
)

router = APIRouter(tags=["v2"])
M = TypeVar("M", bound=BaseModel)


async def _body(request: Request, model: type[M]) -> M:
    """An optional JSON body (tritonclient sends none, ``{}``, or parameters)."""
    raw = await request.body()
    return model.model_validate(parse_json(raw) if raw.strip() else {})


def _override(params: LoadRequest) -> dict[str, Any] | None:
    config = params.parameters.config
    if isinstance(config, str):
        try:
            config = orjson.loads(config)
        except orjson.JSONDecodeError:
            raise BadRequestError("parameters.config is not valid JSON") from None
        if not isinstance(config, dict):
            raise BadRequestError("parameters.config must be a JSON object")
    return config


@router.post(
    "/v2/repository/index",
    response_model=list[RepositoryModel],
    summary="Model repository index (v2 model-repository extension)",
    openapi_extra=json_body(RepositoryIndexRequest),
    responses=error_responses(400, 401, 403, 413, 422),
)
async def index(request: Request) -> list[RepositoryModel]:
    ctx = context_for(request, management=True)
    params = await _body(request, RepositoryIndexRequest)
    return await core_of(request).repository_index(ctx, ready_only=params.ready)


@router.post(
    "/v2/repository/models/{name}/load",
    response_model=RepositoryActionResponse,
    summary="Load or reload a model (v2 model-repository extension)",
    description=(
        "Builds and warms up the model's versions from its folder, then swaps them in; requests "
        "already running finish on the old ones. A failed load (400, with the reason) leaves "
        "what served before serving."
    ),
    openapi_extra=json_body(LoadRequest),
    responses=error_responses(400, 401, 403, 413, 422),
)
async def load(name: str, request: Request) -> RepositoryActionResponse:
    ctx = context_for(request, management=True)
    params = await _body(request, LoadRequest)
    versions = await core_of(request).load(ctx, name, _override(params))
    return RepositoryActionResponse(name=name, versions=versions)


@router.post(
    "/v2/repository/models/{name}/unload",
    response_model=RepositoryActionResponse,
    summary="Unload a model (v2 model-repository extension)",
    description="New requests get 404 at once; queued and running ones finish; then it is freed.",
    openapi_extra=json_body(UnloadRequest),
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
async def unload(name: str, request: Request) -> RepositoryActionResponse:
    ctx = context_for(request, management=True)
    await _body(request, UnloadRequest)
    await core_of(request).unload(ctx, name)
    return RepositoryActionResponse(name=name, versions=[])
