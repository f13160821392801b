"""The Open Inference Protocol v2 wire format: datatypes, JSON and binary tensors.

``decode_request`` turns a body (JSON, or a JSON header followed by raw little-endian tensor
bytes, the binary tensor extension) into checked feeds split into rows; ``encode_response``
turns per-row outputs back into a body. Both run in the worker pool; every check raises the
service's 4xx errors, so nothing a client sends reaches ONNX Runtime unchecked.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from service.api.deps import parse_json
from service.core.views import CONFIG_TO_V2, v2_shape
from service.errors import (
    BadRequestError,
    InferenceFailedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.model_config import ModelConfig, TensorSpec
from service.runtime.model import LoadedModel
from service.schemas.v2 import InferInputTensor, InferRequest
from service.tasks.base import Feeds, Outputs
from service.tasks.embedding import EmbedProcessor

# v2 datatype ↔ numpy (all little-endian on the wire)
V2_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in (
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
    )
}
_NP_TO_V2 = {dt.str.lstrip("<|="): name for name, dt in V2_DTYPES.items()}


def v2_datatype(dtype: np.dtype[Any]) -> str:
    try:
        return _NP_TO_V2[dtype.str.lstrip("<>|=")]
    except KeyError:
        raise InferenceFailedError(f"an output of dtype {dtype} has no v2 datatype") from None


# -- request decoding (runs in the worker pool) ----------------------------------------------
@dataclass(frozen=True)
class DecodedRequest:
    request: InferRequest
    items: list[Feeds]  # one per row (batched models) or the one item
    wanted: list[tuple[str, bool]]  # (output name, as binary data)
    rows: int | None  # None: the model has no batch axis
    seq_len: int | None  # text models: the request's sequence length


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    if not encoding or encoding.lower() == "identity":
        return body
    wbits = {"gzip": 31, "deflate": 15}.get(encoding.lower())
    if wbits is None:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)  # bounded: a small bomb cannot grow past this
    except zlib.error:
        raise BadRequestError(f"the body is not valid {encoding} data") from None
    if len(out) > limit:
        raise PayloadTooLargeError(f"the decompressed body is larger than {limit} bytes")
    return out


def _parse(header: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate(parse_json(header))
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        raise BadRequestError("invalid inference request: " + "; ".join(parts)) from None


def _from_json(data: list[Any], dtype: np.dtype[Any], where: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise BadRequestError(f"{where}: data must be a flat or regularly nested list") from None
    kind = arr.dtype.kind
    if arr.size and kind not in "biuf":
        raise BadRequestError(f"{where}: data must hold only numbers (or booleans for BOOL)")
    if dtype.kind == "b" and arr.size and kind != "b":
        raise BadRequestError(f"{where}: BOOL data must be true or false")
    if dtype.kind in "iu" and arr.size:
        if kind == "f":
            raise BadRequestError(f"{where}: integer data must not have fractions")
        info = np.iinfo(dtype)
        if kind != "b" and (arr.min() < info.min or arr.max() > info.max):
            raise BadRequestError(f"{where}: values out of range for {dtype.name}")
    return arr.astype(dtype)


def truthy(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _wanted_outputs(request: InferRequest, config: ModelConfig) -> list[tuple[str, bool]]:
    names = [s.name for s in config.outputs]
    default_binary = truthy((request.parameters or {}).get("binary_data_output", False))
    if request.outputs is None:
        return [(name, default_binary) for name in names]
    wanted = []
    for out in request.outputs:
        if out.name not in names:
            raise BadRequestError(f"unknown output {out.name!r}; the model has {names}")
        params = out.parameters or {}
        if params.get("classification"):
            raise BadRequestError("the classification extension is not supported")
        if "shared_memory_region" in params:
            raise BadRequestError("the shared-memory extension is not supported")
        wanted.append((out.name, truthy(params.get("binary_data", default_binary))))
    return wanted


def _tensor(
    t: InferInputTensor, spec: TensorSpec, batched: bool, binary: memoryview, offset: int
) -> tuple[np.ndarray, int]:
    """One input tensor, checked against the model's spec; returns it and the new offset."""
    where = f"input {t.name!r}"
    want = CONFIG_TO_V2[spec.dtype]
    if t.datatype != want:
        raise BadRequestError(f"{where}: datatype is {t.datatype}, the model takes {want}")
    shape, expected = list(t.shape), v2_shape(spec, batched)
    if len(shape) != len(expected) or any(
        w != -1 and w != s for w, s in zip(expected, shape, strict=False)
    ):
        raise BadRequestError(f"{where}: shape {shape} does not match the model's {expected}")
    if 0 in shape:
        raise BadRequestError(f"{where}: empty tensors (a 0 in the shape) are not supported")
    count = math.prod(shape)
    dtype = V2_DTYPES[want]
    params = t.parameters or {}
    if "shared_memory_region" in params:
        raise BadRequestError(f"{where}: the shared-memory extension is not supported")
    size = params.get("binary_data_size")
    if size is None:
        if t.data is None:
            raise BadRequestError(f"{where}: send data, or binary data with binary_data_size")
        arr = _from_json(t.data, dtype, where)
        if arr.size != count:
            raise BadRequestError(f"{where}: {arr.size} values for shape {shape} ({count} values)")
        return arr.reshape(shape), offset
    if t.data is not None:
        raise BadRequestError(f"{where}: send either data or binary_data_size, not both")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequestError(f"{where}: binary_data_size must be a byte count")
    if size != count * dtype.itemsize:
        raise BadRequestError(
            f"{where}: binary_data_size is {size} bytes but {shape} {want} needs "
            f"{count * dtype.itemsize}"
        )
    if offset + size > len(binary):
        raise BadRequestError(f"{where}: the binary data ends before its {size} bytes")
    arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
    if not arr.flags.aligned:
        arr = arr.copy()
    return arr, offset + size


def decode_request(
    body: bytes,
    *,
    content_encoding: str | None,
    header_length: str | None,
    config: ModelConfig,
    max_body_bytes: int,
    vocab_size: int | None = None,
) -> DecodedRequest:
    """Body (JSON, or JSON header + binary tensors) → checked feeds split into rows.

    ``vocab_size`` (text models): token ids must index the model's vocabulary; an id outside it
    is the client's mistake (400), not a failed run."""
    request, binary = parse_body(
        body,
        content_encoding=content_encoding,
        header_length=header_length,
        max_body_bytes=max_body_bytes,
    )
    return decode_tensors(request, binary, config, vocab_size)


def parse_body(
    body: bytes, *, content_encoding: str | None, header_length: str | None, max_body_bytes: int
) -> tuple[InferRequest, memoryview]:
    """The request's JSON header, parsed, and the binary data that follows it."""
    body = _decompress(body, content_encoding, max_body_bytes)
    binary = memoryview(b"")
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequestError("Inference-Header-Content-Length must be an integer") from None
        if not 0 < n <= len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes"
            )
        binary = memoryview(body)[n:]
        body = body[:n]
    return _parse(body), binary


def decode_tensors(
    request: InferRequest, binary: memoryview, config: ModelConfig, vocab_size: int | None = None
) -> DecodedRequest:
    """A parsed request's tensors, checked against the model's config, split into rows."""
    wanted = _wanted_outputs(request, config)
    specs = {s.name: s for s in config.inputs}
    names = [t.name for t in request.inputs]
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise BadRequestError(f"unknown inputs {unknown}; the model takes {list(specs)}")
    if len(set(names)) != len(names):
        raise BadRequestError("every input must be sent once")
    missing = [n for n in specs if n not in names]
    if missing:
        raise BadRequestError(f"missing inputs {missing}; the model takes {list(specs)}")
    feeds: Feeds = {}
    offset = 0
    for t in request.inputs:
        feeds[t.name], offset = _tensor(t, specs[t.name], config.batched, binary, offset)
    if offset != len(binary):
        raise BadRequestError(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    seq_len = None
    if config.text is not None:
        shapes = {arr.shape for arr in feeds.values()}
        if len(shapes) != 1:
            raise BadRequestError(f"text inputs must all have the same shape, got {sorted(shapes)}")
        seq_len = int(next(iter(shapes))[-1])
        if seq_len > config.text.max_length:
            raise PayloadTooLargeError(
                f"the token sequences are {seq_len} long; model {config.name!r} takes at most "
                f"{config.text.max_length} (its text.max_length)"
            )
        for name, arr in feeds.items():
            top = vocab_size if name == "input_ids" and vocab_size else None
            if arr.dtype.kind in "iu" and (arr.min() < 0 or (top is not None and arr.max() >= top)):
                bound = f"between 0 and {top - 1}" if top is not None else "non-negative"
                raise BadRequestError(f"input {name!r}: values must be {bound}")
    if not config.batched:
        return DecodedRequest(request, [feeds], wanted, None, seq_len)
    rows = {arr.shape[0] for arr in feeds.values()}
    if len(rows) != 1:
        raise BadRequestError(f"inputs disagree on the batch size (axis 0): {sorted(rows)}")
    n_rows = rows.pop()
    limit = config.batching.max_queue_size
    if n_rows > limit:
        raise PayloadTooLargeError(
            f"{n_rows} rows; model {config.name!r} queues at most {limit} (its max_queue_size)"
        )
    items = [{name: arr[i] for name, arr in feeds.items()} for i in range(n_rows)]
    return DecodedRequest(request, items, wanted, n_rows, seq_len)


# -- response encoding (runs in the worker pool) ---------------------------------------------
def decoder(request: InferRequest, binary: memoryview) -> Callable[[LoadedModel], DecodedRequest]:
    """A parsed request's decoding for the model the core leases (every front end's)."""

    def decode(model: LoadedModel) -> DecodedRequest:
        processor = model.processor
        vocab = processor.encoder.vocab_size if isinstance(processor, EmbedProcessor) else None
        return decode_tensors(request, binary, model.config, vocab)

    return decode


def output_arrays(
    decoded: DecodedRequest, outputs: Sequence[Outputs], config: ModelConfig
) -> list[tuple[str, bool, np.ndarray]]:
    """The wanted outputs in the order asked for: (name, as binary, C-contiguous array), the
    rows stacked back into the request's tensors (any transport's answer)."""
    specs = {s.name: s for s in config.outputs}
    arrays: list[tuple[str, bool, np.ndarray]] = []
    for name, binary in decoded.wanted:
        if decoded.rows is None:
            arr = outputs[0][name]
        else:
            parts = [o[name] for o in outputs]
            if decoded.seq_len is not None and specs[name].dims[:1] == [-1]:
                # token-level outputs come back padded to the longest text of the batch they ran
                # in; cut them to this request's length so results do not depend on the batch
                parts = [p[: decoded.seq_len] for p in parts]
            arr = np.stack(parts)
        arrays.append((name, binary, np.ascontiguousarray(arr)))
    return arrays


def encode_response(
    decoded: DecodedRequest, outputs: Sequence[Outputs], config: ModelConfig, version: int
) -> tuple[bytes, int | None]:
    """Per-row outputs → (body, JSON header length when binary tensors follow it)."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary, arr in output_arrays(decoded, outputs, config):
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        if binary:
            blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = arr.reshape(-1)
        tensors.append(tensor)
    header: dict[str, Any] = {"model_name": config.name, "model_version": str(version)}
    if decoded.request.id is not None:
        header["id"] = decoded.request.id
    header["outputs"] = tensors
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
