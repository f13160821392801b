"""A worker process's registry: the model owner's models, mirrored (``ORTSERVE_WORKERS``).

A worker serves HTTP like the owner does — the same app, core, processors and batchers — but
opens no ONNX Runtime session: each version it serves is the owner's (``owner.describe``: the
config completed from the graph, the labels, the sessions' IO), with ``RemoteSession``s that send
each collated batch to the owner's session and wait for its outputs. Decoding, tokenizing,
batching, postprocessing and encoding happen here, in parallel with the owner and the other
workers.

The model set follows the owner's: a load or unload asked of a worker is done by the owner, and
every change there (a load, an unload, a poll) reaches each worker as ``changed``, after which
the worker mirrors the owner's serving set again (``sync``). Requests a worker holds on a
replaced version finish on it; the owner keeps that version until the worker releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import LoadFailedError, ModelNotFoundError, NotReadyError
from service.model_config import ConfigError
from service.runtime import channel
from service.runtime.entries import ModelEntry
from service.runtime.model import LoadedModel, mirror_model
from service.runtime.owner import Description, SessionView
from service.runtime.pipelines import PipelineEntry
from service.runtime.registry import LifecycleObserver, ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)
_threads = threading.local()  # each model thread's connection to the owner


class RemoteSession:
    """One of the owner's sessions, run from this worker's model thread for that instance: the
    collated feeds go to the owner, the outputs come back (blocking, as a local run would)."""

    def __init__(self, path: Path, token: int, instance: int, view: SessionView) -> None:
        self.path = path
        self.token = token
        self.instance = instance
        self.inputs = view.inputs
        self.outputs = view.outputs
        self.providers = view.providers
        self.provider_options = view.provider_options
        self.metadata = view.metadata

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sock: socket.socket | None = getattr(_threads, "sock", None)
        try:
            if sock is None:
                sock = _threads.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.path))
                channel.send_blocking(sock, ("runs",))
            channel.send_blocking(sock, (self.token, self.instance, feeds))
            ok, value = channel.receive_blocking(sock)
        except OSError as exc:
            _threads.sock = None
            if sock is not None:
                sock.close()
            raise NotReadyError("the model owner process is not answering") from exc
        if ok:
            outputs: dict[str, np.ndarray] = value
            return outputs
        raise channel.rebuild(*value)


class OwnerLink:
    """The worker's control connection to the owner: calls (catalog, describe, load, unload,
    release) and the owner's ``changed`` notices. When the owner goes away the worker stops."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.index = index
        self.changes: asyncio.Queue[tuple[str, int]] = asyncio.Queue()  # (name, its number)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        # this process's metric families now, for the owner's scrape (Metrics.families)
        self.families: Callable[[], list[Any]] = list

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(str(self.path))
        channel.write(self._writer, ("control", self.index))
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def call(self, op: str, args: Any = None) -> Any:
        if self._writer is None or self._writer.is_closing():
            raise NotReadyError("the model owner process is not answering")
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        channel.write(self._writer, (ident, op, args))
        return await future

    def notify(self, op: str, args: Any = None) -> None:
        """Tell the owner something that needs no answer: ``release`` (a mirrored version is
        gone here), ``ready`` (start-up done)."""
        if self._writer is not None and not self._writer.is_closing():
            channel.write(self._writer, (next(self._ids), op, args))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                ident, ok, value = await channel.read(reader)
                if ident == 0:  # a notice: (0, "changed", (name, number))
                    self.changes.put_nowait(value)
                    continue
                if ident < 0:  # the owner's call (ident, "metrics", None): answered at once
                    assert self._writer is not None
                    channel.write(self._writer, (ident, True, self.families()))
                    continue
                future = self._pending.pop(ident, None)
                if future is None or future.done():
                    continue
                if ok is True:
                    future.set_result(value)
                else:
                    future.set_exception(channel.rebuild(*value))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        gone = NotReadyError("the model owner process is not answering")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        self._pending.clear()
        log.warning("worker %d: the model owner went away; stopping", self.index)
        os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        if self._writer is not None:
            self._writer.close()


class MirrorRegistry(ModelRegistry):
    """The owner's models with sessions that run there; everything else as ``ModelRegistry``."""

    def __init__(
        self,
        settings: Settings,
        observer: LifecycleObserver | None = None,
        *,
        link: OwnerLink,
    ) -> None:
        super().__init__(settings, observer)
        self.link = link
        self._loop = asyncio.get_running_loop()

    @property
    def watches(self) -> bool:
        return True  # follows the owner's notices, whatever the control mode

    def _ask(self, op: str, args: Any = None) -> Any:
        """A call to the owner from a thread off the loop (start-up, ``build``)."""
        return asyncio.run_coroutine_threadsafe(self.link.call(op, args), self._loop).result()

    # -- building (blocking; worker threads) ---------------------------------------------------
    def load(self) -> None:
        """Start-up: mirror every model and pipeline the owner has, failed ones as failed."""
        asyncio.run_coroutine_threadsafe(self.link.connect(), self._loop).result()
        catalog = self._ask("catalog")
        for name, folder in catalog["models"].items():
            entry = self.models[name] = ModelEntry(name, Path(folder))
            try:
                entry.serving = self.build(name, entry.folder)
            except Exception as exc:
                self._failed(entry, exc)
        for name, folder in catalog["pipelines"].items():
            pipeline = self.pipelines[name] = PipelineEntry(name, Path(folder))
            try:
                self._adoption.read_and_adopt(pipeline)
            except ConfigError as exc:
                log.error("load failed: %s", exc)

    def start(self) -> None:
        super().start()
        self.link.notify("ready")

    def build(
        self, name: str, folder: Path, override: dict[str, Any] | None = None
    ) -> dict[int, LoadedModel]:
        """The owner's serving versions of ``name`` (its config already has ``override``)."""
        description: Description = self._ask("describe", name)
        if description.kind != "model":
            raise ConfigError(f"model {name!r} is not loaded")
        if not description.versions:
            raise ConfigError(description.error or f"model {name!r} has no version serving")
        built: dict[int, LoadedModel] = {}
        for version, view in description.versions.items():
            sessions = [
                RemoteSession(self.link.path, view.token, instance, each)
                for instance, each in enumerate(view.sessions)
            ]
            observer = self._observer.batch_observer(name) if self._observer else None
            built[version] = mirror_model(
                Path(view.folder),
                view.config,
                view.labels,
                version=version,
                settings=self.settings,
                sessions=sessions,
                observer=observer,
            )
        return built

    # -- the model set: the owner's ------------------------------------------------------------
    async def load_model(
        self, name: str, override: dict[str, Any] | None = None
    ) -> ModelEntry | PipelineEntry:
        """A load asked of this worker: done by the owner, then mirrored here."""
        await self.link.call("load", (name, override))
        entry = await self.sync(name)
        if entry is None:
            raise LoadFailedError(f"model {name!r} was unloaded while it loaded")
        return entry

    async def unload_model(self, name: str) -> None:
        await self.link.call("unload", name)
        await self.sync(name)

    async def sync(self, name: str) -> ModelEntry | PipelineEntry | None:
        """Serve what the owner serves under ``name`` now."""
        description: Description = await self.link.call("describe", name)
        if description.kind is None:
            if name in self.models or name in self.pipelines:
                await super().unload_model(name)
            return None
        if description.kind == "pipeline":
            return await super().load_pipeline(name, Path(description.folder))
        entry = self.models.get(name)
        tokens = {view.token for view in description.versions.values()}
        if entry is not None and tokens and tokens == _tokens(entry):
            return entry  # already the owner's serving set
        return await super().load_model(name)

    async def watch(self) -> None:
        while True:
            name, number = await self.link.changes.get()
            try:
                await self.sync(name)
            except (LoadFailedError, ModelNotFoundError, NotReadyError):
                pass  # logged where it happened; the entry says why
            except Exception:
                log.exception("worker %d: could not follow the owner's %s", self.link.index, name)
            self.link.notify("followed", number)

    async def _retire(self, model: LoadedModel) -> None:
        await super()._retire(model)
        if isinstance(model.session, RemoteSession):
            self.link.notify("release", model.session.token)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        await super().stop(drain_timeout_s)
        with contextlib.suppress(Exception):
            self.link.close()


def _tokens(entry: ModelEntry) -> set[int]:
    return {
        model.session.token
        for model in entry.serving.values()
        if isinstance(model.session, RemoteSession)
    }
