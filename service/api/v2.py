"""Open Inference Protocol v2 (KServe / Triton) over REST: raw tensors in, raw tensors out.

Inference goes through the same dynamic batcher as the task endpoints: a request's batch is
split into rows along axis 0 and each row is submitted on its own, so rows from different
clients (and from /classify, /embed, ...) share ONNX Runtime runs; the model's ``collate`` stacks
them (text models pad to the longest) and the rows are stacked back in order. Models without a
batch axis (``max_batch_size: 0``) take the request's tensors as one item.

JSON tensors and the binary tensor extension (``Inference-Header-Content-Length``: a JSON header
followed by raw little-endian tensor bytes) are both understood, in both directions, which is
what ``tritonclient.http`` sends by default. Errors keep the service's one error body, whose
``error`` member is what the protocol asks for.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service import __version__
from service.api import health
from service.api.deps import RequestContext, gather_or_cancel, registry_of, settings_of
from service.api.openapi import json_body
from service.api.v2_codec import (
    CONFIG_TO_V2,
    TRITON_TYPES,
    VERSION,
    decode_request,
    encode_response,
    v2_shape,
)
from service.errors import ModelNotFoundError, NotReadyError
from service.runtime.model_config import ModelConfig, TensorSpec
from service.runtime.registry import ServedModel, not_ready_message
from service.schemas.common import error_responses
from service.schemas.v2 import (
    InferRequest,
    InferResponse,
    LiveResponse,
    ModelMetadata,
    ReadyResponse,
    ServerMetadata,
    TensorMetadata,
)

router = APIRouter(tags=["v2"])
health_router = APIRouter(tags=["v2"])

PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]


# -- lookups ---------------------------------------------------------------------------------
def _served(request: Request, name: str, version: str | None) -> ServedModel:
    served = registry_of(request).models.get(name)
    if served is None:
        raise ModelNotFoundError(f"model {name!r} does not exist; GET /v1/models lists them")
    if version is not None and version != VERSION:
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r}; it serves {VERSION!r}"
        )
    request.state.model = served.name
    return served


def _config(served: ServedModel) -> ModelConfig:
    if served.config is None:
        raise NotReadyError(not_ready_message(served))
    return served.config


def _ready(served: ServedModel) -> ModelConfig:
    config = _config(served)
    if not served.ready:
        raise NotReadyError(not_ready_message(served))
    return config


# -- routes ----------------------------------------------------------------------------------
@router.get("/v2", response_model=ServerMetadata, summary="Server metadata (v2)")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="ortserve", version=__version__, extensions=EXTENSIONS)


@health_router.get("/v2/health/live", response_model=LiveResponse, summary="Live (v2)")
async def server_live() -> LiveResponse:
    return LiveResponse(live=True)


@health_router.get(
    "/v2/health/ready",
    response_model=ReadyResponse,
    summary="Ready (v2): 200 once every model is loaded and warmed up, else 503",
    responses={503: {"model": ReadyResponse}},
)
async def server_ready(request: Request) -> JSONResponse:
    ours = await health.ready(request)  # the same rule as /health/ready
    ok = ours.status_code == 200
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _metadata(served: ServedModel) -> ModelMetadata:
    config = _config(served)

    def tensors(specs: list[TensorSpec]) -> list[TensorMetadata]:
        return [
            TensorMetadata(
                name=s.name, datatype=CONFIG_TO_V2[s.dtype], shape=v2_shape(s, config.batched)
            )
            for s in specs
        ]

    return ModelMetadata(
        name=served.name,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=tensors(config.inputs),
        outputs=tensors(config.outputs),
    )


_MODEL_ERRORS = error_responses(401, 404, 503)


@router.get(
    "/v2/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata (v2)",
    responses=_MODEL_ERRORS,
)
async def model_metadata(name: str, request: Request) -> ModelMetadata:
    return _metadata(_served(request, name, None))


@router.get(
    "/v2/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model metadata of a version (v2)",
    responses=_MODEL_ERRORS,
)
async def model_version_metadata(name: str, version: str, request: Request) -> ModelMetadata:
    return _metadata(_served(request, name, version))


def _ready_response(served: ServedModel) -> JSONResponse:
    return JSONResponse({"ready": served.ready}, status_code=200 if served.ready else 503)


@router.get(
    "/v2/models/{name}/ready",
    response_model=ReadyResponse,
    summary="Model ready (v2): 200 when it serves, 503 when not, 404 when unknown",
    responses={503: {"model": ReadyResponse}, **error_responses(401, 404)},
)
async def model_ready(name: str, request: Request) -> JSONResponse:
    return _ready_response(_served(request, name, None))


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    response_model=ReadyResponse,
    summary="Model version ready (v2)",
    responses={503: {"model": ReadyResponse}, **error_responses(401, 404)},
)
async def model_version_ready(name: str, version: str, request: Request) -> JSONResponse:
    return _ready_response(_served(request, name, version))


@router.get(
    "/v2/models/{name}/config",
    summary="Model configuration (Triton's model_configuration extension)",
    responses=_MODEL_ERRORS,
)
async def model_config(name: str, request: Request) -> dict[str, Any]:
    served = _served(request, name, None)
    config = _config(served)

    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "data_type": TRITON_TYPES[CONFIG_TO_V2[s.dtype]], "dims": s.dims}
            for s in specs
        ]

    b = config.batching
    return {
        "name": served.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": b.max_batch_size,
        "input": tensors(config.inputs),
        "output": tensors(config.outputs),
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(b.max_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": b.max_queue_size},
        },
    }


_INFER_DOC: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: {
            "model": InferResponse,
            "description": (
                "JSON tensors; with binary outputs, application/octet-stream: the JSON header "
                "(its length in Inference-Header-Content-Length) followed by the tensor bytes."
            ),
        },
        **error_responses(400, 401, 404, 413, 415, 429, 500, 503, 504),
    },
    "openapi_extra": json_body(InferRequest),
}


async def _infer(request: Request, name: str, version: str | None) -> Response:
    ctx = RequestContext.start(request)
    served = _served(request, name, version)
    config = _ready(served)
    decoded = await ctx.in_pool(
        lambda body: decode_request(
            body,
            content_encoding=request.headers.get("content-encoding"),
            header_length=request.headers.get(HEADER_LENGTH),
            config=config,
            max_body_bytes=settings_of(request).max_body_bytes,
            vocab_size=served.text.vocab_size if served.text is not None else None,
        ),
        await request.body(),
    )
    outputs = await gather_or_cancel([ctx.infer(served, item) for item in decoded.items])
    body, header_length = await ctx.in_pool(encode_response, decoded, outputs, config)
    if header_length is None:
        response = Response(body, media_type="application/json")
    else:
        response = Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )
    ctx.headers(response)
    return response


@router.post("/v2/models/{name}/infer", summary="Inference (v2)", **_INFER_DOC)
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Inference on a version (v2)",
    **_INFER_DOC,
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(request, name, version)
