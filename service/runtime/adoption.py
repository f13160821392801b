"""Pipeline adoption: a pipeline config made a ``PipelineEntry``'s, and every pipeline bound
again to the registry's models whenever that set changes.

``service.runtime.pipelines`` decides what one binding is (``bind``); this module keeps the
registry's pipelines bound: it reads the tasks the model folders they name declare (off the
event loop once it serves), adopts a freshly read config (or keeps a ready older one serving),
and rebinds them all after a model load, failed load or unload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from service.model_config import ConfigError, PipelineConfig, load_pipeline_config
from service.runtime.entries import ModelEntry
from service.runtime.pipelines import Binding, PipelineEntry, bind
from service.runtime.repository import folder_task
from service.settings import Settings

FolderTask = Callable[[str], str | None]  # a repository folder's declared task (None: no model)


class PipelineAdoption:
    """Binds the pipelines of ``pipelines`` to the models of ``models`` (the registry's own
    tables, shared, not copied)."""

    def __init__(
        self,
        settings: Settings,
        models: Mapping[str, ModelEntry],
        pipelines: Mapping[str, PipelineEntry],
    ) -> None:
        self.settings = settings
        self._models = models
        self._pipelines = pipelines

    def folder_task(self, name: str) -> str | None:
        """The task the repository folder ``name`` declares (None: no such model folder)."""
        return folder_task(self.settings.model_repository, name)

    def read_and_adopt(self, pipeline: PipelineEntry) -> None:
        """Start-up (blocking, before the event loop serves): read and adopt its config."""
        try:
            config = load_pipeline_config(pipeline.folder, pipeline.name)
        except ConfigError as exc:
            pipeline.load_error = str(exc)
            raise
        self.adopt(pipeline, config, self.folder_task)

    def adopt(
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

    def check(self, name: str, folder: Path) -> PipelineConfig:
        """What loading a pipeline checks, without loading any model (``ortserve models``): its
        config, and that each model it names is a folder of this repository whose config
        declares the step's task. Raises ``ConfigError`` naming the field."""
        config = load_pipeline_config(folder, name)
        bind(name, config, {}, self.folder_task, waits_for_folders=True)
        return config

    def _bind(self, name: str, config: PipelineConfig, folder_task: FolderTask) -> Binding:
        return bind(
            name,
            config,
            self._models,
            folder_task,
            waits_for_folders=self.settings.model_control == "poll",
        )

    def rebind(self, folder_task: FolderTask | None = None) -> None:
        """Bind every pipeline again: the model set has changed. On the event loop, pass the
        folder tasks ``read_folder_tasks`` read off it (default: read them here, blocking)."""
        for pipeline in self._pipelines.values():
            if pipeline.config is None:
                continue
            try:
                pipeline.binding = self._bind(
                    pipeline.name, pipeline.config, folder_task or self.folder_task
                )
            except ConfigError as exc:
                pipeline.binding = Binding("failed", str(exc))

    async def read_folder_tasks(self, *extra: PipelineConfig) -> FolderTask:
        """The task each model folder named by a pipeline (and by ``extra`` configs) declares,
        read on a worker thread: binding on the event loop then reads no file (a name it did not
        read, of a pipeline added meanwhile, is read when asked for)."""
        configs = [p.config for p in self._pipelines.values() if p.config is not None]
        names = {step.model for config in [*configs, *extra] for _, step in config.model_steps()}
        tasks = await asyncio.to_thread(lambda: {n: self.folder_task(n) for n in names})
        return lambda name: tasks[name] if name in tasks else self.folder_task(name)
