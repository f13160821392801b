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
from service.api.deps import budget_for, inference_of, registry_of, settings_of, timing_headers
from service.api.openapi import json_body
from service.api.v2_codec import (
    CONFIG_TO_V2,
    TRITON_TYPES,
    decode_request,
    encode_response,
    v2_shape,
)
from service.errors import ModelNotFoundError, NotReadyError
from service.model_config import TensorSpec
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelEntry, not_ready_message
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
from service.tasks.embedding import EmbedProcessor

router = APIRouter(tags=["v2"])
health_router = APIRouter(tags=["v2"])

PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]


# -- lookups ---------------------------------------------------------------------------------
def _entry(request: Request, name: str) -> ModelEntry:
    entry = registry_of(request).entry(name)
    request.state.model = entry.name
    return entry


def _version(name: str, version: str | None) -> int | None:
    if version is None:
        return None
    if not version.isdigit():
        raise ModelNotFoundError(f"model {name!r} has no version {version!r}")
    return int(version)


def _model(request: Request, name: str, version: str | None) -> LoadedModel:
    """A version's model for metadata (any status but failed); the latest when None."""
    entry = _entry(request, name)
    if not entry.serving:
        raise NotReadyError(not_ready_message(entry))
    return entry.version(_version(name, version))


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


def _metadata(request: Request, name: str, version: str | None) -> ModelMetadata:
    model = _model(request, name, version)
    config = model.config

    def tensors(specs: list[TensorSpec]) -> list[TensorMetadata]:
        return [
            TensorMetadata(
                name=s.name, datatype=CONFIG_TO_V2[s.dtype], shape=v2_shape(s, config.batched)
            )
            for s in specs
        ]

    return ModelMetadata(
        name=model.name,
        versions=[str(v) for v in sorted(_entry(request, name).serving)],
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
    return _metadata(request, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model metadata of a version (v2)",
    responses=_MODEL_ERRORS,
)
async def model_version_metadata(name: str, version: str, request: Request) -> ModelMetadata:
    return _metadata(request, name, version)


def _ready_response(request: Request, name: str, version: str | None) -> JSONResponse:
    entry = _entry(request, name)
    wanted = _version(name, version)
    if wanted is None:
        ready = entry.ready
    else:
        model = entry.serving.get(wanted)
        if model is None and entry.status != "loading":
            raise ModelNotFoundError(f"model {name!r} has no version {wanted} serving")
        ready = entry.status == "ready" and model is not None and model.ready
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get(
    "/v2/models/{name}/ready",
    response_model=ReadyResponse,
    summary="Model ready (v2): 200 when it serves, 503 when not, 404 when unknown",
    responses={503: {"model": ReadyResponse}, **error_responses(401, 404)},
)
async def model_ready(name: str, request: Request) -> JSONResponse:
    return _ready_response(request, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    response_model=ReadyResponse,
    summary="Model version ready (v2)",
    responses={503: {"model": ReadyResponse}, **error_responses(401, 404)},
)
async def model_version_ready(name: str, version: str, request: Request) -> JSONResponse:
    return _ready_response(request, name, version)


@router.get(
    "/v2/models/{name}/config",
    summary="Model configuration (Triton's model_configuration extension)",
    responses=_MODEL_ERRORS,
)
async def model_config(name: str, request: Request) -> dict[str, Any]:
    model = _model(request, name, None)
    config = model.config

    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "data_type": TRITON_TYPES[CONFIG_TO_V2[s.dtype]], "dims": s.dims}
            for s in specs
        ]

    b = config.batching
    return {
        "name": model.name,
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
    budget = budget_for(request)
    _entry(request, name)  # 404 before the body is read
    inference = inference_of(request)
    async with inference.lease(name, None, _version(name, version), budget) as model:
        config = model.config
        processor = model.processor
        vocab = processor.encoder.vocab_size if isinstance(processor, EmbedProcessor) else None
        decoded = await inference.in_pool(
            lambda body: decode_request(
                body,
                content_encoding=request.headers.get("content-encoding"),
                header_length=request.headers.get(HEADER_LENGTH),
                config=config,
                max_body_bytes=settings_of(request).max_body_bytes,
                vocab_size=vocab,
            ),
            await request.body(),
        )
        outputs = await inference.tensors(model, decoded.items, budget)
    body, header_length = await inference.in_pool(
        encode_response, decoded, outputs, config, model.version
    )
    if header_length is None:
        response = Response(body, media_type="application/json")
    else:
        response = Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )
    timing_headers(response, budget)
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
