"""Request and response schemas of /embed."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from service.inference import Embedded
from service.schemas.common import ModelName, ModelVersion, RequestModel

Text = Annotated[str, Field(max_length=1_000_000)]


class EmbedRequest(RequestModel):
    inputs: Text | Annotated[list[Text], Field(min_length=1, max_length=4096)] = Field(
        description="One text or a list; embeddings keep this order.",
        examples=["A man is eating food.", ["first text", "second text"]],
    )
    model: ModelName | None = None
    model_version: ModelVersion | None = None
    normalize: bool = Field(default=True, description="L2-normalise each embedding.")
    truncate: bool = Field(
        default=True, description="Cut texts to the model's maximum length; false: 422 instead."
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbedResponse(BaseModel):
    model: str = Field(examples=["all-MiniLM-L6-v2"])
    dimensions: int = Field(examples=[384])
    embeddings: list[list[float]]
    usage: Usage

    @classmethod
    def from_result(cls, result: Embedded) -> EmbedResponse:
        return cls(
            model=result.model,
            dimensions=int(result.vectors[0].shape[0]),
            embeddings=[v.tolist() for v in result.vectors],
            usage=Usage(prompt_tokens=result.tokens, total_tokens=result.tokens),
        )
