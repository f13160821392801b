"""Core: the operations every front end offers, as plain async calls on a ``RequestContext``.

Front ends (``service.api`` for HTTP; a gRPC one beside it) parse their wire format, ask
``begin`` for a context (which authorises the caller), call one operation, and encode what it
returns; everything between is here or below: auth, the deadline, model lookup and leases,
batching, the control mode, and ``ServiceError`` for every refusal (``service.errors`` maps each
kind onto every protocol). Nothing here imports Starlette, FastAPI or grpc.

    probes        live · ready
    metadata      server_metadata · model_metadata · model_config · model_ready · models
    repository    repository_index · load · unload            (management: an admin credential)
    inference     infer (tensors) · run (a task on raw inputs) · embed · pipeline
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from service import __version__
from service.auth import Caller, Guard
from service.context import RequestContext
from service.core.raw import RAW_INPUTS, RawOutput, outputs_for, task_params, texts_of, validated
from service.core.views import model_info, pipeline_info, status_of, triton_config, v2_metadata
from service.errors import BadRequestError, ModelNotFoundError, NotReadyError
from service.inference import Embedded, Inference, PipelineRun
from service.model_config import MODEL_NAME_PATTERN
from service.runtime.batcher import DisconnectCheck
from service.runtime.model import LoadedModel
from service.runtime.registry import (
    ModelEntry,
    ModelRegistry,
    PipelineEntry,
    not_ready_message,
    repository_folders,
)
from service.schemas.common import ModelInfo, ModelList
from service.schemas.v2 import ModelMetadata, RepositoryModel, ServerMetadata
from service.settings import Settings
from service.task_table import typed_tasks
from service.tasks.base import Feeds, Outputs, TaskProcessor
from service.tasks.embedding import EmbedParams
from service.tasks.pipeline import PipelineOptions

T = TypeVar("T")
MetaT = TypeVar("MetaT")
ParamsT = TypeVar("ParamsT")
ResultT = TypeVar("ResultT")
DecodedT = TypeVar("DecodedT")

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]
_NAME = re.compile(MODEL_NAME_PATTERN)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    models: dict[str, str]  # name → loading, ready, failed or unhealthy


@dataclass(frozen=True)
class Inferred:
    """What ``infer`` ran: the model version and the outputs of each item, in order."""

    model: LoadedModel
    outputs: list[Outputs]


class Core:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        pool: Executor,
        guard: Guard,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.guard = guard
        self.inference = Inference(registry, pool, settings)
        self.started = False  # start-up (load + warm-up) done; readiness waits for it
        # with worker processes (service.workers): until each has followed a change of the model
        # set, so that a load or unload answered means every process on the port serves it
        self.settled: Callable[[], Awaitable[None]] | None = None

    # -- contexts ------------------------------------------------------------------------------
    def begin(
        self,
        caller: Caller,
        *,
        started: float,
        timeout_s: float | None = None,
        is_disconnected: DisconnectCheck | None = None,
        protocol: str = "http",
        management: bool = False,
    ) -> RequestContext:
        """A request's context, once its caller may call the inference API (management
        operations check their own credential). ``started`` is the request's first byte in
        event-loop time; ``timeout_s`` what the client asked, which may shorten the server's
        deadline and never extend it."""
        if management:
            self.guard.management(caller)
        else:
            self.guard.inference(caller)
        budget = self.settings.request_timeout_s
        if timeout_s is not None:
            if not timeout_s > 0 or math.isnan(timeout_s):
                raise BadRequestError(
                    "the requested timeout (x-request-timeout-ms, or the gRPC deadline) must be "
                    "a positive number of milliseconds"
                )
            budget = min(budget, timeout_s)
        return RequestContext(
            started + budget, is_disconnected, caller, protocol, management=management
        )

    # -- probes (public: no context) ---------------------------------------------------------
    @staticmethod
    def live() -> bool:
        return True

    def ready(self) -> Readiness:
        """Ready once start-up is done and every model is loaded and warm. With a fixed model
        set (control none), a failed model keeps a strict server unready; a managed repository
        (poll, explicit) may hold failed or no models and still serve the rest."""
        registry = self.registry
        entries: list[ModelEntry | PipelineEntry] = [
            *registry.models.values(),
            *registry.pipelines.values(),
        ]
        models = {entry.name: status_of(entry) for entry in entries}
        fixed = self.settings.model_control == "none"
        tolerated = not (fixed and self.settings.strict_startup)
        settled = all(s == "ready" or (s == "failed" and tolerated) for s in models.values())
        ready = (
            self.started and settled and (any(s == "ready" for s in models.values()) or not fixed)
        )
        return Readiness(ready, models)

    # -- metadata ------------------------------------------------------------------------------
    @staticmethod
    def server_metadata() -> ServerMetadata:
        return ServerMetadata(name="ortserve", version=__version__, extensions=EXTENSIONS)

    def entry(self, ctx: RequestContext, name: str) -> ModelEntry:
        entry = self.registry.entry(name)
        if ctx.on_model is not None:
            ctx.on_model(entry.name)
        return entry

    def model(self, ctx: RequestContext, name: str, version: str | None) -> LoadedModel:
        """A version's model for metadata (any status but failed); the latest when None."""
        entry = self.entry(ctx, name)
        if not entry.serving:
            raise NotReadyError(not_ready_message(entry))
        return entry.version(parse_version(name, version))

    def model_metadata(
        self, ctx: RequestContext, name: str, version: str | None = None
    ) -> ModelMetadata:
        model = self.model(ctx, name, version)
        return v2_metadata(model, list(self.entry(ctx, name).serving))

    def model_config(self, ctx: RequestContext, name: str) -> dict[str, Any]:
        model = self.model(ctx, name, None)
        return triton_config(model.name, model.config)

    def model_ready(self, ctx: RequestContext, name: str, version: str | None = None) -> bool:
        entry = self.entry(ctx, name)
        wanted = parse_version(name, version)
        if wanted is None:
            return entry.ready
        model = entry.serving.get(wanted)
        if model is None and entry.status != "loading":
            raise ModelNotFoundError(f"model {name!r} has no version {wanted} serving")
        return entry.status == "ready" and model is not None and model.ready

    def models(self, ctx: RequestContext) -> ModelList:
        """Every model and pipeline with its status, IO, batching and the tasks it is the
        default for."""
        registry = self.registry
        defaults: dict[str, list[str]] = {}
        for task in typed_tasks():
            try:
                defaults.setdefault(registry.default_for(task), []).append(task)
            except (ModelNotFoundError, NotReadyError):  # a task without any model
                continue
        listed: list[ModelInfo] = [
            model_info(m, defaults.get(n, [])) for n, m in registry.models.items()
        ]
        return ModelList(models=listed + [pipeline_info(p) for p in registry.pipelines.values()])

    # -- repository (management) -------------------------------------------------------------
    def _manage(self, ctx: RequestContext) -> None:
        if not ctx.management:  # a context begun for inference: check the credential now
            self.guard.management(ctx.caller)

    def _control(self, ctx: RequestContext, action: str, allowed: tuple[str, ...]) -> None:
        self._manage(ctx)
        mode = self.settings.model_control
        if mode not in allowed:
            raise BadRequestError(
                f"{action} is refused with ORTSERVE_MODEL_CONTROL={mode}; it needs "
                f"{' or '.join(allowed)} (the model set is otherwise fixed at start-up)"
            )

    async def repository_index(
        self, ctx: RequestContext, *, ready_only: bool = False
    ) -> list[RepositoryModel]:
        self._manage(ctx)
        registry = self.registry
        folders = await asyncio.to_thread(repository_folders, registry.root)
        rows: list[RepositoryModel] = []
        for name in sorted(set(folders) | set(registry.models) | set(registry.pipelines)):
            entry = registry.models.get(name) or registry.pipelines.get(name)
            if entry is not None and entry.ready:
                rows += [
                    RepositoryModel(name=name, version=str(v), state="READY") for v in entry.serving
                ]
            elif not ready_only:
                loading = entry is not None and entry.status == "loading"
                reason = not_ready_message(entry) if entry is not None else "not loaded"
                state = "LOADING" if loading else "UNAVAILABLE"
                rows.append(RepositoryModel(name=name, state=state, reason=reason))
        return rows

    async def load(
        self, ctx: RequestContext, name: str, override: dict[str, Any] | None = None
    ) -> list[int]:
        """(Re)load ``name`` from its folder (``override`` merged over its config); the
        versions now serving."""
        self._control(ctx, "load", ("explicit", "poll"))
        if not _NAME.fullmatch(name):
            raise BadRequestError(f"{name!r} is not a valid model name")
        try:
            entry = await self.registry.load_model(name, override)
        finally:
            await self._settled()
        return sorted(entry.serving)

    async def unload(self, ctx: RequestContext, name: str) -> None:
        self._control(ctx, "unload", ("explicit",))
        try:
            await self.registry.unload_model(name)
        finally:
            await self._settled()

    async def _settled(self) -> None:
        if self.settled is not None:
            await self.settled()

    # -- inference -----------------------------------------------------------------------------
    async def infer(
        self,
        ctx: RequestContext,
        name: str,
        version: str | None,
        decode: Callable[[LoadedModel], DecodedT],
        items: Callable[[DecodedT], Sequence[Feeds]],
        *,
        inline: bool = False,
    ) -> tuple[DecodedT, Inferred]:
        """Tensors through a model (the Open Inference Protocol): ``decode`` turns the front
        end's request into the model's items once the model is known (an unknown model is a 404
        before any decoding), in the worker pool unless ``inline`` (a small request); each item
        goes through the batcher."""
        self.entry(ctx, name)
        inference = self.inference
        async with inference.lease(name, None, parse_version(name, version), ctx) as model:
            model.batcher.admit(1)  # a full queue refuses before decoding
            decoded = decode(model) if inline else await inference.in_pool(decode, model)
            outputs = await inference.tensors(model, items(decoded), ctx)
        return decoded, Inferred(model, outputs)

    async def run(
        self,
        ctx: RequestContext,
        task: str,
        name: str | None,
        version: int | None,
        raws: Sequence[T],
        params: Callable[[LoadedModel], tuple[TaskProcessor[T, MetaT, ParamsT, ResultT], ParamsT]],
    ) -> tuple[LoadedModel, list[ResultT]]:
        """Raw inputs of ``task`` (images) through a model (the task's default when ``name``
        is None): ``params`` picks the model's processor and builds the run's parameters once
        the model is known (its labels, its format)."""
        async with self.inference.lease(name, task, version, ctx) as model:
            processor, run_params = params(model)
            results = await self.inference.run(model, processor, raws, run_params, ctx)
        return model, results

    async def embed(
        self,
        ctx: RequestContext,
        name: str | None,
        version: int | None,
        texts: Sequence[str],
        params: EmbedParams,
        *,
        truncate: bool,
        field: str = "inputs",
    ) -> Embedded:
        return await self.inference.embed(
            name, version, texts, params, ctx, truncate=truncate, field=field
        )

    async def pipeline(
        self, ctx: RequestContext, name: str, raws: Sequence[bytes], options: PipelineOptions
    ) -> PipelineRun:
        return await self.inference.pipeline(name, raws, options, ctx)

    async def run_raw(
        self,
        ctx: RequestContext,
        name: str,
        version: str | None,
        items: list[bytes],
        parameters: dict[str, Any],
    ) -> tuple[str, int, list[RawOutput]]:
        """Raw inputs of a typed model over v2 (``service.core.raw``): encoded images or
        texts through the model's own processing; (model, version, outputs)."""
        task = self.entry(ctx, name).task
        if task not in RAW_INPUTS:
            raise BadRequestError(
                f"model {name!r} takes tensors only; raw inputs (image, text) need a "
                f"{', '.join(RAW_INPUTS)} model"
            )
        request: Any = validated(task, len(items), parameters)
        wanted = parse_version(name, version)
        if task == "embed":
            texts = texts_of(items)
            params = EmbedParams(normalize=request.normalize)
            embedded = await self.embed(
                ctx, name, wanted, texts, params, truncate=request.truncate, field="text"
            )
            return embedded.model, embedded.version, outputs_for(task, name, embedded)
        model, results = await self.run(
            ctx, task, name, wanted, items, lambda loaded: task_params(task, request, loaded)
        )
        return model.name, model.version, outputs_for(task, model.name, results)


def parse_version(name: str, version: str | None) -> int | None:
    if version is None:
        return None
    if not version.isdigit():
        raise ModelNotFoundError(f"model {name!r} has no version {version!r}")
    return int(version)
