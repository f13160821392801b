"""Inference: raw inputs through a LoadedModel — prepare, batch, run, finish — within a deadline.

Routes call this; it knows nothing of HTTP. For each input:
``processor.prepare`` in the worker pool (or on the loop when it is cheap) → the model's
``DynamicBatcher`` → ``processor.finish`` in the pool (or on the loop when it is cheap). A lone
input that finds its model idle runs all three as one job on the model thread
(``DynamicBatcher.run_alone``): one thread hop instead of three, and the batch would have held
it alone anyway. ``run`` (a task's raw inputs) and ``embed`` (texts, tokenized together first)
both go through ``_each``, the one place that makes that choice.

``pipeline`` runs a detect → crop → classify pipeline through ``service.pipeline_run``, each
model stage being ``run`` on that stage's model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from service import tracing
from service.context import RequestContext
from service.errors import PayloadTooLargeError, ValidationFailedError
from service.pipeline_run import STAGE_HEADER, PipelineExecutor, PipelineRun, StageRun, in_stage
from service.runtime.entries import Lease
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelRegistry
from service.settings import Settings
from service.tasks.base import Feeds, Outputs, TaskProcessor
from service.tasks.embedding import EmbedParams, EmbedProcessor
from service.tasks.pipeline import PipelineOptions

log = logging.getLogger(__name__)

T = TypeVar("T")
MetaT = TypeVar("MetaT")
ParamsT = TypeVar("ParamsT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Embedded:
    model: str
    version: int
    vectors: list[np.ndarray]  # float32[D] each, in input order
    tokens: int  # real tokens over all texts, specials included, after truncation


async def gather_or_cancel(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Like ``asyncio.gather`` but cancels the siblings as soon as one fails."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Inference:
    def __init__(self, registry: ModelRegistry, pool: Executor, settings: Settings) -> None:
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self._pipelines = PipelineExecutor(registry, self.run)

    def lease(
        self, name: str | None, task: str | None, version: int | None, ctx: RequestContext
    ) -> Lease:
        """The model to run on (the task's default when ``name`` is None), held until the
        block ends so that a reload or unload meanwhile lets this request finish on it."""
        lease = self.registry.lease(name, task, version)
        ctx.model_version = lease.model.version
        if ctx.on_model is not None:
            ctx.on_model(lease.model.name)
        return lease

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def render(self, draw: Callable[[], bytes], media_format: str) -> bytes:
        """A picture of the results (``render=true``), drawn in the pool."""
        with tracing.span("render", {"ortserve.render.format": media_format}):
            return await self.in_pool(draw)

    async def submit(self, model: LoadedModel, feeds: Feeds, ctx: RequestContext) -> Outputs:
        """One prepared item through the model's batcher."""
        ctx.model_version = model.version
        queued_ns = tracing.now_ns()
        try:
            result = await model.batcher.submit(feeds, ctx.deadline, ctx.is_disconnected)
        except Exception as exc:  # full (429), deadline (504), client gone (499), failed run
            tracing.interval("queue", queued_ns, error=exc)
            raise
        # the wait ended when its batch started; the batch's own span, linked, has the run
        tracing.interval(
            "queue",
            queued_ns,
            queued_ns + int(result.queue_ms * 1e6),
            link=result.trace,
            attributes={"ortserve.batch.size": result.batch_size},
        )
        ctx.timed(result)
        return result.value

    async def _alone(
        self,
        model: LoadedModel,
        job: Callable[[Callable[[Feeds], Outputs]], T],
        ctx: RequestContext,
    ) -> T:
        ctx.model_version = model.version
        value, timing = await model.batcher.run_alone(job, ctx.deadline)
        ctx.timed(timing)
        return value

    async def run(
        self,
        model: LoadedModel,
        processor: TaskProcessor[T, MetaT, ParamsT, ResultT],
        raws: Sequence[T],
        params: ParamsT,
        ctx: RequestContext,
    ) -> list[ResultT]:
        """Each raw input: prepare → batcher → finish; results in input order."""
        model.batcher.admit(len(raws))  # a 429 now, not after decoding every input
        return await self._each(
            model,
            raws,
            processor.prepare,
            lambda outputs, meta: processor.finish(outputs, meta, params),
            ctx,
            alone=len(raws) == 1 and processor.runs_alone(raws[0]),
            prepare_inline=processor.prepare_inline,
            finish_inline=processor.finish_inline,
        )

    async def _each(
        self,
        model: LoadedModel,
        items: Sequence[T],
        prepare: Callable[[T], tuple[Feeds, MetaT]] | None,
        finish: Callable[[Outputs, MetaT], ResultT],
        ctx: RequestContext,
        *,
        alone: bool,
        prepare_inline: Callable[[Sequence[T]], bool],
        finish_inline: bool,
    ) -> list[ResultT]:
        """Each item: ``prepare`` → batcher → ``finish``; results in input order. ``alone``: a
        lone item that may run on the model thread — if the model is idle, all three run there
        as one job. ``prepare`` None: the items are ``(feeds, meta)`` already (``embed``)."""
        if alone and len(items) == 1 and model.batcher.idle:
            item = items[0]
            traced = tracing.current()  # the job runs on the model thread: spans need a parent

            def job(run_one: Callable[[Feeds], Outputs]) -> ResultT:
                feeds, meta = _prepared(item, prepare, traced)
                outputs = run_one(feeds)
                with tracing.span("finish", parent=traced):
                    return finish(outputs, meta)

            return [await self._alone(model, job, ctx)]

        in_pool = prepare is not None and not prepare_inline(items)

        async def one(item: T) -> ResultT:
            if in_pool and prepare is not None:
                with tracing.span("prepare"):
                    feeds, meta = await self.in_pool(prepare, item)
            else:
                feeds, meta = _prepared(item, prepare, None)
            outputs = await self.submit(model, feeds, ctx)
            with tracing.span("finish"):
                if finish_inline:
                    return finish(outputs, meta)
                return await self.in_pool(finish, outputs, meta)

        return await gather_or_cancel([one(item) for item in items])

    async def embed(
        self,
        name: str | None,
        version: int | None,
        texts: Sequence[str],
        params: EmbedParams,
        ctx: RequestContext,
        *,
        truncate: bool,
        field: str = "inputs",
    ) -> Embedded:
        """Check the text limits, tokenize the request's texts in one call, run each through
        the batcher and pool it. ``field`` names the request field in error messages (``inputs``
        for /embed, ``input`` for OpenAI's API)."""
        self._check_texts(texts, field)
        async with self.lease(name, "embed", version, ctx) as model:
            return await self._embed(model, texts, params, ctx, truncate)

    async def _embed(
        self,
        model: LoadedModel,
        texts: Sequence[str],
        params: EmbedParams,
        ctx: RequestContext,
        truncate: bool,
    ) -> Embedded:
        processor = model.processor_as(EmbedProcessor)
        model.batcher.admit(len(texts))  # a 429 before tokenizing, not after
        with tracing.span("tokenize", {"ortserve.texts": len(texts)}):
            if processor.prepare_inline(texts):
                encoded = processor.encode(texts, truncate=truncate)
            else:
                encoded = await self.in_pool(lambda: processor.encode(texts, truncate=truncate))
        vectors = await self._each(
            model,
            encoded,
            None,  # tokenized together above, in one call
            lambda outputs, meta: processor.finish(outputs, meta, params).vector,
            ctx,
            alone=True,
            prepare_inline=_always,
            finish_inline=processor.finish_inline,
        )
        tokens = sum(meta.tokens for _, meta in encoded)
        return Embedded(model.name, model.version, vectors, tokens)

    async def pipeline(
        self, name: str, raws: Sequence[bytes], options: PipelineOptions, ctx: RequestContext
    ) -> PipelineRun:
        """Images through the pipeline ``name`` (``service.pipeline_run``)."""
        return await self._pipelines.pipeline(name, raws, options, ctx)

    def _check_texts(self, texts: Sequence[str], field: str) -> None:
        limits = self.settings
        if len(texts) > limits.max_texts_per_request:
            raise PayloadTooLargeError(
                f"at most {limits.max_texts_per_request} texts per request "
                "(ORTSERVE_MAX_TEXTS_PER_REQUEST)"
            )
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValidationFailedError(f"{field}[{index}] is empty or only whitespace")
            if len(text) > limits.max_text_chars:
                raise PayloadTooLargeError(
                    f"{field}[{index}] has {len(text)} characters; the limit is "
                    f"{limits.max_text_chars}"
                )

    async def tensors(
        self, model: LoadedModel, items: Sequence[Feeds], ctx: RequestContext
    ) -> list[Outputs]:
        """Raw tensors (Open Inference Protocol): each item straight to the batcher."""
        if len(items) == 1:  # one row: no tasks to gather
            return [await self.submit(model, items[0], ctx)]
        return await gather_or_cancel([self.submit(model, item, ctx) for item in items])


def _prepared(
    item: T, prepare: Callable[[T], tuple[Feeds, MetaT]] | None, parent: tracing.Context | None
) -> tuple[Feeds, MetaT]:
    """``item`` prepared (in a ``prepare`` span), or as it is when it already is."""
    if prepare is None:
        return cast(tuple[Feeds, MetaT], item)
    with tracing.span("prepare", parent=parent):
        return prepare(item)


def _always(_: Sequence[Any]) -> bool:
    return True


__all__ = [
    "STAGE_HEADER",
    "Embedded",
    "Inference",
    "PipelineRun",
    "StageRun",
    "gather_or_cancel",
    "in_stage",
]
