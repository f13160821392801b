"""POST /embed, and ``embed_texts``: the pipeline /embed and /v1/embeddings share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request, Response

from service.api.deps import (
    RequestContext,
    gather_or_cancel,
    get_model,
    read_json_request,
    settings_of,
)
from service.api.openapi import json_body
from service.errors import PayloadTooLargeError, ValidationFailedError
from service.schemas.common import error_responses
from service.schemas.embed import EmbedRequest, EmbedResponse, Usage
from service.tasks.base import Feeds, Outputs
from service.tasks.embedding import TextMeta, l2_normalise, pool

router = APIRouter(tags=["text"])
INLINE_TOKENIZE_CHARS = 2_000


@dataclass(frozen=True)
class Embedded:
    model: str
    vectors: list[np.ndarray]  # float32[D] each, in input order
    tokens: int  # real tokens over all texts, specials included, after truncation


async def embed_texts(
    ctx: RequestContext,
    texts: Sequence[str],
    *,
    model: str | None,
    normalize: bool,
    truncate: bool,
    field: str = "inputs",
) -> Embedded:
    """Check limits, tokenize, run each text through the model's batcher and pool.

    ``field`` names the request field in error messages (``inputs`` here, ``input`` for OpenAI).
    """
    request = ctx.request
    settings = settings_of(request)
    if len(texts) > settings.max_texts_per_request:
        raise PayloadTooLargeError(
            f"at most {settings.max_texts_per_request} texts per request (ORTSERVE_MAX_TEXTS_PER_REQUEST)"
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValidationFailedError(f"{field}[{index}] is empty or only whitespace")
        if len(text) > settings.max_text_chars:
            raise PayloadTooLargeError(
                f"{field}[{index}] has {len(text)} characters; the limit is {settings.max_text_chars}"
            )
    served = get_model(request, model, "embed")
    assert served.text is not None
    assert served.config is not None
    assert served.config.text is not None
    encoder = served.text
    if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
        # a few short texts tokenize in tens of microseconds: cheaper than a thread hop
        encoded = encoder.encode(texts, truncate=truncate)
    else:
        encoded = await ctx.in_pool(lambda: encoder.encode(texts, truncate=truncate))
    output_name = served.config.outputs[0].name
    token_level = served.config.format == "token-embeddings"
    pooling = served.config.text.pooling

    def finish(outputs: Outputs, meta: TextMeta) -> np.ndarray:
        vector = outputs[output_name]
        if token_level:
            vector = pool(vector, meta.tokens, pooling)
        vector = vector.astype(np.float32, copy=False)
        return l2_normalise(vector) if normalize else vector

    async def one(feeds: Feeds, meta: TextMeta) -> np.ndarray:
        return finish(await ctx.infer(served, feeds), meta)

    if len(encoded) == 1 and ctx.model_idle(served):
        [(feeds, meta)] = encoded
        vectors = [await ctx.run_alone(served, lambda run_one: finish(run_one(feeds), meta))]
    else:
        vectors = await gather_or_cancel([one(feeds, meta) for feeds, meta in encoded])
    return Embedded(served.name, vectors, sum(meta.tokens for _, meta in encoded))


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed texts",
    description="Sentence embeddings; texts are tokenized, batched with other requests and pooled.",
    openapi_extra=json_body(EmbedRequest),
    responses=error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
)
async def embed(request: Request, response: Response) -> EmbedResponse:
    ctx = RequestContext.start(request)
    params = await read_json_request(request, EmbedRequest)
    texts = [params.inputs] if isinstance(params.inputs, str) else params.inputs
    result = await embed_texts(
        ctx, texts, model=params.model, normalize=params.normalize, truncate=params.truncate
    )
    ctx.headers(response)
    return EmbedResponse(
        model=result.model,
        dimensions=int(result.vectors[0].shape[0]),
        embeddings=[v.tolist() for v in result.vectors],
        usage=Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )
