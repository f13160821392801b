"""Schemas of the Open Inference Protocol v2 (KServe / Triton) REST routes under /v2."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import RequestModel

Parameters = Annotated[
    dict[Annotated[str, Field(max_length=128)], str | int | float | bool],
    Field(max_length=64, description="Protocol parameters, e.g. binary_data_size."),
]
TensorName = Annotated[str, Field(min_length=1, max_length=256)]


class ServerMetadata(BaseModel):
    name: str = Field(examples=["ortserve"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data", "model_configuration"]])


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class TensorMetadata(BaseModel):
    name: str = Field(examples=["input"])
    datatype: str = Field(description="BOOL, UINT8, INT32, INT64, FP16, FP32, ...")
    shape: list[int] = Field(
        description="-1 marks a variable axis; batched models lead with the batch axis (-1).",
        examples=[[-1, 3, 224, 224]],
    )


class RawSignature(BaseModel):
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelMetadata(BaseModel):
    name: str = Field(examples=["mobilenet_v2"])
    versions: list[str] = Field(examples=[["1"]])
    platform: str = Field(examples=["onnxruntime_onnx"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    raw: RawSignature | None = Field(
        default=None,
        description=(
            "The second signature a typed model takes: one BYTES input of encoded images "
            "(image) or UTF-8 texts (text), run through the model's own processing."
        ),
    )


class InferInputTensor(RequestModel):
    name: TensorName
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=16, examples=[[1, 3, 224, 224]])
    datatype: str = Field(max_length=16, examples=["FP32"])
    parameters: Parameters | None = None
    data: list[Any] | None = Field(
        default=None,
        description=(
            "Row-major values, flat or nested; omit when the tensor is sent as binary data "
            "(parameters.binary_data_size)."
        ),
    )


class InferRequestedOutput(RequestModel):
    name: TensorName
    parameters: Parameters | None = Field(
        default=None, description="binary_data: true returns this output as raw bytes."
    )


class InferRequest(RequestModel):
    id: str | None = Field(default=None, max_length=256, description="Echoed in the response.")
    parameters: Parameters | None = Field(
        default=None, description="binary_data_output: true returns every output as raw bytes."
    )
    inputs: list[InferInputTensor] = Field(min_length=1, max_length=64)
    outputs: list[InferRequestedOutput] | None = Field(
        default=None, max_length=64, description="Omit for every output of the model."
    )


class InferOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, int] | None = Field(
        default=None, description="binary_data_size when the data follows the JSON as bytes."
    )
    data: list[Any] | None = Field(default=None, description="Row-major, flattened.")


class InferResponse(BaseModel):
    model_name: str
    model_version: str = "1"
    id: str | None = None
    outputs: list[InferOutputTensor]


# -- the model-repository extension -----------------------------------------------------------
# tritonclient sends these as JSON only (never a form), so a bool is a bool, not 1 or "yes"
STRICT = ConfigDict(extra="forbid", strict=True)


class RepositoryIndexRequest(RequestModel):
    model_config = STRICT
    ready: bool = Field(default=False, description="Only the models (versions) ready to serve.")


class RepositoryModel(BaseModel):
    name: str = Field(examples=["mobilenet_v2"])
    version: str | None = Field(default=None, description="Set for a serving version.")
    state: str = Field(description="READY, LOADING or UNAVAILABLE.", examples=["READY"])
    reason: str = Field(default="", description="Why it is not ready, when known.")


class LoadParameters(RequestModel):
    model_config = STRICT
    config: (
        Annotated[str, Field(max_length=1_000_000)]
        | dict[Annotated[str, Field(max_length=128)], Any]
        | None
    ) = Field(
        default=None,
        description=(
            "Model configuration (JSON, as a string as tritonclient sends it, or an object) "
            "merged over the folder's config.yaml for this load: mappings key by key, other "
            "values replace."
        ),
        examples=['{"batching": {"max_batch_size": 16}}'],
    )


class LoadRequest(RequestModel):
    model_config = STRICT
    parameters: LoadParameters = LoadParameters()


class UnloadParameters(RequestModel):
    model_config = STRICT
    unload_dependents: bool = Field(default=False, description="Accepted; models have none.")


class UnloadRequest(RequestModel):
    model_config = STRICT
    parameters: UnloadParameters = UnloadParameters()


class RepositoryActionResponse(BaseModel):
    name: str
    versions: list[int] = Field(description="The versions serving after the call.")
