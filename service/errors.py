"""Typed service errors and the one table that maps each kind onto every protocol.

Model and task code raise these; front ends never build protocol errors themselves. The message
is sent to the client, so it must be actionable and must never contain internal exception text.
Each class carries its row of the table: the HTTP status, the gRPC status code (by name, so that
nothing here imports grpc) and the OpenAI error type, as TEI derives its HTTP and gRPC answers
from one ``ErrorType`` table. ``tests/unit/test_errors.py`` checks every class has all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode name
    openai_type: str = "server_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequestError(ServiceError):
    status_code = 400
    error_type = "bad_request"
    grpc_code = "INVALID_ARGUMENT"
    openai_type = "invalid_request_error"


class ParamError(BadRequestError):
    """A 400 that names the request field at fault (OpenAI's ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class LoadFailedError(BadRequestError):
    """A model (re)load that did not succeed; whatever served before still serves."""

    error_type = "load_failed"
    grpc_code = "FAILED_PRECONDITION"


class InvalidImageError(BadRequestError):
    error_type = "invalid_image"


class ValidationFailedError(ServiceError):
    status_code = 422
    error_type = "validation_error"
    grpc_code = "INVALID_ARGUMENT"
    openai_type = "invalid_request_error"


class UnauthorizedError(ServiceError):
    status_code = 401
    error_type = "unauthorized"
    grpc_code = "UNAUTHENTICATED"
    openai_type = "authentication_error"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ServiceError):
    """Authenticated or not, this caller may not do this (management from an untrusted network)."""

    status_code = 403
    error_type = "forbidden"
    grpc_code = "PERMISSION_DENIED"
    openai_type = "permission_error"


class NotFoundError(ServiceError):
    """A path or resource that does not exist (not a model: that is ``ModelNotFoundError``)."""

    status_code = 404
    error_type = "not_found"
    grpc_code = "NOT_FOUND"
    openai_type = "invalid_request_error"


class ModelNotFoundError(ServiceError):
    status_code = 404
    error_type = "model_not_found"
    grpc_code = "NOT_FOUND"
    openai_type = "invalid_request_error"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    error_type = "payload_too_large"
    grpc_code = "RESOURCE_EXHAUSTED"
    openai_type = "invalid_request_error"


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"
    grpc_code = "INVALID_ARGUMENT"
    openai_type = "invalid_request_error"


class OverloadedError(ServiceError):
    status_code = 429
    error_type = "overloaded"
    grpc_code = "RESOURCE_EXHAUSTED"
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class InferenceFailedError(ServiceError):
    status_code = 500
    error_type = "inference_failed"
    grpc_code = "INTERNAL"


class BusyError(ServiceError):
    """The server as a whole, not one model, is at a limit (the request bodies it holds)."""

    status_code = 503
    error_type = "server_busy"
    grpc_code = "UNAVAILABLE"
    openai_type = "server_error"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReadyError(ServiceError):
    status_code = 503
    error_type = "not_ready"
    grpc_code = "UNAVAILABLE"
    openai_type = "server_error"


class ClientDisconnectedError(ServiceError):
    """The client went away while its request waited in the queue (nginx's 499). Nobody reads
    this response; the status keeps the access log and metrics honest."""

    status_code = 499
    error_type = "client_closed_request"
    grpc_code = "CANCELLED"
    openai_type = "invalid_request_error"


class RequestTimeoutError(ServiceError):
    """The request itself (its body) did not arrive in time; the connection is closed."""

    status_code = 408
    error_type = "request_timeout"
    grpc_code = "DEADLINE_EXCEEDED"
    openai_type = "invalid_request_error"


class DeadlineExceededError(ServiceError):
    status_code = 504
    error_type = "deadline_exceeded"
    grpc_code = "DEADLINE_EXCEEDED"
    openai_type = "server_error"


# -- the response bodies: every error a client sees is rendered by one of these two ------------
INTERNAL_MESSAGE = "internal error; quote this request_id to the operator"


def service_body(
    message: str,
    error_type: str,
    request_id: str,
    details: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    """The service's shape: ``{"error", "error_type", "request_id"}`` (+ ``details`` for 422)."""
    body: dict[str, object] = {
        "error": message,
        "error_type": error_type,
        "request_id": request_id,
    }
    if details is not None:
        body["details"] = details
    return body


def validation_details(errors: Sequence[Any]) -> list[dict[str, object]]:
    """A validation error's details for the client: where and what, never ``input`` or
    ``ctx`` (they can hold the client's whole payload or internal objects)."""
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]


def validation_summary(details: list[dict[str, object]]) -> str:
    parts = []
    for d in details[:5]:
        loc = ".".join(str(p) for p in d["loc"] if p != "body")  # type: ignore[attr-defined]
        parts.append(f"{loc or 'body'}: {d['msg']}")
    return "invalid request: " + "; ".join(parts)


def openai_type(status: int) -> str:
    """OpenAI's error ``type`` for a status where no ``ServiceError`` is at hand (an error the
    HTTP layer raised itself): the table's type of the first kind with that status."""
    for kind in error_kinds():
        if kind.status_code == status:
            return kind.openai_type
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_body(
    status: int, message: str, code: str, param: str | None = None, kind: str | None = None
) -> dict[str, object]:
    """OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": message,
            "type": kind or openai_type(status),
            "param": param,
            "code": code,
        }
    }


def error_kinds() -> list[type[ServiceError]]:
    """Every error kind: ``ServiceError`` and its subclasses, wherever they are defined."""
    found: list[type[ServiceError]] = [ServiceError]
    for kind in found:
        found.extend(k for k in kind.__subclasses__() if k not in found)
    return found


def openai_status(error: ServiceError) -> int:
    """OpenAI answers every invalid request with 400 (422 is ours for bad values)."""
    return 400 if error.status_code == 422 else error.status_code


def openai_code(error: ServiceError) -> str:
    return "invalid_api_key" if error.status_code == 401 else error.error_type
