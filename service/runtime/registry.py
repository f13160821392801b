"""ModelRegistry: the model repository as served models, and how that set changes at runtime.

A repository holds one folder per model: either a complete model folder (``config.yaml``,
``model.onnx``, ...) = version 1, or numbered version folders (``<name>/1/``, ``<name>/2/``, each
complete) of which the ``version_policy`` of the highest one's config picks those that serve.

Every model name has a ``ModelEntry``: its serving versions (immutable ``LoadedModel``s) and how
its last load went. A (re)load builds and warms the new versions off the event loop, then swaps
the entry's serving set in one assignment; requests that already hold the old versions (a
``lease``) finish on them, and each old version is stopped once its last request ends. A failed
load leaves the serving versions untouched. Control modes, as Triton's: ``none`` (the set loaded
at start-up is final), ``explicit`` (load / unload calls) and ``poll`` (the repository is
rescanned and changed folders are reloaded once they have been stable for two scans).

A folder whose config says ``task: pipeline`` is a pipeline (``service.runtime.pipelines``): a
``PipelineEntry`` beside the model entries, loaded, reloaded and unloaded by the same calls, and
bound again to its models whenever the model set changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from service.errors import BadRequestError, LoadFailedError, ModelNotFoundError, NotReadyError
from service.model_config import (
    MODEL_NAME_PATTERN,
    ConfigError,
    ModelConfig,
    PipelineConfig,
    config_task,
    load_model_config,
    load_pipeline_config,
)
from service.runtime.batcher import BatchObserver
from service.runtime.model import LoadedModel, build_model, describe_failure
from service.runtime.pipelines import Binding, Fingerprint, PipelineEntry, bind
from service.runtime.session import SessionError, resolve_providers
from service.settings import Settings

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed"]
FolderTask = Callable[[str], str | None]  # a repository folder's declared task (None: no model)
# Fingerprint (service.runtime.pipelines): a folder's files as (relative path, size, mtime);
# equal across two scans = not being written


class LifecycleObserver(Protocol):
    """What the registry reports (``service.metrics.Metrics`` implements it)."""

    def batch_observer(self, model: str) -> BatchObserver: ...

    def model_loaded(self, model: str, versions: list[int], seconds: float) -> None: ...

    def load_failed(self, model: str) -> None: ...

    def model_unloaded(self, model: str) -> None: ...


def model_versions(folder: Path) -> dict[int, Path]:
    """``{version: folder}``: the folder itself as version 1, or its numbered version folders."""
    if (folder / "config.yaml").is_file():
        return {1: folder}
    versions: dict[int, Path] = {}
    with contextlib.suppress(OSError):
        for child in folder.iterdir():
            if child.name.isdigit() and int(child.name) > 0 and (child / "config.yaml").is_file():
                versions[int(child.name)] = child
    return versions


def repository_folders(root: Path) -> dict[str, Path]:
    """Model folders of a repository: visible folders with a config.yaml or version folders.
    Hidden ones (``.export-*`` staging folders) are never models."""
    if not root.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and model_versions(p)
    }


def is_pipeline(folder: Path) -> bool:
    """A folder whose (newest) config.yaml says ``task: pipeline``."""
    versions = model_versions(folder)
    return bool(versions) and config_task(versions[max(versions)]) == "pipeline"


def fingerprint(folder: Path) -> Fingerprint:
    files = []
    for path in sorted(folder.rglob("*")):
        with contextlib.suppress(OSError):  # a file removed while we look
            if path.is_file():
                stat = path.stat()
                files.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(files)


@dataclass
class ModelEntry:
    """The registry's record of one model name. Mutable bookkeeping, changed on the event loop
    only; ``serving`` is replaced whole, never edited, so a reader always sees one set."""

    name: str
    folder: Path
    status: Status = "loading"
    error: str | None = None  # why the last load failed (also while an older version serves)
    serving: dict[int, LoadedModel] = field(default_factory=dict)
    attempted: Fingerprint | None = None  # the files the last load (good or bad) read

    @property
    def latest(self) -> LoadedModel | None:
        return self.serving[max(self.serving)] if self.serving else None

    @property
    def config(self) -> ModelConfig | None:
        latest = self.latest
        return latest.config if latest is not None else None

    @property
    def task(self) -> str | None:
        config = self.config
        return config.task if config is not None else None

    @property
    def ready(self) -> bool:
        if self.status != "ready" or not self.serving:
            return False
        return all(model.ready for model in self.serving.values())

    def version(self, version: int | None) -> LoadedModel:
        if version is None:
            latest = self.latest
            if latest is None:
                raise NotReadyError(not_ready_message(self))
            return latest
        model = self.serving.get(version)
        if model is None:
            raise ModelNotFoundError(
                f"model {self.name!r} has no version {version} serving; "
                f"it serves {sorted(self.serving)}"
            )
        return model


class Lease:
    """A model held by one request (``async with registry.lease(...) as model``): a plain
    class, as a generator-based context manager cost more than the rest of the lookup."""

    __slots__ = ("model",)

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    async def __aenter__(self) -> LoadedModel:
        self.model.usage.acquire()
        return self.model

    async def __aexit__(self, *exc: object) -> None:
        self.model.usage.release()


def not_ready_message(entry: ModelEntry | PipelineEntry) -> str:
    """For clients: the load error itself (ONNX Runtime text, file paths) stays in the log and
    GET /v1/models. A pipeline's binding problem is our own text (a field and a model name)."""
    if isinstance(entry, PipelineEntry):
        why = entry.binding.problem if entry.config is not None else None
        if why is None:
            return f"pipeline {entry.name!r} is not ready ({entry.status}); GET /v1/models says why"
        return f"pipeline {entry.name!r} is not ready ({entry.status}): {why}"
    if entry.status == "failed":
        return f"model {entry.name!r} failed to load; GET /v1/models says why"
    if entry.status == "ready":
        return f"model {entry.name!r} is not healthy; GET /v1/models says why"
    return f"model {entry.name!r} is not ready ({entry.status})"


class ModelRegistry:
    def __init__(self, settings: Settings, observer: LifecycleObserver | None = None) -> None:
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}
        self.pipelines: dict[str, PipelineEntry] = {}
        self._observer = observer
        self._providers: list[str] | None = None
        self._load_lock = asyncio.Lock()  # one load at a time: bounded memory peaks
        self._retiring: set[asyncio.Task[None]] = set()
        self._seen: dict[str, Fingerprint | None] = {}  # poll mode: the previous scan
        self._missing: dict[str, int] = {}  # poll mode: scans a loaded model's folder was absent

    @property
    def root(self) -> Path:
        return self.settings.model_repository

    @property
    def providers(self) -> list[str]:
        if self._providers is None:
            self._providers = resolve_providers(self.settings.providers, self.settings.require_cuda)
        return self._providers

    # -- building (blocking; worker threads) ---------------------------------------------------
    def build(
        self, name: str, folder: Path, override: dict[str, Any] | None = None
    ) -> dict[int, LoadedModel]:
        """Every version the policy selects, built and warmed up (not started)."""
        versions = model_versions(folder)
        if not versions:
            raise ConfigError(
                f"model {name!r}: no config.yaml in its folder or in numbered version folders"
            )
        newest = max(versions)
        policy, _ = load_model_config(versions[newest], name, override)
        chosen = policy.selects(list(versions))
        if not chosen:
            raise ConfigError(
                f"model {name!r}: version_policy selects none of the versions {sorted(versions)}"
            )
        built: dict[int, LoadedModel] = {}
        for version in chosen:
            config, labels = load_model_config(versions[version], name, override)
            observer = self._observer.batch_observer(name) if self._observer else None
            built[version] = build_model(
                versions[version],
                config,
                labels,
                version=version,
                settings=self.settings,
                providers=self.providers,
                observer=observer,
            )
        return built

    def load(self) -> None:
        """Start-up: build the repository's models (all of them, or in explicit mode those
        ``startup_models`` names). Blocking; ``start()`` then starts their batchers."""
        if not self.root.is_dir():
            raise ConfigError(f"model repository {str(self.root)!r} is not a directory")
        self.providers  # noqa: B018 - resolve (and fail on require_cuda) before any model
        folders = repository_folders(self.root)
        if self.settings.model_control == "explicit" and "*" not in self.settings.startup_models:
            folders = {n: f for n, f in folders.items() if n in self.settings.startup_models}
        if not folders:
            log.warning("model repository %s holds no models to load", self.root)
        pipelines = {n: f for n, f in folders.items() if is_pipeline(f)}
        for name, folder in folders.items():
            if name in pipelines:
                continue  # after every model: they are checked against the models
            entry = ModelEntry(name, folder)
            self.models[name] = entry
            entry.attempted = fingerprint(folder)
            self._seen[name] = entry.attempted
            try:
                entry.serving = self.build(name, folder)
            except Exception as exc:
                entry.status, entry.error = "failed", describe_failure(name, exc)
                unexpected = not isinstance(exc, ConfigError | SessionError)
                log.error("%s", entry.error, exc_info=exc if unexpected else None)
                if self._observer:
                    self._observer.load_failed(name)
                if self.settings.strict_startup:
                    raise ConfigError(entry.error) from exc
        for name, folder in pipelines.items():
            pipeline = self.pipelines[name] = PipelineEntry(name, folder)
            pipeline.attempted = fingerprint(folder)
            self._seen[name] = pipeline.attempted
            try:
                self._load_pipeline(pipeline)
            except ConfigError as exc:
                log.error("%s", exc)
                if self._observer:
                    self._observer.load_failed(name)
                if self.settings.strict_startup:
                    raise

    def start(self) -> None:
        """Start the batchers of the models ``load`` built (on the event loop)."""
        for entry in self.models.values():
            for model in entry.serving.values():
                model.batcher.start()
            if entry.serving:
                entry.status = "ready"
                if self._observer:
                    self._observer.model_loaded(entry.name, sorted(entry.serving), 0.0)
        self._bind_pipelines()
        for pipeline in self.pipelines.values():
            if pipeline.config is not None and self._observer:
                self._observer.model_loaded(pipeline.name, [1], 0.0)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        for entry in self.models.values():
            for model in entry.serving.values():
                await model.batcher.stop(drain_timeout_s)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- runtime lifecycle (event loop) ----------------------------------------------------------
    async def load_model(
        self, name: str, override: dict[str, Any] | None = None
    ) -> ModelEntry | PipelineEntry:
        """(Re)load ``name`` from its folder, even when its files look unchanged. The new
        versions are built and warmed up off the loop and swapped in only when all of them are
        ready; on failure the serving versions stay and ``LoadFailedError`` (400) says why.
        A pipeline folder (re)loads its pipeline (``load_pipeline``)."""
        folder = await asyncio.to_thread(self._folder, name)
        if await asyncio.to_thread(is_pipeline, folder):
            return await self.load_pipeline(name, folder, override)
        async with self._load_lock:
            entry = self.models.get(name)
            if entry is None:
                entry = self.models[name] = ModelEntry(name, folder)
            files = await asyncio.to_thread(fingerprint, folder)
            entry.attempted = files
            started = time.perf_counter()
            try:
                built = await asyncio.to_thread(self.build, name, folder, override)
            except Exception as exc:
                entry.error = describe_failure(name, exc)
                if not entry.serving:
                    entry.status = "failed"
                unexpected = not isinstance(exc, ConfigError | SessionError)
                log.error("load failed: %s", entry.error, exc_info=exc if unexpected else None)
                if self._observer:
                    self._observer.load_failed(name)
                self._bind_pipelines(await self._read_folder_tasks())
                raise LoadFailedError(entry.error) from None
            folder_tasks = await self._read_folder_tasks()
            for model in built.values():
                model.batcher.start()
            retired = list(entry.serving.values())
            entry.serving, entry.folder = built, folder  # the swap: one assignment
            entry.status, entry.error = "ready", None
            if self.pipelines.pop(name, None) is not None:  # the folder was a pipeline's
                log.info("pipeline %s: replaced by a model of that name", name)
            self._bind_pipelines(folder_tasks)
            seconds = time.perf_counter() - started
            log.info(
                "model %s: serving versions %s (loaded in %.1f s)", name, sorted(built), seconds
            )
            if self._observer:
                self._observer.model_loaded(name, sorted(built), seconds)
        for model in retired:
            self._retire_soon(model)
        return entry

    async def load_pipeline(
        self, name: str, folder: Path, override: dict[str, Any] | None = None
    ) -> PipelineEntry:
        """(Re)load a pipeline from its folder: its config, checked against the models it names.
        A refused one (``LoadFailedError`` naming the field) keeps a ready older config serving;
        with none, it is recorded failed and serves once the model set makes it right."""
        async with self._load_lock:
            pipeline = self.pipelines.get(name)
            if pipeline is None:
                pipeline = self.pipelines[name] = PipelineEntry(name, folder)
            pipeline.folder = folder
            pipeline.attempted = await asyncio.to_thread(fingerprint, folder)
            try:
                try:
                    config = await asyncio.to_thread(load_pipeline_config, folder, name, override)
                except ConfigError as exc:
                    pipeline.load_error = str(exc)
                    raise
                self._adopt(pipeline, config, await self._read_folder_tasks(config))
            except ConfigError as exc:
                log.error("load failed: %s", exc)
                if self._observer:
                    self._observer.load_failed(name)
                raise LoadFailedError(str(exc)) from None
            replaced = self.models.pop(name, None)  # the folder was a model's
            log.info("pipeline %s: loaded (%s)", name, pipeline.status)
            if self._observer:
                self._observer.model_loaded(name, [1], 0.0)
        if replaced is not None:
            for model in replaced.serving.values():
                self._retire_soon(model)
            self._bind_pipelines(await self._read_folder_tasks())
        return pipeline

    def _load_pipeline(self, pipeline: PipelineEntry) -> None:
        """Start-up (blocking, before the event loop serves): read and adopt its config."""
        try:
            config = load_pipeline_config(pipeline.folder, pipeline.name)
        except ConfigError as exc:
            pipeline.load_error = str(exc)
            raise
        self._adopt(pipeline, config, self._folder_task)

    def _adopt(
        self, pipeline: PipelineEntry, config: PipelineConfig, folder_task: FolderTask
    ) -> None:
        """Bind a freshly read config and make it ``pipeline``'s. Raises ``ConfigError`` when it
        names a model that does not exist or serves another task; it is adopted anyway unless a
        ready older config serves, so that a later change of the model set can make it ready."""
        try:
            binding = self._bind(pipeline.name, config, folder_task)
        except ConfigError as exc:
            if pipeline.ready:
                pipeline.load_error = str(exc)  # the older config keeps serving
            else:
                pipeline.config, pipeline.load_error = config, None
                pipeline.binding = Binding("failed", str(exc))
            raise
        pipeline.config, pipeline.binding, pipeline.load_error = config, binding, None

    def check_pipeline(self, name: str, folder: Path) -> PipelineConfig:
        """What loading a pipeline checks, without loading any model (``ortserve models``): its
        config, and that each model it names is a folder of this repository whose config
        declares the step's task. Raises ``ConfigError`` naming the field."""
        config = load_pipeline_config(folder, name)
        bind(name, config, {}, self._folder_task, waits_for_folders=True)
        return config

    def _bind(self, name: str, config: PipelineConfig, folder_task: FolderTask) -> Binding:
        return bind(
            name,
            config,
            self.models,
            folder_task,
            waits_for_folders=self.settings.model_control == "poll",
        )

    def _bind_pipelines(self, folder_task: FolderTask | None = None) -> None:
        """Bind every pipeline again: the model set has changed. On the event loop, pass the
        folder tasks ``_read_folder_tasks`` read off it (default: read them here, blocking)."""
        for pipeline in self.pipelines.values():
            if pipeline.config is None:
                continue
            try:
                pipeline.binding = self._bind(
                    pipeline.name, pipeline.config, folder_task or self._folder_task
                )
            except ConfigError as exc:
                pipeline.binding = Binding("failed", str(exc))

    async def _read_folder_tasks(self, *extra: PipelineConfig) -> FolderTask:
        """The task each model folder named by a pipeline (and by ``extra`` configs) declares,
        read on a worker thread: binding on the event loop then reads no file (a name it did not
        read, of a pipeline added meanwhile, is read when asked for)."""
        configs = [p.config for p in self.pipelines.values() if p.config is not None]
        names = {step.model for config in [*configs, *extra] for _, step in config.model_steps()}
        tasks = await asyncio.to_thread(lambda: {n: self._folder_task(n) for n in names})
        return lambda name: tasks[name] if name in tasks else self._folder_task(name)

    def _folder_task(self, name: str) -> str | None:
        """The task the repository folder ``name`` declares (None: no such model folder)."""
        versions = model_versions(self.root / name) if not name.startswith(".") else {}
        return config_task(versions[max(versions)]) if versions else None

    async def unload_model(self, name: str) -> None:
        """Stop routing to ``name`` (404 from now on), let the requests it holds finish, then
        release its sessions. Returns once it is gone. A pipeline holds nothing: it just goes
        (its requests hold their models)."""
        async with self._load_lock:
            folder_tasks = await self._read_folder_tasks()
            pipeline = self.pipelines.pop(name, None)
            entry = self.models.pop(name, None) if pipeline is None else None
            if entry is not None:
                self._bind_pipelines(folder_tasks)
        if pipeline is not None:
            log.info("pipeline %s: unloaded", name)
            if self._observer:
                self._observer.model_unloaded(name)
            return
        if entry is None:
            raise ModelNotFoundError(f"model {name!r} is not loaded")
        await asyncio.gather(*(self._retire(m) for m in entry.serving.values()))
        log.info("model %s: unloaded", name)
        if self._observer:
            self._observer.model_unloaded(name)

    def _folder(self, name: str) -> Path:
        folder = self.root / name
        if name.startswith(".") or not folder.is_dir() or not model_versions(folder):
            raise LoadFailedError(
                f"model {name!r}: no model folder of that name in the repository "
                f"(a config.yaml, or numbered version folders with one)"
            )
        return folder

    def _retire_soon(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(model))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, model: LoadedModel) -> None:
        """Wait until no request holds ``model``, then drain and stop its batcher; the session
        goes with the last reference."""
        drain_s = self.settings.request_timeout_s + 5.0
        try:
            await asyncio.wait_for(model.usage.drained(), drain_s)
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            log.warning(
                "model %s version %d: still in use after %.0f s; stopping it",
                model.name,
                model.version,
                drain_s,
            )
        await model.batcher.stop(drain_s)
        log.info("model %s version %d: released", model.name, model.version)

    # -- poll mode -------------------------------------------------------------------------------
    async def watch(self) -> None:
        """Rescan the repository every ``repository_poll_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                await self.poll_once()
            except Exception:  # a scan must never end the watcher
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Load added or changed folders that have not changed since the previous scan; unload
        models whose folder has been absent for two scans (an export replaces a folder by two
        renames, so one scan may miss it)."""
        scanned = await asyncio.to_thread(self._scan)
        for name, files in scanned.items():
            previous = self._seen.get(name)
            self._seen[name] = files
            self._missing.pop(name, None)
            if files != previous:
                continue  # new or still being written: look again next time
            entry = self.models.get(name) or self.pipelines.get(name)
            if entry is not None and entry.attempted == files:
                continue  # what we serve (or last failed on) is what is there
            with contextlib.suppress(LoadFailedError):  # logged, counted, in /v1/models
                await self.load_model(name)
        for name in [n for n in [*self.models, *self.pipelines] if n not in scanned]:
            self._seen.pop(name, None)
            self._missing[name] = self._missing.get(name, 0) + 1
            if self._missing[name] >= 2:
                del self._missing[name]
                with contextlib.suppress(ModelNotFoundError):
                    await self.unload_model(name)

    def _scan(self) -> dict[str, Fingerprint]:
        return {name: fingerprint(folder) for name, folder in repository_folders(self.root).items()}

    # -- serving ---------------------------------------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFoundError(f"model {name!r} does not exist; GET /v1/models lists them")
        return entry

    def pipeline(self, name: str) -> PipelineEntry:
        """The pipeline a request asks for: 404 when unknown, 503 while it cannot serve."""
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            if name in self.models:
                raise ModelNotFoundError(
                    f"{name!r} is a model, not a pipeline; GET /v1/models lists the pipelines"
                )
            raise ModelNotFoundError(
                f"pipeline {name!r} does not exist; GET /v1/models lists them (task pipeline)"
            )
        if not pipeline.ready:
            raise NotReadyError(not_ready_message(pipeline))
        return pipeline

    def get(self, name: str | None, task: str | None, version: int | None = None) -> LoadedModel:
        """The model a request asks for (the task's default when ``name`` is None): 404 when
        unknown, 400 for another task's model (``task`` None: any task), 503 while it is not
        ready."""
        if name is None:
            if task is None:
                raise BadRequestError("name a model")
            name = self.default_for(task)
        entry = self.entry(name)
        if task is not None and entry.task is not None and entry.task != task:
            raise BadRequestError(f"model {name!r} serves task {entry.task!r}, not {task!r}")
        if not entry.ready:
            raise NotReadyError(not_ready_message(entry))
        return entry.version(version)

    def lease(self, name: str | None, task: str | None, version: int | None = None) -> Lease:
        """``get``, holding the model for an ``async with`` block: a reload or unload meanwhile
        lets the request finish on the version it started with."""
        return Lease(self.get(name, task, version))

    def default_for(self, task: str) -> str:
        preferred = self.settings.default_model(task)
        if preferred in self.models:
            return preferred
        for entry in self.models.values():
            if entry.task == task and entry.status != "failed":
                return entry.name
        if self.settings.model_control == "poll":
            # a repository that is still being filled (``make serve`` builds the slow defaults
            # in the background): the default is on its way, not missing
            raise NotReadyError(
                f"the default {task} model {preferred!r} is not in the repository yet; if it is "
                "being built, it serves as soon as it lands (no restart needed)"
            )
        raise ModelNotFoundError(f"no model serves task {task!r} in this repository")


__all__ = [
    "MODEL_NAME_PATTERN",
    "ModelEntry",
    "ModelRegistry",
    "PipelineEntry",
    "not_ready_message",
]
