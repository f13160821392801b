"""Pipelines in the registry: a ``PipelineEntry`` per pipeline folder, and its binding to the
models it names.

A pipeline has no ONNX session, batcher or versions of its own: it is a validated config whose
steps name models of the same repository. Its *binding* says whether it can serve now, and is
recomputed whenever the model set changes (a load, a reload, an unload, a poll scan), so a
pipeline follows its models:

- a step naming a model the repository does not have, or a model of another task, is refused
  (``ConfigError`` naming the field: ``steps.0.model``); the pipeline is ``failed`` until the
  model set changes so that it is right;
- a step model still loading (or, in poll mode, whose folder is there but not loaded yet) makes
  the pipeline ``loading``: it serves as soon as its models do;
- a step model that failed to load, or (explicit mode) is not loaded, makes it ``failed``.

Requests lease the step models themselves (``ModelRegistry.lease``), so a reload of a model
under a running pipeline request lets that request finish on the version it started with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from service.model_config import ConfigError, PipelineConfig

Status = Literal["loading", "ready", "failed"]
# a folder's files as (relative path, size, mtime), as the registry's poll mode compares them
Fingerprint = tuple[tuple[str, int, int], ...]


class StepModel(Protocol):
    """What a binding reads of a model's registry entry (``ModelEntry``)."""

    @property
    def task(self) -> str | None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def status(self) -> str: ...

    @property
    def serving(self) -> Mapping[int, Any]: ...


@dataclass(frozen=True)
class Binding:
    """Whether a pipeline's models let it serve: ``steps`` are their entries (in step order)
    when it can; ``problem`` says why not (names the field and the model, nothing internal)."""

    status: Status
    problem: str | None = None
    steps: tuple[StepModel, ...] = ()


@dataclass
class PipelineEntry:
    """The registry's record of one pipeline. Changed on the event loop only."""

    name: str
    folder: Path
    config: PipelineConfig | None = None  # what it serves (or will, once its models do)
    load_error: str | None = None  # why the last load of its folder failed (config kept)
    binding: Binding = field(default_factory=lambda: Binding("loading"))
    attempted: Fingerprint | None = None  # the files the last load (good or bad) read

    @property
    def status(self) -> Status:
        return "failed" if self.config is None else self.binding.status

    @property
    def error(self) -> str | None:
        problems = [p for p in (self.binding.problem, self.load_error) if p]
        return "; ".join(dict.fromkeys(problems)) or None

    @property
    def ready(self) -> bool:
        return (
            self.config is not None
            and self.binding.status == "ready"
            and all(step.ready for step in self.binding.steps)
        )

    @property
    def serving(self) -> dict[int, PipelineConfig]:
        """As a model's serving versions: a pipeline is one unversioned config (version 1)."""
        return {1: self.config} if self.config is not None else {}


def bind(
    name: str,
    config: PipelineConfig,
    models: Mapping[str, StepModel],
    folder_task: Callable[[str], str | None],
    *,
    waits_for_folders: bool,
) -> Binding:
    """Check the steps' models against the registry's ``models`` (and, for a model not loaded,
    the task its folder's config declares: ``folder_task``); raises ``ConfigError`` naming the
    field for a model that does not exist or serves another task. ``waits_for_folders``: a
    model folder not loaded yet will be (poll mode), so the pipeline is loading, not failed."""
    steps: list[StepModel] = []
    failing: str | None = None
    waiting: str | None = None
    for index, step in config.model_steps():
        where = f"pipeline {name!r}: field steps.{index}.model"
        entry = models.get(step.model)
        task = entry.task if entry is not None else None
        if task is None:
            task = folder_task(step.model)
        if task is None:
            raise ConfigError(f"{where}: no model {step.model!r} in the repository")
        if task != step.task:
            raise ConfigError(
                f"{where}: model {step.model!r} serves task {task!r}; "
                f"a {step.step} step needs a {step.task} model"
            )
        if entry is None:
            if waits_for_folders:
                waiting = waiting or f"{where}: model {step.model!r} is not loaded yet"
            else:
                failing = failing or f"{where}: model {step.model!r} is not loaded"
        elif entry.status == "failed" and not entry.serving:
            failing = failing or f"{where}: model {step.model!r} failed to load"
        elif entry.status == "loading":
            waiting = waiting or f"{where}: model {step.model!r} is still loading"
        else:
            steps.append(entry)
    if failing is not None:
        return Binding("failed", failing)
    if waiting is not None:
        return Binding("loading", waiting)
    return Binding("ready", None, tuple(steps))
