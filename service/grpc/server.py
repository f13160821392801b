"""The gRPC server: ``grpc.aio`` on the HTTP server's event loop, beside uvicorn.

``start`` binds ``ORTSERVE_HOST:ORTSERVE_GRPC_PORT`` at once (as the HTTP port opens before the
models are warm) and serves ``inference.GRPCInferenceService`` on whatever core the app has
built, the standard health service and server reflection. Messages over
``ORTSERVE_MAX_BODY_BYTES`` are refused by gRPC itself (RESOURCE_EXHAUSTED) before any of our code
runs; calls past ``ORTSERVE_MAX_CONNECTIONS`` at once are refused (RESOURCE_EXHAUSTED) by the
server's concurrency limit, one connection holds at most ``MAX_STREAMS_PER_CONNECTION`` of them,
a call whose request message has not arrived within ``ORTSERVE_REQUEST_TIMEOUT_S`` ends
DEADLINE_EXCEEDED (``bounds``), and a connection that has not sent its HTTP/2 preface within
``ORTSERVE_HEADER_TIMEOUT_S`` is closed. ``stop`` turns health NOT_SERVING, lets calls in flight
finish within the grace period, then closes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.grpc.bounds import MAX_STREAMS_PER_CONNECTION, Bounded
from service.grpc.health import CoreHealth
from service.grpc.protos import grpc_service_pb2 as pb
from service.grpc.protos import grpc_service_pb2_grpc as pb_grpc
from service.grpc.servicer import InferenceServicer
from service.ports import claim
from service.settings import Settings

log = logging.getLogger("service")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class GrpcServer:
    server: Any  # grpc.aio.Server
    health: CoreHealth
    address: str

    async def stop(self, grace_s: float) -> None:
        await self.health.stop()
        await self.server.stop(grace_s)
        log.info("gRPC server on %s stopped", self.address)


async def start(
    app: Any, settings: Settings, *, shared: bool = False, first: bool = True
) -> GrpcServer:
    """Build, bind and start the server; raises ``RuntimeError`` when the port cannot be bound.
    ``shared``: the server's processes (``ORTSERVE_WORKERS``) share the port, which the
    ``first`` (the owner) claims before (``ports.claim``); else a port in use is an error."""
    if shared and first:
        try:
            claim(settings.host, settings.grpc_port)
        except OSError as exc:
            raise RuntimeError(
                f"could not bind the gRPC port {settings.grpc_port}: {exc}"
            ) from None
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if shared else 0),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            # a connection that has not sent its HTTP/2 preface by then is closed, as an HTTP
            # one without its headers (grpc's own default: 120 s)
            ("grpc.server_handshake_timeout_ms", round(settings.header_timeout_s * 1000)),
        ],
        maximum_concurrent_rpcs=settings.max_connections,
    )
    services = Bounded(server, settings.request_timeout_s)  # each handler wrapped once
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        InferenceServicer(app, settings.max_body_bytes), services
    )
    health = CoreHealth(app)
    health_pb2_grpc.add_HealthServicer_to_server(health, services)
    names = (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    # reflection.enable_server_reflection, with its asyncio servicer named (it picks the
    # servicer by the server's type, which ``services`` is not)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names), services
    )
    address = bind_address(settings.host, settings.grpc_port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"could not bind the gRPC port {address}: {exc}") from None
    if not bound:
        raise RuntimeError(f"could not bind the gRPC port {address}")
    await server.start()
    health.start()
    log.info("gRPC server listening on %s", address)
    return GrpcServer(server, health, address)
