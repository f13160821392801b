"""``grpc.health.v1.Health`` from the core's readiness, for Kubernetes' gRPC probes.

Services: ``""`` (and ``inference.GRPCInferenceService``) is the server: SERVING when
``Core.ready`` says ready (the same rule as ``/health/ready``), NOT_SERVING otherwise. Each model
and pipeline by its name: SERVING when ready, NOT_SERVING while it loads, after a failed load, or
when unhealthy. A name the server does not know (never in the repository, or unloaded) is
NOT_FOUND on Check and SERVICE_UNKNOWN on Watch, as the health-checking protocol specifies: a
probe that names a model that is not there fails either way.

Check reads the readiness afresh; Watch streams are fed by a refresh every ``refresh_s``. The
service is public, as the HTTP probes are; at shutdown every service turns NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from service.core import Core

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVER_NAMES = ("", "inference.GRPCInferenceService")


class CoreHealth(health_aio.HealthServicer):  # type: ignore[misc]
    def __init__(self, app: Any, refresh_s: float = 1.0) -> None:
        super().__init__()
        self.app = app
        self.refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None
        self._known: set[str] = set()

    def statuses(self) -> dict[str, int]:
        core: Core | None = getattr(self.app.state, "core", None)
        if core is None:
            return dict.fromkeys(SERVER_NAMES, NOT_SERVING)
        readiness = core.ready()
        server = SERVING if readiness.ready else NOT_SERVING
        found = {n: SERVING if s == "ready" else NOT_SERVING for n, s in readiness.models.items()}
        return {**found, **dict.fromkeys(SERVER_NAMES, server)}

    async def refresh(self) -> None:
        if self._gracefully_shutting_down:
            return
        statuses = self.statuses()
        for name in self._known - statuses.keys():  # unloaded: unknown again
            await self.set(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)  # for Watch
            self._server_status.pop(name, None)  # for Check: NOT_FOUND
        self._known = set(statuses)
        for name, status in statuses.items():
            if self._server_status.get(name) != status:
                await self.set(name, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await self.refresh()
                await asyncio.sleep(self.refresh_s)

        self._task = asyncio.get_running_loop().create_task(loop(), name="grpc-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.enter_graceful_shutdown()
