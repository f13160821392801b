"""Pure ASGI middleware (BaseHTTPMiddleware would break streaming and disconnect detection)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    INTERNAL_MESSAGE,
    BusyError,
    ClientDisconnectedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    openai_body,
    service_body,
)

log = logging.getLogger("service")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
OPENAI_PATH = "/v1/embeddings"  # answers errors in OpenAI's shape (service.api.openai)
# set in the scope by the server's protocol (service.server); absent under a test client
FIRST_BYTE = "ortserve.first_byte"  # event-loop time of the request's first byte
OPEN_CONNECTIONS = "ortserve.open_connections"  # open connections when its headers were complete
CLIENT = "ortserve.client"  # the request's ClientState: whether its connection is gone
# what a flood must never starve: the probes and the scrape
UNLIMITED_PATHS = ("/health/", "/v2/health/", "/metrics")


class ClientState:
    """Set by the server's protocol when the connection closes before the response is complete:
    a disconnect check that costs an attribute read, where Starlette's ``is_disconnected`` opens
    and cancels an anyio scope on the event loop for every check."""

    __slots__ = ("gone",)

    def __init__(self) -> None:
        self.gone = False

    async def is_disconnected(self) -> bool:
        return self.gone


def first_byte_time(scope: Scope) -> float:
    """When the request began, in event-loop time (now, when the server did not say)."""
    started = scope.get(FIRST_BYTE)
    return float(started) if started is not None else asyncio.get_running_loop().time()


def error_body(message: str, error_type: str, request_id: str) -> bytes:
    return orjson.dumps(service_body(message, error_type, request_id))


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    error_type: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error answered before the app runs, in the shape its route documents, closing the
    connection (the body it did not read is not worth reading)."""
    if scope["path"].startswith(OPENAI_PATH):
        body = orjson.dumps(openai_body(status, message, error_type))
    else:
        body = error_body(message, error_type, request_id_var.get())
    head: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Accepts a safe incoming ``x-request-id`` or makes one; echoes it with the total time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                total_ms = (time.perf_counter() - started) * 1000.0
                headers.append((b"x-total-time-ms", f"{total_ms:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # the one place unexpected errors end: logged with the id, never sent to the client
            log.exception("request %s: unexpected error", request_id)
            if response_started:
                raise
            body = error_body(INTERNAL_MESSAGE, "internal_error", request_id)
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """413 for bodies over the limit: from Content-Length up front, or while streaming
    (chunked uploads), without ever buffering more than the limit. 408 for a body still
    arriving ``body_timeout_s`` after the request's first byte; 499 for a client that leaves
    while sending it (Starlette would raise ``ClientDisconnect``, an unexpected error)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_timeout_s: float,
        max_bodies_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        # every request's body bytes held at once, across connections (None: no budget)
        self.max_bodies_bytes = max_bodies_bytes
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._reject(scope, send)
                    return
                if self._over_budget(max(declared, 0)):
                    await send_error(
                        scope, send, 503, self._busy(), "server_busy", [(b"retry-after", b"1")]
                    )
                    return
        received = 0
        deadline = first_byte_time(scope) + self.body_timeout_s
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body, receive() waits for the disconnect: no deadline
                return await receive()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except (TimeoutError, asyncio.TimeoutError):
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_timeout_s:g} s of its "
                    "first byte (ORTSERVE_REQUEST_TIMEOUT_S)",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnectedError("the client closed the connection mid-body")
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                size = len(message.get("body", b""))
                if self._over_budget(size):
                    raise BusyError(self._busy(), retry_after_s=1)
                received += size
                self.held += size
                if received > limit:
                    # a ServiceError: the app's handler turns it into the usual 413 body;
                    # "close" makes uvicorn drop the connection after it instead of reading
                    # and discarding whatever else the client keeps sending
                    raise PayloadTooLargeError(self._message(), headers={"Connection": "close"})
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.held -= received  # the request is over: its body is no longer held

    def _over_budget(self, size: int) -> bool:
        return self.max_bodies_bytes is not None and self.held + size > self.max_bodies_bytes

    def _busy(self) -> str:
        return (
            f"the server holds {self.max_bodies_bytes} bytes of request bodies "
            "(ORTSERVE_MAX_BODIES_BYTES); retry shortly"
        )

    def _message(self) -> str:
        return (
            f"the request body is larger than {self.max_body_bytes} bytes (ORTSERVE_MAX_BODY_BYTES)"
        )

    async def _reject(self, scope: Scope, send: Send) -> None:
        await send_error(scope, send, 413, self._message(), "payload_too_large")


class ConnectionLimitMiddleware:
    """503 with ``Retry-After`` and ``Connection: close`` for requests that arrive while more
    than ``max_connections`` connections are open (the server's protocol counts them), except
    health, readiness and metrics, so that probes and scrapes keep answering under a flood."""

    def __init__(self, app: ASGIApp, max_connections: int) -> None:
        self.app = app
        self.max_connections = max_connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get(OPEN_CONNECTIONS, 0) <= self.max_connections
            or scope["path"].startswith(UNLIMITED_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        message = (
            f"the server has more than {self.max_connections} open connections "
            "(ORTSERVE_MAX_CONNECTIONS); retry shortly"
        )
        await send_error(
            scope, send, 503, message, "too_many_connections", [(b"retry-after", b"1")]
        )
