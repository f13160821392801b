"""POST /embed"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import context_for, core_of, read_json_request, timing_headers
from service.api.openapi import json_body
from service.schemas.common import error_responses
from service.schemas.embed import EmbedRequest, EmbedResponse
from service.tasks.embedding import EmbedParams

router = APIRouter(tags=["text"])


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed texts",
    description="Sentence embeddings; texts are tokenized, batched with other requests and pooled.",
    openapi_extra=json_body(EmbedRequest),
    responses=error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
)
async def embed(request: Request, response: Response) -> EmbedResponse:
    ctx = context_for(request)
    params = await read_json_request(request, EmbedRequest)
    texts = [params.inputs] if isinstance(params.inputs, str) else params.inputs
    result = await core_of(request).embed(
        ctx,
        params.model,
        params.model_version,
        texts,
        EmbedParams(normalize=params.normalize),
        truncate=params.truncate,
    )
    timing_headers(response, ctx)
    return EmbedResponse.from_result(result)
