"""Request and response schemas of the OpenAI-compatible POST /v1/embeddings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from service.schemas.common import ModelName, RequestModel
from service.schemas.embed import Text

TokenIds = Annotated[list[int], Field(min_length=1, max_length=65536)]


class EmbeddingsRequest(RequestModel):
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=4096)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=4096)]
    ) = Field(
        description=(
            "One text or a list of texts; embeddings keep this order. Token-id arrays are "
            "part of OpenAI's schema but not supported here (400): send text."
        ),
        examples=["A man is eating food.", ["first text", "second text"]],
    )
    model: ModelName | None = Field(
        default=None,
        description="An embed model of this server (GET /v1/models); omit for the default.",
        examples=["all-MiniLM-L6-v2"],
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="float: JSON numbers; base64: little-endian float32 bytes, base64-encoded.",
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description=(
            "Keep the first n dimensions and L2-normalise again (Matryoshka truncation); "
            "at most the model's dimensions."
        ),
        examples=[128],
    )
    user: str | None = Field(
        default=None, max_length=256, description="Accepted for compatibility and ignored."
    )


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="Position of the text in the request's input.")
    embedding: list[float] | str = Field(
        description="The L2-normalised vector, or its float32 bytes in base64."
    )


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens over all inputs, special tokens included.")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str = Field(examples=["all-MiniLM-L6-v2"])
    usage: EmbeddingsUsage


class OpenAIErrorBody(BaseModel):
    message: str = Field(description="What went wrong, for a person.")
    type: str = Field(
        description="invalid_request_error, authentication_error, rate_limit_error or server_error."
    )
    param: str | None = Field(default=None, description="The request field at fault, if known.")
    code: str | None = Field(
        default=None, description="ortserve's error_type, e.g. model_not_found."
    )


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody
