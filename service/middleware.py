"""Pure ASGI middleware (BaseHTTPMiddleware would break streaming and disconnect detection)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import INTERNAL_MESSAGE, PayloadTooLargeError, openai_body, service_body

log = logging.getLogger("service")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
OPENAI_PATH = "/v1/embeddings"  # answers errors in OpenAI's shape (service.api.openai)


def error_body(message: str, error_type: str, request_id: str) -> bytes:
    return orjson.dumps(service_body(message, error_type, request_id))


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
    (chunked uploads), without ever buffering more than the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # a ServiceError: the app's handler turns it into the usual 413 body;
                    # "close" makes uvicorn drop the connection after it instead of reading
                    # and discarding whatever else the client keeps sending
                    raise PayloadTooLargeError(self._message(), headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return (
            f"the request body is larger than {self.max_body_bytes} bytes (ORTSERVE_MAX_BODY_BYTES)"
        )

    async def _reject(self, scope: Scope, send: Send) -> None:
        if scope["path"].startswith(OPENAI_PATH):  # the error shape that route documents
            body = orjson.dumps(openai_body(413, self._message(), "payload_too_large"))
        else:
            body = error_body(self._message(), "payload_too_large", request_id_var.get())
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
