"""The one error table (service.errors): every error kind maps onto HTTP, gRPC and OpenAI."""

from __future__ import annotations

import pytest

from service import errors
from service.errors import ServiceError, error_kinds

# grpc.StatusCode's names (written out: the table must not need grpc to be importable)
GRPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
}  # fmt: skip
OPENAI_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "rate_limit_error",
    "server_error",
}
# what the issues promise for the kinds a client meets most (gRPC: issue 31)
PROMISED = {
    "OverloadedError": (429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
    "DeadlineExceededError": (504, "DEADLINE_EXCEEDED", "server_error"),
    "ClientDisconnectedError": (499, "CANCELLED", "invalid_request_error"),
    "BadRequestError": (400, "INVALID_ARGUMENT", "invalid_request_error"),
    "ModelNotFoundError": (404, "NOT_FOUND", "invalid_request_error"),
    "NotReadyError": (503, "UNAVAILABLE", "server_error"),
    "UnauthorizedError": (401, "UNAUTHENTICATED", "authentication_error"),
    "ForbiddenError": (403, "PERMISSION_DENIED", "permission_error"),
    "InferenceFailedError": (500, "INTERNAL", "server_error"),
}


def test_the_table_lists_every_kind_defined_in_the_service() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, ServiceError)
    }
    assert defined <= set(error_kinds())
    assert len(error_kinds()) >= 16


@pytest.mark.parametrize("kind", error_kinds(), ids=lambda k: k.__name__)
def test_every_kind_has_an_http_status_a_grpc_code_and_an_openai_type(
    kind: type[ServiceError],
) -> None:
    assert 400 <= kind.status_code <= 599
    assert kind.grpc_code in GRPC_CODES
    assert kind.openai_type in OPENAI_TYPES
    assert kind.error_type and kind.error_type.isidentifier()
    # a client's fault is never an INTERNAL gRPC error, and a server fault never a client one
    if kind.status_code < 500:
        assert kind.grpc_code not in ("INTERNAL", "UNKNOWN", "DATA_LOSS")
    elif kind.status_code == 500:
        assert kind.grpc_code == "INTERNAL"


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_the_kinds_clients_branch_on_map_as_promised(name: str) -> None:
    kind = getattr(errors, name)
    assert (kind.status_code, kind.grpc_code, kind.openai_type) == PROMISED[name]
