"""The Open Inference Protocol model-repository extension (Triton's, also KServe's):

    POST /v2/repository/index                  every model in the repository, with its state
    POST /v2/repository/models/{name}/load     (re)load from its folder, optionally with a config
    POST /v2/repository/models/{name}/unload   stop routing to it, drain, release

``tritonclient.http``'s ``get_model_repository_index``, ``load_model`` and ``unload_model`` work
against these unchanged. Load and unload need ``ORTSERVE_MODEL_CONTROL`` explicit (unload) or
explicit / poll (load, which then forces a reload); the semantics are in service.runtime.registry.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.api.deps import parse_json, registry_of, settings_of
from service.api.openapi import json_body
from service.errors import BadRequestError
from service.model_config import MODEL_NAME_PATTERN
from service.runtime.registry import ModelRegistry, not_ready_message, repository_folders
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


def _control(request: Request, action: str, allowed: tuple[str, ...]) -> ModelRegistry:
    mode = settings_of(request).model_control
    if mode not in allowed:
        raise BadRequestError(
            f"{action} is refused with ORTSERVE_MODEL_CONTROL={mode}; it needs "
            f"{' or '.join(allowed)} (the model set is otherwise fixed at start-up)"
        )
    return registry_of(request)


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
    params = await _body(request, RepositoryIndexRequest)
    registry = registry_of(request)
    folders = await asyncio.to_thread(repository_folders, registry.root)
    rows: list[RepositoryModel] = []
    for name in sorted(set(folders) | set(registry.models) | set(registry.pipelines)):
        entry = registry.models.get(name) or registry.pipelines.get(name)
        if entry is not None and entry.ready:
            rows += [
                RepositoryModel(name=name, version=str(v), state="READY") for v in entry.serving
            ]
        elif not params.ready:
            state = "LOADING" if entry is not None and entry.status == "loading" else "UNAVAILABLE"
            reason = not_ready_message(entry) if entry is not None else "not loaded"
            rows.append(RepositoryModel(name=name, state=state, reason=reason))
    return rows


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
    registry = _control(request, "load", ("explicit", "poll"))
    params = await _body(request, LoadRequest)
    _check_name(name)
    entry = await registry.load_model(name, _override(params))
    return RepositoryActionResponse(name=name, versions=sorted(entry.serving))


@router.post(
    "/v2/repository/models/{name}/unload",
    response_model=RepositoryActionResponse,
    summary="Unload a model (v2 model-repository extension)",
    description="New requests get 404 at once; queued and running ones finish; then it is freed.",
    openapi_extra=json_body(UnloadRequest),
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
async def unload(name: str, request: Request) -> RepositoryActionResponse:
    registry = _control(request, "unload", ("explicit",))
    await _body(request, UnloadRequest)
    await registry.unload_model(name)
    return RepositoryActionResponse(name=name, versions=[])


def _check_name(name: str) -> None:
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise BadRequestError(f"{name!r} is not a valid model name")
