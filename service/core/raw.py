"""Raw inputs over the Open Inference Protocol: a typed model (classify, detect, segment, embed)
also takes one ``BYTES`` input of encoded images (``image``) or UTF-8 texts (``text``), runs its
own pre- and post-processing and batching, and answers with tensors where the result is one
and with the typed result as JSON in a ``BYTES`` output otherwise. Triton users build this with
an ensemble and a Python backend; here the model already owns that code.

    task       input            outputs
    classify   image BYTES [N]  scores FP32 [N,k], class_ids INT64 [N,k], result BYTES [N]
    detect     image BYTES [N]  result BYTES [N]  (the /detect result of each image, as JSON)
    segment    image BYTES [N]  result BYTES [N]  (the /segment result of each image, as JSON)
    embed      text BYTES [N]   embedding FP32 [N,D], result BYTES [N]

Parameters (``top_k``, ``confidence``, ``iou``, ``max_detections``, ``classes``, ``mask_format``,
``normalize``, ``truncate``) are the request's v2 parameters, checked by the typed endpoints' own
schemas. Pure: no transport types (the front ends frame the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from service.errors import (
    BadRequestError,
    ValidationFailedError,
    validation_details,
    validation_summary,
)
from service.runtime.model import LoadedModel
from service.schemas.common import ImagesRequest
from service.schemas.embed import EmbedRequest
from service.schemas.v2 import TensorMetadata
from service.schemas.vision import (
    ClassifyRequest,
    ClassifyResponse,
    DetectRequest,
    DetectResponse,
    SegmentRequest,
    SegmentResponse,
)
from service.tasks.classification import ClassifyParams, ClassifyProcessor
from service.tasks.detection import DetectProcessor
from service.tasks.segmentation import SegmentParams, SegmentProcessor

RAW_INPUTS = {"classify": "image", "detect": "image", "segment": "image", "embed": "text"}
RAW_OUTPUTS: dict[str, list[tuple[str, str]]] = {
    "classify": [("scores", "FP32"), ("class_ids", "INT64"), ("result", "BYTES")],
    "detect": [("result", "BYTES")],
    "segment": [("result", "BYTES")],
    "embed": [("embedding", "FP32"), ("result", "BYTES")],
}
_SCHEMAS: dict[str, type[ImagesRequest]] = {
    "classify": ClassifyRequest,
    "detect": DetectRequest,
    "segment": SegmentRequest,
}
# typed-endpoint fields that are not parameters here (the request's own framing)
_NOT_PARAMETERS = {"images", "inputs", "model", "model_version", "render", "render_format"}
# the protocol's own request parameters (framing, scheduling): not the task's
_PROTOCOL = {
    "binary_data_output",
    "priority",
    "timeout",
    "sequence_id",
    "sequence_start",
    "sequence_end",
}


@dataclass(frozen=True)
class RawOutput:
    """One output: a numeric array, or one ``bytes`` element per input (``BYTES``)."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None
    elements: list[bytes] | None = None


def raw_signature(task: str) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
    """The raw inputs and outputs a typed model also takes, for its v2 metadata."""
    name = RAW_INPUTS.get(task)
    if name is None:
        return [], []
    inputs = [TensorMetadata(name=name, datatype="BYTES", shape=[-1])]
    outputs = [
        TensorMetadata(name=out, datatype=datatype, shape=[-1] if datatype == "BYTES" else [-1, -1])
        for out, datatype in RAW_OUTPUTS[task]
    ]
    return inputs, outputs


def validated(task: str, count: int, parameters: dict[str, Any]) -> BaseModel:
    """The typed endpoint's request for these parameters: its bounds and its messages."""
    unknown = set(parameters) & _NOT_PARAMETERS
    if unknown:
        raise BadRequestError(f"parameters {sorted(unknown)} are not taken over v2")
    fields = {k: v for k, v in parameters.items() if k not in _PROTOCOL}
    if isinstance(fields.get("classes"), str):  # a v2 parameter is a scalar: comma-separated
        fields["classes"] = [c.strip() for c in fields["classes"].split(",") if c.strip()]
    try:
        if task == "embed":
            return EmbedRequest.model_validate({**fields, "inputs": ["-"] * count})
        return _SCHEMAS[task].model_validate({**fields, "images": ["-"] * count})
    except ValidationError as exc:
        summary = validation_summary(validation_details(exc.errors()))
        raise ValidationFailedError(
            summary.replace("images: ", "").replace("inputs: ", "")
        ) from None


def task_params(task: str, request: Any, model: LoadedModel) -> tuple[Any, Any]:
    """The model's processor for ``task`` and the run's parameters from a typed request (the
    vision routes and raw v2 inputs alike)."""
    if task == "classify":
        return model.processor_as(ClassifyProcessor), ClassifyParams(request.top_k)
    if task == "detect":
        processor = model.processor_as(DetectProcessor)
        return processor, processor.params(
            model=model.name,
            confidence=request.confidence,
            iou=request.iou,
            max_detections=request.max_detections,
            classes=request.classes,
        )
    params = SegmentParams(request.confidence, request.mask_format, request.iou)
    return model.processor_as(SegmentProcessor), params


def texts_of(items: list[bytes]) -> list[str]:
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError:
        raise BadRequestError("input 'text': every element must be UTF-8 text") from None


def outputs_for(task: str, model: str, results: Any) -> list[RawOutput]:
    """The typed results of ``task`` as the raw signature's outputs."""
    if task == "embed":
        vectors = np.stack(results.vectors).astype(np.float32)
        rows = [{"embedding": v.tolist()} for v in results.vectors]
        return [
            RawOutput("embedding", "FP32", list(vectors.shape), array=vectors),
            _json("result", rows),
        ]
    typed: list[Any]
    if task == "classify":
        typed = list(ClassifyResponse.from_results(model, results).results)
    elif task == "detect":
        typed = list(DetectResponse.from_results(model, results).results)
    else:
        typed = list(SegmentResponse.from_results(model, results).results)
    result = _json("result", [r.model_dump() for r in typed])
    if task != "classify":
        return [result]
    k = max((len(r.predictions) for r in results), default=0)
    scores = np.zeros((len(results), k), np.float32)
    ids = np.full((len(results), k), -1, np.int64)
    for row, r in enumerate(results):
        for col, p in enumerate(r.predictions):
            scores[row, col], ids[row, col] = p.score, p.class_id
    return [
        RawOutput("scores", "FP32", list(scores.shape), array=scores),
        RawOutput("class_ids", "INT64", list(ids.shape), array=ids),
        result,
    ]


def _json(name: str, rows: list[Any]) -> RawOutput:
    return RawOutput(name, "BYTES", [len(rows)], elements=[orjson.dumps(r) for r in rows])
