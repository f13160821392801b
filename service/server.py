"""The HTTP server layer: uvicorn (httptools) with the connection guards it lacks.

uvicorn bounds nothing before a request's headers are complete: a client that connects and then
sends half a header line, or nothing, keeps its socket (and a file descriptor) forever, and the
request deadline only starts once the app runs. ``GuardedProtocol`` adds, per connection:

- a **header timeout** from the first byte (or from accept) to the end of the headers: past it
  the client gets a bare ``408`` and the connection is closed;
- the **first byte's time** in the scope (``FIRST_BYTE``), so that the body deadline
  (``BodyLimitMiddleware``) and the inference deadline (``Core.begin``) count from it;
- the request's **client state** in the scope (``CLIENT``): the connection's loss, so that the
  batcher's disconnect checks are an attribute read;
- the **open connections** in the scope (``OPEN_CONNECTIONS``), so that ``ConnectionLimitMiddleware``
  can answer 503 past ``ORTSERVE_MAX_CONNECTIONS`` while health, readiness and metrics still
  answer;
- a **refusal at accept** when the open connections approach the file-descriptor limit, so that
  a flood can never make ``accept()`` fail with EMFILE for everyone.

The port opens at once (``LiveAtOnceServer``): the app's start-up (loading and warming every
model) runs beside the server instead of before it, so ``/health/live`` answers from the first
second and ``/health/ready`` says 503 until the models are warm. A strict start-up that fails
stops the server and the process exits non-zero.

The gRPC front end (``service.grpc``, ``ORTSERVE_GRPC_PORT``) runs on the same event loop: it opens
with the HTTP port and stops after it, before the lifespan drains the batchers.

Idle keep-alive connections are closed by uvicorn's own ``timeout_keep_alive``. Why uvicorn and
not hypercorn or granian: docs/architecture.md ("The HTTP server").
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.fast import LIVE_BODIES
from service.middleware import CLIENT, FIRST_BYTE, OPEN_CONNECTIONS, ClientState
from service.ports import address_of, claim
from service.settings import Settings
from service.workers import Workers

log = logging.getLogger("service")
uvicorn_log = logging.getLogger("uvicorn.error")
# descriptors kept free of client connections: model files, logs, the pool, probes
FD_RESERVE = 256
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 44\r\nconnection: close\r\n\r\nthe request headers did not arrive in time\r\n"
)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, the first byte's time, and a cap on
    open connections at accept (``make_protocol`` sets the class attributes)."""

    header_timeout_s: float = 10.0
    max_open: int = 1 << 20

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._bytes_seen = False
        self._client: ClientState | None = None  # the current request's

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_open:
            log.warning(
                "refused a connection: %d open (limit %d)", len(self.connections), self.max_open
            )
            transport.abort()
            return
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._arm_header_timer()  # even before the first byte: a silent connection is cut too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._client is not None and self.cycle is not None and not self.cycle.response_complete:
            self._client.gone = True
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._bytes_seen = True
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_header_timer()  # the next request on a kept-alive connection begins
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[FIRST_BYTE] = self.loop.time()  # type: ignore[literal-required]

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self.scope[OPEN_CONNECTIONS] = len(self.connections)  # type: ignore[literal-required]
        self._client = self.scope[CLIENT] = ClientState()  # type: ignore[literal-required]
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._bytes_seen:  # a client that said nothing is just dropped
            self.transport.write(_TIMEOUT_408)
        self.transport.close()


class CoalescingTransport:
    """The connection's transport with the writes of one event-loop turn sent together: uvicorn
    writes a response's head and its body separately, a system call (and, on loopback, a wake
    of the reader) each; here they leave as one ``writelines`` (one ``writev``). Everything
    else is the transport's own; closing sends what is pending first."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.writelines(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def raise_fd_limit() -> int:
    """Lift the soft file-descriptor limit to the hard one; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file-descriptor limit from %d: %s", soft, exc)
    return soft


def make_protocol(settings: Settings, fd_limit: int) -> type[GuardedProtocol]:
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_open": max(16, fd_limit - FD_RESERVE)},
    )


class ProbeFront:
    """The liveness probes, answered before the app: they say the process and its event loop
    are up, nothing more, so they skip the request id, the access log and the metrics that a
    probe every few seconds from every kubelet and load balancer would only fill (the app
    answers them the same way where it runs without this server, e.g. under a test client)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            body = LIVE_BODIES.get(scope["path"])
            if body is not None:
                head = [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": head})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class LiveAtOnceServer(uvicorn.Server):
    """uvicorn with the app's lifespan run beside the server, not before it listens: start-up
    can take minutes (large models, TensorRT engines) and a liveness probe must not fail then.
    Shutdown keeps uvicorn's order: stop accepting, finish the requests, then the lifespan's
    shutdown (drain the batchers)."""

    def __init__(
        self, config: uvicorn.Config, app: Any, workers: Workers | None = None, owner: bool = True
    ) -> None:
        super().__init__(config)
        self.app = app
        self.startup_failed = False
        self.workers = workers  # started once the models are warm, stopped first
        self.owner = owner  # not one of the owner's worker processes

    async def shutdown(self, sockets: Any = None) -> None:
        # the workers finish their requests (on this process's sessions) while this one does
        if self.workers is not None and self.app_settings is not None:
            grace = self.app_settings.request_timeout_s + 10.0
            await asyncio.gather(super().shutdown(sockets), self.workers.stop(grace))
        else:
            await super().shutdown(sockets)

    @property
    def app_settings(self) -> Settings | None:
        settings: Settings | None = getattr(self.app.state, "settings", None)
        return settings

    async def _serve(self, sockets: Any = None) -> None:
        # inside uvicorn's capture_signals (serve), which re-raises SIGTERM once this returns:
        # the lifespan's shutdown must be done by then
        settings = self.app_settings
        grpc_server = None
        if settings is not None and settings.grpc_port:
            # the gRPC front end (service.grpc) on this loop, open at once like the HTTP port;
            # imported only when it is on
            from service.grpc.server import start as start_grpc

            try:
                grpc_server = await start_grpc(
                    self.app, settings, shared=settings.workers > 1, first=self.owner
                )
            except RuntimeError as exc:
                log.error("Application startup failed: %s", exc)
                self.startup_failed = True
                return
        stop = asyncio.Event()
        lifespan = asyncio.get_running_loop().create_task(self._lifespan(stop))
        try:
            await super()._serve(sockets)
        finally:
            if grpc_server is not None and settings is not None:
                # after HTTP: calls in flight finish while the batchers still run
                await grpc_server.stop(settings.request_timeout_s)
            stop.set()
            await lifespan

    async def _lifespan(self, stop: asyncio.Event) -> None:
        started = False
        try:
            # uvicorn's own lines, as its lifespan handler writes them: operators grep for them
            uvicorn_log.info("Waiting for application startup.")
            async with self.app.router.lifespan_context(self.app):
                started = True
                uvicorn_log.info("Application startup complete.")
                # what start-up built (models, sessions, the app) lives as long as the process:
                # out of the collector's sight, so that the collections requests' garbage sets
                # off stop walking it (here, not in the app: the process is the server's)
                gc.collect()
                gc.freeze()
                if self.workers is not None and not self.should_exit:
                    # ready once every process on the port is: a probe may reach any of them
                    core = self.app.state.core
                    core.started = False
                    await self.workers.start(core, self.app.state.metrics)
                    core.started = True
                await stop.wait()
                uvicorn_log.info("Waiting for application shutdown.")
            uvicorn_log.info("Application shutdown complete.")
        except Exception as exc:
            if started:
                log.exception("application shutdown failed")
                return
            log.error("Application startup failed: %s", exc, exc_info=exc)
            self.startup_failed = True
            self.should_exit = True


def shared_socket(host: str, port: int, *, first: bool) -> socket.socket:
    """A listening socket that this server's other processes bind too (SO_REUSEPORT: the kernel
    spreads new connections over them). The ``first`` (the owner's) claims the port before
    (``ports.claim``: another server on it is an error; port 0 picks a free one)."""
    if first:
        port = claim(host, port)
    family, kind, address = address_of(host, port)
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def run(app: Any, settings: Settings, *, worker: bool = False) -> None:
    """Serve ``app``: the one process, or with ``settings.workers`` > 1 the model owner (which
    starts the workers) or, with ``worker``, one of its workers (``service.workers``)."""
    fd_limit = raise_fd_limit()
    log.info(
        "file descriptors: %d; connections: 503 past %d, refused at accept past %d",
        fd_limit,
        settings.max_connections,
        max(16, fd_limit - FD_RESERVE),
    )
    config = uvicorn.Config(
        ProbeFront(app),
        host=settings.host,
        port=settings.port,
        http=make_protocol(settings, fd_limit),
        lifespan="off",  # LiveAtOnceServer runs it beside the server
        log_level=settings.log_level,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        access_log=False,  # service.access logs each request with its id and model
        log_config=None,  # keep the handler configured by the caller (JSON or text)
    )
    sockets = None
    workers = None
    if settings.workers > 1:
        try:
            sockets = [shared_socket(settings.host, settings.port, first=not worker)]
        except OSError as exc:
            log.error("could not bind %s:%d: %s", settings.host, settings.port, exc)
            sys.exit(1)
        if not worker:
            workers = Workers(settings, sockets[0].getsockname()[1])
    server = LiveAtOnceServer(config, app, workers, owner=not worker)
    server.run(sockets=sockets)
    if server.startup_failed:
        sys.exit(3)
