"""The hot routes as plain ASGI: the probes and v2 inference without FastAPI's routing,
dependency solving and request/response wrappers, which cost more than a small model's run.

``FastPath`` sits inside the guards (request id, connection limit, metrics, tracing, the body
limit and its deadline), so every request still passes them; it answers

    GET  /health/live  /v2/health/live  /health/ready  /v2/health/ready
    POST /v2/models/{name}/infer  /v2/models/{name}/versions/{version}/infer
    POST /embed                                     (JSON: what it always takes)

itself, through the same core calls and the same encoders as the FastAPI routes, which stay
for everything else and for the OpenAPI description (``/docs``, schemathesis) of these too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import parse_json, scope_context
from service.api.embed import answer_embed
from service.api.v2 import HEADER_LENGTH, answer_infer, infer_headers
from service.context import RequestContext
from service.core import Core
from service.errors import (
    ServiceError,
    UnsupportedMediaTypeError,
    service_body,
    validation_details,
    validation_summary,
)
from service.middleware import request_id_var
from service.schemas.embed import EmbedRequest

log = logging.getLogger("service")
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
# the liveness probes' answers (service.server.ProbeFront answers them before the app too)
LIVE_BODIES = {
    "/health/live": orjson.dumps({"status": "ok"}),
    "/v2/health/live": orjson.dumps({"live": True}),
}


class RouteLabel:
    """What the metrics middleware reads from ``scope["route"]``: the path template."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_LABELS = {
    path: RouteLabel(path)
    for path in (
        "/health/live",
        "/v2/health/live",
        "/health/ready",
        "/v2/health/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/embed",
    )
}


class FastPath:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if method == "GET":
                live = LIVE_BODIES.get(path)
                if live is not None:
                    return await self._probe(scope, send, path, 200, live)
                if path in ("/health/ready", "/v2/health/ready"):
                    return await self._ready(scope, send, path)
            elif method == "POST" and path.startswith("/v2/models/"):
                found = _INFER.match(path)
                if found is not None:
                    return await self._infer(scope, receive, send, *found.groups())
            elif method == "POST" and path == "/embed":
                return await self._embed(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _core(scope: Scope) -> Core | None:
        return getattr(scope["app"].state, "core", None)

    async def _probe(self, scope: Scope, send: Send, path: str, status: int, body: bytes) -> None:
        scope["route"] = _LABELS[path]
        await _send(send, status, body, [(b"content-type", b"application/json")])

    async def _ready(self, scope: Scope, send: Send, path: str) -> None:
        core = self._core(scope)
        state = core.ready() if core is not None else None
        ok = state is not None and state.ready
        if path == "/v2/health/ready":
            body = orjson.dumps({"ready": ok})
        else:
            models = state.models if state is not None else {}
            body = orjson.dumps({"status": "ready" if ok else "not_ready", "models": models})
        await self._probe(scope, send, path, 200 if ok else 503, body)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        scope["route"] = _LABELS[
            "/v2/models/{name}/infer"
            if version is None
            else "/v2/models/{name}/versions/{version}/infer"
        ]
        core = self._core(scope)
        if core is None:  # the app's lifespan has not run: the routes answer that
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        try:
            ctx = scope_context(core, scope, headers)
            core.entry(ctx, name)  # 404 before the body is read
            body, length = await answer_infer(
                core,
                ctx,
                name,
                version,
                await _body(receive),
                content_encoding=headers.get("content-encoding"),
                header_length=headers.get(HEADER_LENGTH),
                max_body_bytes=self.max_body_bytes,
            )
        except ServiceError as exc:
            return await _error(send, exc)
        head = [(k.encode(), v.encode()) for k, v in infer_headers(length).items()]
        head += _timing(ctx)
        await _send(send, 200, body, head)

    async def _embed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = _LABELS["/embed"]
        core = self._core(scope)
        if core is None:
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        try:
            ctx = scope_context(core, scope, headers)
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media not in ("application/json", ""):
                raise UnsupportedMediaTypeError("send an application/json body")
            try:
                params = EmbedRequest.model_validate(parse_json(await _body(receive)))
            except ValidationError as exc:
                details = validation_details(exc.errors())
                body = service_body(
                    validation_summary(details), "validation_error", request_id_var.get(), details
                )
                return await _send(send, 422, orjson.dumps(body), [_JSON])
            answer = await answer_embed(core, ctx, params)
        except ServiceError as exc:
            return await _error(send, exc)
        head = [_JSON, *_timing(ctx)]
        await _send(send, 200, orjson.dumps(answer.model_dump()), head)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) > 1 else chunks[0]


def _timing(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in ctx.timings()]


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_JSON = (b"content-type", b"application/json")


async def _error(send: Send, exc: ServiceError) -> None:
    if exc.status_code >= 500:
        log.warning("request %s failed: %s", request_id_var.get(), exc.message)
    body: Any = service_body(exc.message, exc.error_type, request_id_var.get())
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await _send(send, exc.status_code, orjson.dumps(body), headers)
