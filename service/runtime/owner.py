"""The model owner: the one process that holds the ONNX Runtime sessions, and serves them to its
worker processes (``ORTSERVE_WORKERS``; ``service.workers`` starts them).

Every model is loaded once, in this process (one CUDA context per device, one copy of the
weights); worker processes parse HTTP, decode, batch and encode in parallel with it and send
their collated batches here (``service.runtime.mirror``). A worker's batch runs on the owner's
model thread for that instance, taking turns with the owner's own batches, so a session never
runs two batches at once.

Each version a worker mirrors is *held* here (``Usage.hold``): a reload or unload swaps the
owner's serving set at once and tells every worker (``changed``), but the old version is only
stopped once no request of this process holds it and every worker has released it (after its
own requests on it have finished). A worker that goes away releases everything it held.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import NotReadyError, ServiceError
from service.model_config import ModelConfig
from service.runtime import channel
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelRegistry
from service.runtime.session import IOSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionView:
    """What a worker's ``RemoteSession`` reports of the owner's session."""

    inputs: list[IOSpec]
    outputs: list[IOSpec]
    providers: list[str]
    provider_options: dict[str, dict[str, str]]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class VersionView:
    """One serving version as a worker mirrors it: ``token`` names it in run frames."""

    token: int
    folder: str
    config: ModelConfig
    labels: tuple[str, ...]
    sessions: list[SessionView]


@dataclass(frozen=True)
class Description:
    """A name in the owner's registry: a model (with its serving versions), a pipeline, or
    nothing (``kind`` None)."""

    kind: str | None
    folder: str = ""
    error: str | None = None
    versions: dict[int, VersionView] = field(default_factory=dict)


class ModelOwner:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Callable[[], list[Any]],
        merge: Callable[[list[list[Any]]], list[Any]],
    ) -> None:
        """``metrics``: this process's metric families now (``Metrics.families``); ``merge``:
        several processes' families as one server's (``service.metrics.merge``)."""
        self.registry = registry
        self._metrics = metrics
        self._merge = merge
        self._writers: dict[int, asyncio.StreamWriter] = {}  # worker → its control connection
        self._asked: dict[int, asyncio.Future[Any]] = {}  # the owner's own calls to workers
        self._ask_ids = itertools.count(-1, -1)
        self._models: dict[int, LoadedModel] = {}  # token → a version some worker mirrors
        self._tokens: dict[int, int] = {}  # id(model) → its token, while in _models
        self._holders: dict[int, int] = {}  # token → how many workers hold it
        self._next = itertools.count(1)
        self._controls: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self.ready: set[int] = set()  # workers whose start-up is done (their control is open)
        self._readiness = asyncio.Event()
        self._seq = 0  # changes announced
        self._followed: dict[int, int] = {}  # worker → the last change it has followed
        self._follows = asyncio.Event()
        self._replies: set[asyncio.Task[None]] = set()
        registry.listeners.append(self._announce)

    async def settled(self, timeout_s: float = 30.0) -> None:
        """Until every connected worker has followed every change announced so far (it mirrors
        the owner's serving set again), or ``timeout_s``."""
        target = self._seq
        try:
            await asyncio.wait_for(self._caught_up(target), timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            behind = sorted(i for i in self.ready if self._followed.get(i, 0) < target)
            log.warning("workers %s did not follow a model change in %.0f s", behind, timeout_s)

    async def _caught_up(self, target: int) -> None:
        while any(self._followed.get(i, 0) < target for i in self.ready):
            self._follows.clear()
            await self._follows.wait()

    async def scrape(self) -> list[Any]:
        """Every process's metric families, merged into one server's."""
        return self._merge(await self.families())

    async def families(self, timeout_s: float = 5.0) -> list[list[Any]]:
        """Every process's metric families: this one's, then each ready worker's (one that does
        not answer within ``timeout_s`` is left out of this scrape)."""
        loop = asyncio.get_running_loop()
        asked = []
        for index in sorted(self.ready):
            writer = self._writers.get(index)
            if writer is None or writer.is_closing():
                continue
            ident = next(self._ask_ids)
            self._asked[ident] = future = loop.create_future()
            channel.write(writer, (ident, "metrics", None))
            asked.append((ident, future))
        own = self._metrics()
        done, _ = (
            await asyncio.wait([f for _, f in asked], timeout=timeout_s) if asked else ((), ())
        )
        for ident, _ in asked:
            self._asked.pop(ident, None)
        return [own, *(f.result() for f in done if not f.cancelled() and f.exception() is None)]

    async def wait_ready(self, workers: int) -> None:
        """Until ``workers`` workers have said their start-up is done."""
        while len(self.ready) < workers:
            self._readiness.clear()
            await self._readiness.wait()

    async def start(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._connected, path=str(path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._controls):
            writer.close()

    # -- connections -----------------------------------------------------------------------------
    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await channel.read(reader)
            if hello[0] == "control":
                await self._control(reader, writer, hello[1])
            elif hello[0] == "runs":
                await self._runs(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away (its holds were released by _control)
        finally:
            writer.close()

    async def _control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        holds: set[int] = set()
        self._controls.add(writer)
        self._writers[index] = writer
        try:
            while True:
                ident, op, args = await channel.read(reader)
                if ident < 0:  # a worker's answer to the owner's call: (ident, ok, value)
                    asked = self._asked.pop(ident, None)
                    if asked is not None and not asked.done():
                        asked.set_result(args) if op is True else asked.cancel()
                elif op == "ready":  # notices: no answer
                    self.ready.add(index)
                    self._readiness.set()
                elif op == "followed":
                    self._followed[index] = max(args, self._followed.get(index, 0))
                    self._follows.set()
                else:  # each call on its own: a load must not hold up the describes it causes
                    task = asyncio.get_running_loop().create_task(
                        self._reply(writer, ident, op, args, holds)
                    )
                    self._replies.add(task)
                    task.add_done_callback(self._replies.discard)
        finally:
            self.ready.discard(index)
            if self._writers.get(index) is writer:
                del self._writers[index]
            self._followed.pop(index, None)
            self._follows.set()
            self._controls.discard(writer)
            for token in list(holds):
                self._release(token, holds)

    async def _reply(
        self, writer: asyncio.StreamWriter, ident: int, op: str, args: Any, holds: set[int]
    ) -> None:
        try:
            reply = (ident, True, await self._answer(op, args, holds))
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                log.error("model channel: %s failed", op, exc_info=exc)
            reply = (ident, False, channel.failure(exc))
        if not writer.is_closing():
            channel.write(writer, reply)

    async def _answer(self, op: str, args: Any, holds: set[int]) -> Any:
        registry = self.registry
        if op == "catalog":
            return {
                "models": {name: str(e.folder) for name, e in registry.models.items()},
                "pipelines": {name: str(p.folder) for name, p in registry.pipelines.items()},
            }
        if op == "describe":
            return self._describe(args, holds)
        if op == "release":
            self._release(args, holds)
            return None
        if op == "metrics":  # a worker was scraped: it answers for every process
            return await self.scrape()
        if op == "load":
            name, override = args
            try:
                await registry.load_model(name, override)
            finally:
                await self.settled()
            return None
        if op == "unload":
            try:
                await registry.unload_model(args)
            finally:
                await self.settled()
            return None
        raise ValueError(f"unknown model channel operation {op!r}")

    async def _runs(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker model thread's batches, one at a time, each on the owner's model thread
        for its instance."""
        loop = asyncio.get_running_loop()
        while True:
            token, instance, feeds = await channel.read(reader)
            model = self._models.get(token)
            try:
                if model is None or not model.batcher.healthy:
                    raise NotReadyError("this model version is no longer served; retry")
                session = model.sessions[instance]
                outputs = await loop.run_in_executor(
                    model.batcher.executor(instance), session.run, feeds
                )
                reply: tuple[bool, Any] = (True, outputs)
            except Exception as exc:
                reply = (False, channel.failure(exc))
            channel.write(writer, reply)
            await writer.drain()

    # -- what workers mirror ---------------------------------------------------------------------
    def _describe(self, name: str, holds: set[int]) -> Description:
        registry = self.registry
        entry = registry.models.get(name)
        if entry is None:
            pipeline = registry.pipelines.get(name)
            if pipeline is None:
                return Description(None)
            return Description("pipeline", str(pipeline.folder))
        versions = {}
        for version, model in entry.serving.items():
            token = self._hold(model, holds)
            sessions = [
                SessionView(s.inputs, s.outputs, s.providers, s.provider_options, s.metadata)
                for s in model.sessions
            ]
            versions[version] = VersionView(
                token, str(model.folder), model.config, model.labels, sessions
            )
        return Description("model", str(entry.folder), entry.error, versions)

    def _hold(self, model: LoadedModel, holds: set[int]) -> int:
        token = self._tokens.get(id(model))
        if token is None:
            token = next(self._next)
            self._tokens[id(model)] = token
            self._models[token] = model
        if token not in holds:
            holds.add(token)
            self._holders[token] = self._holders.get(token, 0) + 1
            model.usage.hold()
        return token

    def _release(self, token: int, holds: set[int]) -> None:
        if token not in holds:
            return
        holds.discard(token)
        model = self._models[token]
        model.usage.unhold()
        self._holders[token] -= 1
        if self._holders[token] == 0:  # no worker mirrors it: a later describe gives a new token
            del self._holders[token], self._models[token], self._tokens[id(model)]

    def _announce(self, name: str) -> None:
        self._seq += 1
        for writer in list(self._controls):
            if not writer.is_closing():
                channel.write(writer, (0, "changed", (name, self._seq)))
