"""Raw inputs over v2 on the wire (``service.core.raw`` runs them): a request's one BYTES
tensor of encoded images or texts, and the raw signature's outputs as a v2 body. HTTP encodes
with ``encode_raw``; the gRPC front end reads ``raw_request`` the same way."""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64

from service.api.v2_codec import truthy
from service.core.raw import RawOutput
from service.errors import BadRequestError
from service.schemas.v2 import InferRequest

RAW_NAMES = ("image", "text")


@dataclass(frozen=True)
class RawRequest:
    request: InferRequest
    items: list[bytes]
    parameters: dict[str, Any]


def raw_request(request: InferRequest, binary: memoryview) -> RawRequest | None:
    """The request's raw input when it sends one BYTES tensor named ``image`` or ``text``
    (else None: a tensor request). Binary BYTES elements are each a 4-byte little-endian length
    and the bytes; JSON ones strings (images base64)."""
    if len(request.inputs) != 1:
        return None
    t = request.inputs[0]
    if t.datatype != "BYTES" or t.name not in RAW_NAMES:
        return None
    where = f"input {t.name!r}"
    if len(t.shape) != 1 or t.shape[0] < 1:
        raise BadRequestError(f"{where}: shape must be [N], one element per {t.name}")
    size = (t.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise BadRequestError(f"{where}: binary_data_size must be the bytes that follow")
        items = _elements(binary[:size], where)
        if size != len(binary):
            raise BadRequestError(f"{len(binary) - size} bytes of binary data are not claimed")
    elif t.data is not None and all(isinstance(v, str) for v in t.data):
        items = [v.encode() if t.name == "text" else _b64(v, where) for v in t.data]
    else:
        raise BadRequestError(f"{where}: send strings in data, or binary data")
    if len(items) != t.shape[0]:
        raise BadRequestError(f"{where}: {len(items)} elements for shape {list(t.shape)}")
    return RawRequest(request, items, dict(request.parameters or {}))


def _elements(data: memoryview, where: str) -> list[bytes]:
    items, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise BadRequestError(f"{where}: a BYTES element's 4-byte length is cut off")
        (n,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + n > len(data):
            raise BadRequestError(f"{where}: a BYTES element is longer than the data")
        items.append(bytes(data[offset : offset + n]))
        offset += n
    return items


def _b64(value: str, where: str) -> bytes:
    try:
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{where}: JSON image elements must be base64") from None


def encode_raw(
    raw: RawRequest, model: str, version: int, outputs: Sequence[RawOutput]
) -> tuple[bytes, int | None]:
    """The raw signature's outputs (service.core.raw) as a v2 body."""
    names = [o.name for o in outputs]
    default_binary = truthy((raw.request.parameters or {}).get("binary_data_output", False))
    asked = {o.name: o for o in raw.request.outputs or []}
    unknown = [n for n in asked if n not in names]
    if unknown:
        raise BadRequestError(f"unknown outputs {unknown}; raw inputs answer {names}")
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outputs:
        if asked and out.name not in asked:
            continue
        params = asked[out.name].parameters or {} if out.name in asked else {}
        binary = truthy(params.get("binary_data", default_binary))
        tensor: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.elements is not None:
            if binary:
                blob = b"".join(struct.pack("<I", len(e)) + e for e in out.elements)
            else:
                tensor["data"] = [e.decode() for e in out.elements]
        else:
            assert out.array is not None
            arr = np.ascontiguousarray(out.array)
            if binary:
                blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            else:
                tensor["data"] = arr.reshape(-1)
        if binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        tensors.append(tensor)
    header: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if raw.request.id is not None:
        header["id"] = raw.request.id
    header["outputs"] = tensors
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return (b"".join([head, *blobs]), len(head)) if blobs else (head, None)
