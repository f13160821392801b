"""What one connection and one call may hold on the gRPC port, as the HTTP server bounds a
connection and a body (``service.server``, ``service.middleware``).

grpc.aio counts a call against ``maximum_concurrent_rpcs`` from the moment its headers arrive
until its status is sent, and nothing in grpc bounds how long a call may wait for its request
message: a client that opens streams and never sends (or half-closes without a message, or with
a truncated one: grpc.aio then returns without sending a status) held its slots until it closed
the connection, and one connection could open every slot, so every other call was refused
RESOURCE_EXHAUSTED. Two bounds, then:

- ``MAX_STREAMS_PER_CONNECTION``: HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS, the most calls one
  connection may have open at once (grpc refuses a stream past it); 100 is the floor RFC 9113
  recommends. A client with more calls in flight queues them on its side.
- ``Bounded``: every request message must arrive within ``timeout_s`` of the call (of
  the previous message, on a stream) — ``ORTSERVE_REQUEST_TIMEOUT_S``, as an HTTP body must —
  else the call ends DEADLINE_EXCEEDED; a call that ends without its one message is
  INVALID_ARGUMENT; a message that is not the method's protobuf is INVALID_ARGUMENT (grpc.aio
  logged a traceback for it). The client's own deadline, when shorter, still ends it first.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

MAX_STREAMS_PER_CONNECTION = 100
EOF = grpc.aio.EOF
_EXPIRED = object()
_CACHED_HANDLERS = 256  # far above the methods served: a handler made per call is not kept


class Bounded:
    """Where the generated ``add_…Servicer_to_server`` functions register a service: every
    handler is wrapped once, here, so that it reads its request messages itself, each within
    ``timeout_s`` (a unary request becomes a stream of exactly one message: the same bytes on the
    wire), and then handed to ``server``. A server interceptor did the same per call, at the cost
    of a coroutine chain on every call.

    Every service is registered as a generic handler, the registered-method form included:
    grpc.aio keeps one pending accept per registered method and waits on all of them again after
    every call it accepts (some 25 here), where generic handlers share one."""

    def __init__(self, server: Any, timeout_s: float) -> None:
        self.server = server
        self.timeout_s = timeout_s

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_BoundedGeneric(h, self.timeout_s) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """The generated code registers each service both ways; its generic handler already
        serves the same methods."""


class _BoundedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler's methods, each wrapped once by ``bounded`` and kept."""

    def __init__(self, inner: Any, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self._wrapped: dict[Any, Any] = {}

    def service(self, handler_call_details: Any) -> Any:
        handler = self.inner.service(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return None
        wrapped = self._wrapped.get(handler)
        if wrapped is None:
            wrapped = bounded(handler, self.timeout_s)
            if len(self._wrapped) < _CACHED_HANDLERS:
                self._wrapped[handler] = wrapped
        return wrapped


def bounded(handler: Any, timeout_s: float) -> Any:
    """``handler`` (a ``grpc.RpcMethodHandler`` of async behaviours) reading its own requests."""
    deserialize = handler.request_deserializer or (lambda raw: raw)

    async def one(context: Any) -> Any:
        message = await _read(context, deserialize, timeout_s)
        if message is EOF:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message"
            )
        return message

    async def each(context: Any) -> AsyncIterator[Any]:
        while (message := await _read(context, deserialize, timeout_s)) is not EOF:
            yield message

    serialize = handler.response_serializer
    if not handler.response_streaming:
        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(requests: Any, context: Any) -> Any:
            request = each(context) if handler.request_streaming else await one(context)
            return await inner(request, context)

        return grpc.stream_unary_rpc_method_handler(unary, None, serialize)

    inner = handler.stream_stream if handler.request_streaming else handler.unary_stream

    async def request_of(context: Any) -> Any:
        return each(context) if handler.request_streaming else await one(context)

    if inspect.isasyncgenfunction(inner):  # answers by yielding them

        async def streaming(requests: Any, context: Any) -> AsyncIterator[Any]:
            async for answer in inner(await request_of(context), context):
                yield answer

        return grpc.stream_stream_rpc_method_handler(streaming, None, serialize)

    async def writing(requests: Any, context: Any) -> None:  # answers with context.write
        await inner(await request_of(context), context)

    return grpc.stream_stream_rpc_method_handler(writing, None, serialize)


async def _read(context: Any, deserialize: Callable[[bytes], Any], timeout_s: float) -> Any:
    """The next request message (EOF when the client has half-closed), or the call aborted.

    The wait is bounded by cancelling this task from a timer (cheaper than ``wait_for``'s task
    per call); grpc cancels the same task when the client cancels, which the flag tells apart.
    """
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        raw = await context.read()
    except asyncio.CancelledError:
        if not expired:
            raise  # the client cancelled, or the server stops
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        raw = _EXPIRED
    finally:
        timer.cancel()
    if raw is _EXPIRED:
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the request message did not arrive within {timeout_s:g} s",
        )
    if raw is EOF:
        return EOF
    try:
        return deserialize(raw)
    except DecodeError:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, "the request message is not the method's protobuf"
        )
