"""POST /embed"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import context_for, core_of, read_json_request, timing_headers
from service.api.openapi import json_body
from service.context import RequestContext
from service.core import Core
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
    answer = await answer_embed(core_of(request), ctx, params)
    timing_headers(response, ctx)
    return answer


async def answer_embed(core: Core, ctx: RequestContext, params: EmbedRequest) -> EmbedResponse:
    """One /embed request through the core (this route, and service.api.fast's)."""
    texts = [params.inputs] if isinstance(params.inputs, str) else params.inputs
    result = await core.embed(
        ctx,
        params.model,
        params.model_version,
        texts,
        EmbedParams(normalize=params.normalize),
        truncate=params.truncate,
    )
    return EmbedResponse.from_result(result)
