"""OpenAI-compatible embeddings: POST /v1/embeddings.

Runs the /embed pipeline (``embed_texts``) and speaks OpenAI's request, response and error
shapes, so the official ``openai`` client (and tools built on it) work unchanged with
``base_url=<server>/v1``. Errors are ``{"error": {"message", "type", "param", "code"}}``; request
validation problems are 400, as OpenAI's API answers them.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from service.api.deps import context_for, core_of, read_json_request, timing_headers
from service.api.openapi import json_body
from service.errors import ParamError, ServiceError, openai_body, openai_code, openai_status
from service.middleware import request_id_var
from service.schemas.openai import (
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
    OpenAIErrorResponse,
)
from service.tasks.embedding import EmbedParams

log = logging.getLogger("service")


def openai_error(
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    kind: str | None = None,
) -> JSONResponse:
    return JSONResponse(
        openai_body(status, message, code, param, kind), status_code=status, headers=headers
    )


def _validation_response(errors: Sequence[Any]) -> JSONResponse:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # a union field reports one error per member type: name the field, not the member
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    return openai_error(
        400, f"{where}: {first.get('msg', 'invalid value')}", "invalid_value", param
    )


class OpenAIRoute(APIRoute):
    """Answers errors in OpenAI's shape instead of the service's usual one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                if exc.status_code >= 500:
                    log.warning("request %s failed: %s", request_id_var.get(), exc.message)
                return openai_error(
                    openai_status(exc),
                    exc.message,
                    openai_code(exc),
                    exc.param if isinstance(exc, ParamError) else None,
                    exc.headers,
                    exc.openai_type,
                )
            except (RequestValidationError, ValidationError) as exc:
                return _validation_response(exc.errors())

        return route


router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


def _texts(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, str) for v in value):
        return [v for v in value if isinstance(v, str)]
    raise ParamError(
        "token-id arrays are not supported; send the text (a string or a list of strings)",
        param="input",
    )


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    values: list[float] = vector.tolist()
    return values


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    summary="Create embeddings (OpenAI-compatible)",
    description=(
        "OpenAI's embeddings API over this server's embed models: point the `openai` client "
        "at `<server>/v1`. Vectors are L2-normalised; `dimensions` keeps the first n and "
        "normalises again. Texts longer than the model's maximum are truncated."
    ),
    openapi_extra=json_body(EmbeddingsRequest),
    responses={
        code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 413, 415, 429, 500, 503)
    },
)
async def create_embeddings(request: Request, response: Response) -> EmbeddingsResponse:
    ctx = context_for(request)
    params = await read_json_request(request, EmbeddingsRequest)
    texts = _texts(params.input)
    result = await core_of(request).embed(
        ctx,
        params.model,
        None,
        texts,
        EmbedParams(normalize=True, dimensions=params.dimensions),
        truncate=True,
        field="input",
    )
    timing_headers(response, ctx)
    return EmbeddingsResponse(
        data=[
            EmbeddingData(index=i, embedding=_encode(v, params.encoding_format))
            for i, v in enumerate(result.vectors)
        ],
        model=result.model,
        usage=EmbeddingsUsage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )
