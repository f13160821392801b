"""Typed service errors. One base class, one handler (see ``service.app``).

Model and task code raise these; routes never build HTTP errors themselves. The message is
sent to the client, so it must be actionable and must never contain internal exception text.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequestError(ServiceError):
    status_code = 400
    error_type = "bad_request"


class ParamError(BadRequestError):
    """A 400 that names the request field at fault (OpenAI's ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class LoadFailedError(BadRequestError):
    """A model (re)load that did not succeed; whatever served before still serves."""

    error_type = "load_failed"


class InvalidImageError(BadRequestError):
    error_type = "invalid_image"


class ValidationFailedError(ServiceError):
    status_code = 422
    error_type = "validation_error"


class UnauthorizedError(ServiceError):
    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ServiceError):
    """Authenticated or not, this caller may not do this (management from an untrusted network)."""

    status_code = 403
    error_type = "forbidden"


class ModelNotFoundError(ServiceError):
    status_code = 404
    error_type = "model_not_found"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class OverloadedError(ServiceError):
    status_code = 429
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class InferenceFailedError(ServiceError):
    status_code = 500
    error_type = "inference_failed"


class NotReadyError(ServiceError):
    status_code = 503
    error_type = "not_ready"


class ClientDisconnectedError(ServiceError):
    """The client went away while its request waited in the queue (nginx's 499). Nobody reads
    this response; the status keeps the access log and metrics honest."""

    status_code = 499
    error_type = "client_closed_request"


class RequestTimeoutError(ServiceError):
    """The request itself (its body) did not arrive in time; the connection is closed."""

    status_code = 408
    error_type = "request_timeout"


class DeadlineExceededError(ServiceError):
    status_code = 504
    error_type = "deadline_exceeded"


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


def openai_type(status: int) -> str:
    """OpenAI's error ``type`` for a status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_body(
    status: int, message: str, code: str, param: str | None = None
) -> dict[str, object]:
    """OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {"message": message, "type": openai_type(status), "param": param, "code": code}
    }


def openai_status(error: ServiceError) -> int:
    """OpenAI answers every invalid request with 400 (422 is ours for bad values)."""
    return 400 if error.status_code == 422 else error.status_code


def openai_code(error: ServiceError) -> str:
    return "invalid_api_key" if error.status_code == 401 else error.error_type
