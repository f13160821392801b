"""ASGI helpers the service's middlewares share (starlette types only, so any layer may use
them: the metrics, the tracing and the request middlewares)."""

from __future__ import annotations

from starlette.types import Message, Send


class StatusRecorder:
    """A ``send`` that passes every message on and remembers the response's status (500 until
    one is sent: an app that raised before answering)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)
