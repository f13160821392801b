"""RequestContext: what every operation of the core is given about the request it serves, by
whichever front end received it (HTTP now, gRPC beside it): when it must end, how to tell the
caller has gone, who the caller is, and where the timing of its runs is written.

A context is made by ``service.core.Core.begin``, which authorises the caller first: a front end
cannot reach an operation without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.auth import Caller
from service.runtime.batcher import BatchResult, DisconnectCheck

ANONYMOUS = Caller(None, None)


@dataclass
class RequestContext:
    """One request's deadline (event-loop time), its disconnect check, its caller and protocol,
    and the timing of the runs it took part in (front ends turn these into headers or trailers)."""

    deadline: float
    is_disconnected: DisconnectCheck | None = None
    caller: Caller = ANONYMOUS
    protocol: str = "http"
    management: bool = False  # begun for a management call: the admin credential was checked
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    model_version: int | None = None
    on_model: Callable[[str], None] | None = None  # told the model's name once it is found

    def timed(self, result: BatchResult[Any]) -> None:
        self.queue_ms = max(self.queue_ms, result.queue_ms)
        self.inference_ms = max(self.inference_ms, result.inference_ms)
        self.batch_sizes.append(result.batch_size)

    def timings(self) -> list[tuple[str, str]]:
        """The runs' timing as (name, value) pairs: HTTP headers, gRPC trailing metadata."""
        rows = [
            ("x-queue-time-ms", f"{self.queue_ms:.2f}"),
            ("x-inference-time-ms", f"{self.inference_ms:.2f}"),
        ]
        if self.batch_sizes:
            rows.append(("x-batch-size", str(max(self.batch_sizes))))
        if self.model_version is not None:
            rows.append(("x-model-version", str(self.model_version)))
        return rows

    def stage(self) -> RequestContext:
        """The same request (deadline, disconnect check, caller) with timings of its own: one
        stage of a pipeline."""
        return RequestContext(self.deadline, self.is_disconnected, self.caller, self.protocol)
