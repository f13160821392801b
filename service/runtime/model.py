"""LoadedModel: one version of one model, ready to serve, and ``build_model``, which makes it.

A LoadedModel is immutable: loading builds a new one and the registry swaps it in whole. Its
only moving parts are the batcher's queue and ``usage``, the count of requests holding it, which
lets a replaced version finish what it already accepted before it is stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from service.errors import BadRequestError
from service.model_config import ConfigError, ModelConfig, inside
from service.runtime.batcher import BatchObserver, BatchRunner, DynamicBatcher
from service.runtime.limits import check_load
from service.runtime.session import (
    OPENVINO,
    OrtSession,
    Provider,
    Session,
    SessionError,
    cores_per_session,
    runtime_providers,
)
from service.runtime.validate import complete_from_graph, validate_against_graph, warmup_feeds
from service.runtime_config import CpuProvider, OpenVINOProvider, RuntimeConfig
from service.settings import Settings
from service.task_table import task_spec
from service.tasks.base import Feeds, Outputs
from service.tasks.factory import Processor, processor_for

log = logging.getLogger(__name__)
P = TypeVar("P")


class Usage:
    """How many requests hold a model right now, and how many worker processes mirror it
    (``holds``: their requests run on this process's sessions); ``drained`` waits until
    neither does."""

    def __init__(self) -> None:
        self.count = 0
        self.holds = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self) -> None:
        self.count += 1
        self._idle.clear()

    def release(self) -> None:
        self.count -= 1
        self._settle()

    def hold(self) -> None:
        self.holds += 1
        self._idle.clear()

    def unhold(self) -> None:
        self.holds -= 1
        self._settle()

    def _settle(self) -> None:
        if self.count == 0 and self.holds == 0:
            self._idle.set()

    async def drained(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True)
class LoadedModel:
    """One serving version: its config, ONNX session(s) (one per instance; ``session`` is the
    first), task processor and batcher."""

    name: str
    version: int
    folder: Path
    config: ModelConfig
    labels: tuple[str, ...]
    session: Session
    processor: Processor
    batcher: DynamicBatcher[Feeds, Outputs]
    usage: Usage = field(default_factory=Usage, compare=False)
    sessions: tuple[Session, ...] = field(default=(), compare=False)

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def ready(self) -> bool:
        return self.batcher.healthy

    def processor_as(self, kind: type[P]) -> P:
        """The processor as the type a caller needs (a 400 for a model of another kind)."""
        if not isinstance(self.processor, kind):
            raise BadRequestError(f"model {self.name!r} cannot serve this request")
        return self.processor


Runner = Callable[[list[Feeds]], list[Outputs]]


class ShapeGroups:
    """A batch of rows that nothing pads (``TaskSpec.group_by_shape``) as one run per distinct
    set of input shapes, so rows of different requests with different variable axes are never
    stacked together; the outputs come back in the rows' order."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def __call__(self, items: list[Feeds]) -> list[Outputs]:
        groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
        for index, item in enumerate(items):
            key = tuple((name, value.shape) for name, value in item.items())
            groups.setdefault(key, []).append(index)
        if len(groups) == 1:
            return self._runner(items)
        results: list[Outputs] = [{} for _ in items]
        for group in groups.values():
            for index, out in zip(group, self._runner([items[i] for i in group]), strict=True):
                results[index] = out
        return results


def open_session(
    path: Path, config: ModelConfig, settings: Settings, providers: list[str]
) -> OrtSession:
    """One of the model's sessions: its ``runtime:`` block where it has one, else the global
    settings (``providers`` resolved from ORTSERVE_PROVIDERS). With several instances and the
    default threads setting (0, one per core), each session gets its share of the cores."""
    runtime = config.runtime
    if runtime is None and OPENVINO in providers:
        # ORTSERVE_PROVIDERS=openvino: the block's defaults, so it gets the same options
        runtime = RuntimeConfig(providers=[OpenVINOProvider(name="openvino")])
    cpu = runtime.cpu() if runtime is not None else CpuProvider(name="cpu")
    threads = settings.intra_op_threads if cpu.intra_op_threads is None else cpu.intra_op_threads
    spinning = settings.ort_allow_spinning if cpu.allow_spinning is None else cpu.allow_spinning
    if config.batching.instances > 1:  # OpenVINO's thread count defaults to this share too
        threads = cores_per_session(threads, config.batching.instances)
    chosen: list[Provider] = list(providers)
    if runtime is not None:
        chosen = runtime_providers(
            runtime,
            path,
            inputs=[(t.name, t.dims) for t in config.inputs],
            max_batch_size=config.batching.max_batch_size,
            cpu_threads=threads,
            model_name=config.name,
            cache_root=settings.caches,
        )
    try:
        return OrtSession(
            path,
            providers=chosen,
            require_cuda=settings.require_cuda,
            intra_op_threads=threads,
            allow_spinning=spinning,
            spin_between_runs=settings.ort_spin_between_runs,
            cpu_arena=settings.ort_cpu_arena,
        )
    except SessionError as exc:
        raise SessionError(f"model {config.name!r}: {exc}") from exc


def build_model(
    folder: Path,
    config: ModelConfig,
    labels: Sequence[str],
    *,
    version: int,
    settings: Settings,
    providers: list[str],
    observer: BatchObserver | None = None,
) -> LoadedModel:
    """Limits → session → graph check → processor → warm-up at the largest batch the batcher
    will form.

    Blocking (seconds for a large model): call it off the event loop. Raises ``ConfigError`` or
    ``SessionError`` naming the model; the batcher is built but not started. A config over the
    server's ceilings, or whose warm-up would not fit in memory, is refused before any session
    opens (``service.runtime.limits``).
    """
    name = config.name
    model_path = inside(folder, config.model_file, model=name, field="model_file")
    if not model_path.is_file():
        raise ConfigError(f"model {name!r}: model_file {config.model_file!r} not found")
    spec = task_spec(config.task)
    check_load(config, model_path, settings)  # a graph_io config is checked again, completed
    session = open_session(model_path, config, settings, providers)
    if spec.graph_io:
        stated = config
        config = complete_from_graph(config, session)
        check_load(config, model_path, settings)
        if config.runtime is not None and config.inputs != stated.inputs:
            # the providers' options (TensorRT's profiles) are built from the inputs
            session = open_session(model_path, config, settings, providers)
    sessions = [session] + [
        open_session(model_path, config, settings, providers)
        for _ in range(config.batching.instances - 1)
    ]
    validate_against_graph(config, list(labels), session)
    processor = processor_for(folder, config, labels, max_image_pixels=settings.max_image_pixels)
    runners = _runners(config, processor, sessions)
    # warm-up at the largest batch the batcher will form, so the first request is not slow;
    # one item first, so that a graph that cannot run at all fails before the big batch is built
    feeds = warmup_feeds(config)
    largest = max(1, config.batching.max_batch_size)
    try:
        if largest > 1:
            runners[0]([feeds])
        for runner in runners:
            runner([feeds] * largest)
    except Exception as exc:
        raise SessionError(f"model {name!r}: warm-up run failed: {exc}") from exc
    log.info(
        "model %s version %d: %s/%s on %s, max_batch_size=%d, instances=%d",
        name,
        version,
        config.task,
        config.format,
        session.provider,
        config.batching.max_batch_size,
        config.batching.instances,
    )
    return _assemble(folder, config, labels, version, sessions, processor, runners, observer)


def mirror_model(
    folder: Path,
    config: ModelConfig,
    labels: Sequence[str],
    *,
    version: int,
    settings: Settings,
    sessions: Sequence[Session],
    observer: BatchObserver | None = None,
) -> LoadedModel:
    """A worker process's copy of a version the model owner built (``service.runtime.mirror``):
    the owner's config (already completed from the graph, checked and warmed up there) with a
    processor and a batcher of this process, and ``sessions`` that run on the owner's."""
    processor = processor_for(folder, config, labels, max_image_pixels=settings.max_image_pixels)
    runners = _runners(config, processor, sessions)
    return _assemble(folder, config, labels, version, sessions, processor, runners, observer)


def _runners(
    config: ModelConfig, processor: Processor, sessions: Sequence[Session]
) -> list[Runner]:
    """One batch runner per session (instance): collate → run → split."""
    group = task_spec(config.task).group_by_shape and config.batched
    runners: list[Runner] = []
    for each in sessions:
        plain = BatchRunner(
            each.run,
            batched=config.batched,
            collate=processor.collate,
            bucket_by=processor.bucket_by,
        )
        runners.append(ShapeGroups(plain) if group else plain)
    return runners


def _assemble(
    folder: Path,
    config: ModelConfig,
    labels: Sequence[str],
    version: int,
    sessions: Sequence[Session],
    processor: Processor,
    runners: list[Runner],
    observer: BatchObserver | None,
) -> LoadedModel:
    name = config.name
    batcher: DynamicBatcher[Feeds, Outputs] = DynamicBatcher(
        name,
        runners,
        max_batch_size=config.batching.max_batch_size,
        max_delay_ms=config.batching.max_delay_ms,
        max_queue_size=config.batching.max_queue_size,
        observer=observer,
        trace_attributes={
            "ortserve.model": name,
            "ortserve.model.version": version,
            "ortserve.provider": sessions[0].provider,
        },
    )
    return LoadedModel(
        name,
        version,
        folder,
        config,
        tuple(labels),
        sessions[0],
        processor,
        batcher,
        sessions=tuple(sessions),
    )


def describe_failure(name: str, exc: BaseException) -> str:
    """A load failure for the log, ``/v1/models`` and the load call's 400 body: our own errors
    already name the model and the field; anything else (a bug, an odd file) gets its type."""
    if isinstance(exc, ConfigError | SessionError):
        return str(exc)
    return f"model {name!r}: {type(exc).__name__}: {exc}"
