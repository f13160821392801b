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

from service.api import health
from service.api.deps import context_for, core_of, settings_of, timing_headers
from service.api.openapi import json_body
from service.api.v2_codec import (
    decoder,
    encode_response,
    parse_body,
)
from service.api.v2_raw import encode_raw, raw_request
from service.context import RequestContext
from service.core import Core
from service.schemas.common import error_responses
from service.schemas.v2 import (
    InferRequest,
    InferResponse,
    LiveResponse,
    ModelMetadata,
    ReadyResponse,
    ServerMetadata,
)

router = APIRouter(tags=["v2"])
health_router = APIRouter(tags=["v2"])

HEADER_LENGTH = "inference-header-content-length"
INLINE_BYTES = 64 * 1024  # bodies (and answers) up to this are coded on the event loop


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata (v2)")
async def server_metadata(request: Request) -> ServerMetadata:
    context_for(request)  # the caller's key, as every route that describes the server
    return Core.server_metadata()


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


_MODEL_ERRORS = error_responses(401, 404, 503)


@router.get(
    "/v2/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata (v2)",
    responses=_MODEL_ERRORS,
)
async def model_metadata(name: str, request: Request) -> ModelMetadata:
    return core_of(request).model_metadata(context_for(request), name)


@router.get(
    "/v2/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model metadata of a version (v2)",
    responses=_MODEL_ERRORS,
)
async def model_version_metadata(name: str, version: str, request: Request) -> ModelMetadata:
    return core_of(request).model_metadata(context_for(request), name, version)


def _ready_response(request: Request, name: str, version: str | None) -> JSONResponse:
    ready = core_of(request).model_ready(context_for(request), name, version)
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
    return core_of(request).model_config(context_for(request), name)


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


async def answer_infer(
    core: Core,
    ctx: RequestContext,
    name: str,
    version: str | None,
    body: bytes,
    *,
    content_encoding: str | None,
    header_length: str | None,
    max_body_bytes: int,
) -> tuple[bytes, int | None]:
    """A v2 infer body → the answer's body and, with binary outputs, its JSON header's length.
    Small bodies are decoded and encoded on the event loop, where a thread hop would cost more
    than the work; large ones in the worker pool."""
    inline = len(body) <= INLINE_BYTES

    def parse() -> tuple[InferRequest, memoryview]:
        return parse_body(
            body,
            content_encoding=content_encoding,
            header_length=header_length,
            max_body_bytes=max_body_bytes,
        )

    request, binary = parse() if inline else await core.inference.in_pool(parse)
    raw = raw_request(request, binary)
    if raw is not None:  # encoded images or texts: the typed model's own processing
        model_name, version_no, outputs = await core.run_raw(
            ctx, name, version, raw.items, raw.parameters
        )
        return encode_raw(raw, model_name, version_no, outputs)

    decoded, inferred = await core.infer(
        ctx, name, version, decoder(request, binary), lambda d: d.items, inline=inline
    )
    model = inferred.model
    if inline and sum(v.nbytes for o in inferred.outputs for v in o.values()) <= INLINE_BYTES:
        return encode_response(decoded, inferred.outputs, model.config, model.version)
    return await core.inference.in_pool(
        encode_response, decoded, inferred.outputs, model.config, model.version
    )


def infer_headers(length: int | None) -> dict[str, str]:
    if length is None:
        return {"content-type": "application/json"}
    return {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(length),
    }


async def _infer(request: Request, name: str, version: str | None) -> Response:
    ctx = context_for(request)
    core = core_of(request)
    core.entry(ctx, name)  # 404 before the body is read
    body, length = await answer_infer(
        core,
        ctx,
        name,
        version,
        await request.body(),
        content_encoding=request.headers.get("content-encoding"),
        header_length=request.headers.get(HEADER_LENGTH),
        max_body_bytes=settings_of(request).max_body_bytes,
    )
    headers = infer_headers(length)
    response = Response(body, media_type=headers.pop("content-type"), headers=headers)
    timing_headers(response, ctx)
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
