"""Schemas shared by the endpoints: images in, boxes, errors, model listing."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.model_config import MODEL_NAME_PATTERN, PipelineStep

ModelName = Annotated[
    str,
    Field(
        pattern=MODEL_NAME_PATTERN,
        max_length=128,
        description="Model to use; omit for the task's default model.",
        examples=["mobilenet_v2"],
    ),
]
Base64Image = Annotated[
    str,
    Field(
        min_length=1,
        description="Base64-encoded image bytes (JPEG, PNG, GIF, BMP, WebP, TIFF); a data: URI prefix is accepted.",
        examples=["/9j/4AAQSkZJRgABAQAAAQABAAD..."],
    ),
]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
ModelVersion = Annotated[
    int,
    Field(
        ge=1,
        le=2**31,
        description="Version of the model to use; omit for its latest serving version.",
        examples=[1],
    ),
]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInputs(RequestModel):
    images: list[Base64Image] = Field(
        min_length=1, max_length=256, description="One or more images; results keep this order."
    )


class ImagesRequest(ImageInputs):
    model: ModelName | None = None
    model_version: ModelVersion | None = None


class Box(BaseModel):
    """Pixels of the original image (after EXIF orientation)."""

    x1: float = Field(description="Left edge.", examples=[12.5])
    y1: float = Field(description="Top edge.", examples=[40.0])
    x2: float = Field(description="Right edge.", examples=[210.0])
    y2: float = Field(description="Bottom edge.", examples=[305.25])


class ErrorResponse(BaseModel):
    error: str = Field(
        description="What went wrong, for a person.", examples=["model 'x' does not exist"]
    )
    error_type: str = Field(
        description="Stable machine-readable kind.", examples=["model_not_found"]
    )
    request_id: str = Field(description="Echoed in the x-request-id header and the logs.")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="Validation errors by field, for 422 responses."
    )


class TensorInfo(BaseModel):
    name: str
    dtype: str
    dims: list[int] = Field(description="Without the batch axis; -1 = variable.")


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_delay_ms: float
    max_queue_size: int
    instances: int = Field(default=1, description="Sessions side by side, each on its own thread.")
    queue_depth: int = 0
    mean_batch_size: float = 0.0
    batches: int = Field(default=0, description="Runs since start-up.")
    items: int = Field(default=0, description="Items run since start-up.")
    failed_batches: int = Field(default=0, description="Batches whose run raised.")
    expired: int = Field(
        default=0, description="Items dropped: deadline passed in the queue (504)."
    )
    dropped_disconnected: int = Field(
        default=0, description="Items dropped: the client left while queued."
    )
    rejected_overloaded: int = Field(default=0, description="Requests refused: queue full (429).")


class VersionInfo(BaseModel):
    version: int = Field(examples=[1])
    status: str = Field(description="ready, or unhealthy when its batcher has died.")


class ModelInfo(BaseModel):
    name: str
    task: str | None
    format: str | None
    status: str = Field(description="loading, ready or failed (nothing serves).")
    error: str | None = Field(
        default=None,
        description="Why the last load failed; with status ready, an older version still serves.",
    )
    versions: list[VersionInfo] = Field(
        default_factory=list, description="Serving versions; requests default to the latest."
    )
    providers: list[str] = Field(default_factory=list, description="Active execution providers.")
    provider_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Each active provider's options as ONNX Runtime runs it (its defaults filled in).",
        examples=[
            {"CUDAExecutionProvider": {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC"}}
        ],
    )
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    batching: BatchingInfo | None = None
    labels: int = Field(default=0, description="Number of class labels.")
    default_for: list[str] = Field(
        default_factory=list, description="Tasks this model is the default for."
    )
    steps: list[PipelineStep] | None = Field(
        default=None,
        description="Pipelines (task pipeline): their steps as configured, in order.",
    )


class ModelList(BaseModel):
    models: list[ModelInfo]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error codes a route can return."""
    return {code: {"model": ErrorResponse} for code in codes}
