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


class DeadlineExceededError(ServiceError):
    status_code = 504
    error_type = "deadline_exceeded"
