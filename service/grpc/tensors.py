"""gRPC ``ModelInferRequest`` ⇄ the v2 codec: tensors in, tensors out.

A gRPC request is rewritten into the binary tensor extension's form (a small JSON header, then the
tensors' little-endian bytes) and decoded by ``service.api.v2_codec.decode_request``: the same
checks as HTTP (names, datatypes, shapes against the model's config, batch rows, the text
vocabulary, the limits of the request schema), the same messages. ``raw_input_contents`` are
passed as they are; typed ``contents`` are checked here (the field that belongs to the datatype,
the value range of narrow integers, the value count) and turned into bytes. Outputs always go in
``raw_output_contents``, as Triton and KServe answer by default.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from service.api.v2_codec import (
    V2_DTYPES,
    DecodedRequest,
    output_arrays,
    v2_datatype,
)
from service.api.v2_raw import RawRequest
from service.core.raw import RawOutput
from service.errors import BadRequestError
from service.grpc.protos import grpc_service_pb2 as pb
from service.model_config import ModelConfig
from service.tasks.base import Outputs

# the InferTensorContents field of each datatype (FP16 and BF16 have none: raw contents only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_CONTENTS_FIELDS = frozenset(CONTENTS_FIELD.values()) | {"bytes_contents"}


def _parameter(value: Any) -> str | int | float | bool:
    """An ``InferParameter`` (or a repository parameter) as the JSON scalar HTTP would send."""
    choice = value.WhichOneof("parameter_choice")
    if choice is None:
        raise BadRequestError("a request parameter has no value")
    scalar: str | int | float | bool | bytes = getattr(value, choice)
    if isinstance(scalar, bytes):
        raise BadRequestError("bytes parameters are not supported")
    return scalar


def parameters(entries: Any) -> dict[str, str | int | float | bool]:
    return {key: _parameter(value) for key, value in entries.items()}


def _count(shape: Sequence[int]) -> int | None:
    """Values in ``shape``, or None when the shape itself is invalid (the codec says why)."""
    return math.prod(shape) if all(d >= 0 for d in shape) and len(shape) <= 16 else None


def _typed(tensor: Any) -> bytes | None:
    """A tensor's typed contents as little-endian bytes; None when its datatype is not one the
    v2 codec knows (the codec then refuses the datatype against the model's)."""
    where = f"input {tensor.name!r}"
    datatype = tensor.datatype
    if datatype == "BYTES":  # raw inputs (service.core.raw): framed as the binary extension does
        return b"".join(struct.pack("<I", len(v)) + v for v in tensor.contents.bytes_contents)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in ("FP16", "BF16"):
            raise BadRequestError(f"{where}: {datatype} has no typed contents; send raw contents")
        return None
    contents = tensor.contents
    sent = [f.name for f, _ in contents.ListFields()]
    stray = [name for name in sent if name != field and name in _CONTENTS_FIELDS]
    if stray:
        raise BadRequestError(f"{where}: {datatype} values go in {field}, not {stray[0]}")
    dtype = V2_DTYPES[datatype]
    values = getattr(contents, field)
    count = _count(tensor.shape)
    if count is not None and len(values) != count:
        raise BadRequestError(
            f"{where}: {len(values)} values in {field} for shape {list(tensor.shape)} "
            f"({count} values)"
        )
    wide = np.array(values, dtype=np.result_type(dtype, np.int64) if dtype.kind in "iu" else dtype)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadRequestError(f"{where}: values out of range for {datatype}")
    return wide.astype(dtype, copy=False).tobytes()


def request_body(request: Any) -> tuple[bytes, int]:
    """A ``ModelInferRequest`` as a v2 body with binary tensors: the JSON header, then each
    input's bytes in order; and the header's length."""
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        raise BadRequestError(
            f"{len(raw)} raw_input_contents for {len(inputs)} inputs: send one per input, "
            "in the order of the inputs"
        )
    blobs: list[bytes] = []
    tensors: list[dict[str, Any]] = []
    for i, t in enumerate(inputs):
        params: dict[str, Any] = parameters(t.parameters)
        tensor: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "datatype": t.datatype}
        if raw:
            if t.HasField("contents"):
                raise BadRequestError(
                    f"input {t.name!r}: send every input in raw_input_contents or every one in "
                    "contents, not both"
                )
            blob: bytes | None = raw[i]
            dtype = V2_DTYPES.get(t.datatype)
            count = _count(t.shape)
            if dtype is not None and count is not None and len(raw[i]) != count * dtype.itemsize:
                raise BadRequestError(
                    f"input {t.name!r}: {len(raw[i])} bytes of raw contents, but shape "
                    f"{list(t.shape)} of {t.datatype} needs {count * dtype.itemsize}"
                )
        else:
            blob = _typed(t)
        if blob is None:
            tensor["data"] = []
        else:
            params["binary_data_size"] = len(blob)
            blobs.append(blob)
        if params:
            tensor["parameters"] = params
        tensors.append(tensor)
    header: dict[str, Any] = {"inputs": tensors}
    if request.id:
        header["id"] = request.id
    if request.parameters:
        header["parameters"] = parameters(request.parameters)
    if request.outputs:
        header["outputs"] = [
            {"name": o.name, **({"parameters": parameters(o.parameters)} if o.parameters else {})}
            for o in request.outputs
        ]
    head = orjson.dumps(header)
    return b"".join([head, *blobs]), len(head)


def raw_response(raw: RawRequest, model: str, version: int, outputs: Sequence[RawOutput]) -> Any:
    """Raw inputs' outputs (``service.core.raw``) in ``raw_output_contents``: arrays as
    little-endian bytes, BYTES elements each after its 4-byte length."""
    asked = [o.name for o in raw.request.outputs or []]
    names = [o.name for o in outputs]
    unknown = [n for n in asked if n not in names]
    if unknown:
        raise BadRequestError(f"unknown outputs {unknown}; raw inputs answer {names}")
    answer = pb.ModelInferResponse(model_name=model, model_version=str(version))
    if raw.request.id is not None:
        answer.id = raw.request.id
    for out in outputs:
        if asked and out.name not in asked:
            continue
        answer.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if out.elements is not None:
            blob = b"".join(struct.pack("<I", len(e)) + e for e in out.elements)
        else:
            assert out.array is not None
            blob = out.array.astype(out.array.dtype.newbyteorder("<"), copy=False).tobytes()
        answer.raw_output_contents.append(blob)
    return answer


def response(
    decoded: DecodedRequest, outputs: Sequence[Outputs], config: ModelConfig, version: int
) -> Any:
    """The ``ModelInferResponse``: every wanted output's bytes in ``raw_output_contents``."""
    answer = pb.ModelInferResponse(model_name=config.name, model_version=str(version))
    if decoded.request.id is not None:
        answer.id = decoded.request.id
    for name, _binary, arr in output_arrays(decoded, outputs, config):
        answer.outputs.add(name=name, datatype=v2_datatype(arr.dtype), shape=arr.shape)
        answer.raw_output_contents.append(
            arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        )
    return answer
