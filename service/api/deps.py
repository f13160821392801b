"""What the HTTP routes share: request parsing, the request's context from the core (its caller,
deadline and disconnect check) and the timing headers. Everything past parsing happens in
``service.core``."""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
import pybase64
from fastapi import Request, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.types import Scope

from service.auth import Caller
from service.context import RequestContext
from service.core import Core
from service.errors import (
    BadRequestError,
    NotReadyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.middleware import CLIENT, ClientState, first_byte_time
from service.runtime.batcher import DisconnectCheck
from service.schemas.common import ImageInputs
from service.settings import Settings

T = TypeVar("T")
ImagesRequestT = TypeVar("ImagesRequestT", bound=ImageInputs)

TIMEOUT_HEADER = "x-request-timeout-ms"


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def core_of(request: Request) -> Core:
    core: Core | None = getattr(request.app.state, "core", None)
    if core is None:  # the port opens before start-up has built the core
        raise NotReadyError("the server is starting up: models are loading")
    return core


def requested_timeout_s(header: str | None) -> float | None:
    """``x-request-timeout-ms`` in seconds; NaN when it is not a number (the core refuses it
    once the caller's key is checked)."""
    if header is None:
        return None
    try:
        return float(header) / 1000.0
    except ValueError:
        return float("nan")


def context_for(request: Request, *, management: bool = False) -> RequestContext:
    """The request's context from the core (which checks the caller's key first): the
    server's deadline, or shorter if the client asks (``x-request-timeout-ms``), counted from
    the first byte; its disconnect check; and the model it uses labels its metrics."""
    return scope_context(
        core_of(request),
        request.scope,
        request.headers,
        management=management,
        disconnected=request.is_disconnected,
    )


def scope_context(
    core: Core,
    scope: Scope,
    headers: Mapping[str, str],
    *,
    management: bool = False,
    disconnected: DisconnectCheck | None = None,
) -> RequestContext:
    """``context_for`` from the ASGI scope and its headers (the FastAPI routes and the fast
    path alike). ``disconnected`` is the check where the server's protocol left none (test
    clients); the model the request uses labels its metrics (``scope["state"]``)."""
    client = scope.get("client")
    caller = Caller.from_authorization(
        client[0] if client else None, headers.get("authorization", "")
    )
    state = scope.get(CLIENT)  # set by our server's protocol; not under test clients
    ctx = core.begin(
        caller,
        started=first_byte_time(scope),  # the body's arrival counts too
        timeout_s=requested_timeout_s(headers.get(TIMEOUT_HEADER)),
        is_disconnected=state.is_disconnected if isinstance(state, ClientState) else disconnected,
        management=management,
    )

    def label(model: str) -> None:
        scope.setdefault("state", {})["model"] = model

    ctx.on_model = label
    return ctx


def timing_headers(response: Response, ctx: RequestContext) -> None:
    for name, value in ctx.timings():
        response.headers[name] = value


def _b64decode(value: str, index: int) -> bytes:
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    try:
        # SIMD: about 100× the standard library's validating decode, which on a 100 kB image
        # cost more event-loop time than the rest of the request's parsing
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"images[{index}] is not valid base64") from None


async def read_images_request(
    request: Request, model: type[ImagesRequestT]
) -> tuple[ImagesRequestT, list[bytes]]:
    """Parse either JSON (base64 images) or multipart/form-data (``file`` parts + form fields)."""
    settings = settings_of(request)
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "application/json":
        parsed = model.model_validate(parse_json(await request.body()))
        _check_count(len(parsed.images), settings.max_images_per_request)
        return parsed, [_b64decode(v, i) for i, v in enumerate(parsed.images)]
    if content_type == "multipart/form-data":
        limit = settings.max_images_per_request
        form = await request.form(max_files=limit + 1, max_fields=64)
        files: list[bytes] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise BadRequestError(
                        f"unexpected file part {key!r}; send images as 'file' parts"
                    )
                _check_count(len(files) + 1, limit)
                files.append(await value.read())
            elif key == "classes":
                fields.setdefault("classes", []).extend(
                    c.strip() for c in value.split(",") if c.strip()
                )
            elif key == "file":
                raise BadRequestError("the 'file' part must be a file upload, not a text field")
            else:
                fields[key] = value
        if not files:
            raise BadRequestError("send one or more images as multipart 'file' parts")
        parsed = model.model_validate({**fields, "images": ["-"] * len(files)})
        return parsed, files
    raise UnsupportedMediaTypeError(
        "send application/json with base64 'images' or multipart/form-data with 'file' parts"
    )


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequestError("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequestError("the request body is not valid JSON") from None


async def read_json_request(request: Request, model: type[T]) -> T:
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise UnsupportedMediaTypeError("send an application/json body")
    validated: T = model.model_validate(parse_json(await request.body()))  # type: ignore[attr-defined]
    return validated


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLargeError(
            f"at most {limit} images per request (ORTSERVE_MAX_IMAGES_PER_REQUEST)"
        )


def model_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")
