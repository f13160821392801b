"""The registry's entries and how a request finds its model in them.

Every model name has a ``ModelEntry``: its serving versions (immutable ``LoadedModel``s) and how
its last load went; every pipeline a ``PipelineEntry`` (``service.runtime.pipelines``).
``Lookup`` holds both tables and answers a request's question — which model, which version,
ready or not — with the service's errors (404, 400, 503). It changes nothing: loading,
reloading and unloading are ``ModelRegistry``'s (``service.runtime.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from service.errors import BadRequestError, ModelNotFoundError, NotReadyError
from service.model_config import ModelConfig
from service.runtime.model import LoadedModel
from service.runtime.pipelines import Fingerprint, PipelineEntry
from service.settings import Settings

Status = Literal["loading", "ready", "failed"]


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


class Lookup:
    """The model and pipeline tables, and the lookups a request makes in them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}
        self.pipelines: dict[str, PipelineEntry] = {}

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
