"""Inference: raw inputs through a LoadedModel — prepare, batch, run, finish — within a deadline.

Routes (and pipelines of models) call this; it knows nothing of HTTP. For each input:
``processor.prepare`` in the worker pool (or on the loop when it is cheap) → the model's
``DynamicBatcher`` → ``processor.finish`` in the pool (or on the loop when it is cheap). A lone
input that finds its model idle runs all three as one job on the model thread
(``DynamicBatcher.run_alone``): one thread hop instead of three, and the batch would have held
it alone anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service.errors import PayloadTooLargeError, ValidationFailedError
from service.runtime.batcher import BatchResult, DisconnectCheck
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelRegistry
from service.settings import Settings
from service.tasks.base import Feeds, Outputs, TaskProcessor
from service.tasks.embedding import EmbedParams, EmbedProcessor, TextMeta

T = TypeVar("T")
MetaT = TypeVar("MetaT")
ParamsT = TypeVar("ParamsT")
ResultT = TypeVar("ResultT")


@dataclass
class Budget:
    """One request's deadline (event-loop time), its disconnect check, and the timing of the
    runs it took part in (the route turns these into response headers)."""

    deadline: float
    is_disconnected: DisconnectCheck | None = None
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    model_version: int | None = None
    on_model: Callable[[str], None] | None = None  # told the model's name once it is found

    def timed(self, result: BatchResult[Any]) -> None:
        self.queue_ms = max(self.queue_ms, result.queue_ms)
        self.inference_ms = max(self.inference_ms, result.inference_ms)
        self.batch_sizes.append(result.batch_size)


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

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str | None, task: str | None, version: int | None, budget: Budget
    ) -> AsyncIterator[LoadedModel]:
        """The model to run on (the task's default when ``name`` is None), held until the
        block ends so that a reload or unload meanwhile lets this request finish on it."""
        async with self.registry.lease(name, task, version) as model:
            budget.model_version = model.version
            if budget.on_model is not None:
                budget.on_model(model.name)
            yield model

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def submit(self, model: LoadedModel, feeds: Feeds, budget: Budget) -> Outputs:
        """One prepared item through the model's batcher."""
        budget.model_version = model.version
        result = await model.batcher.submit(feeds, budget.deadline, budget.is_disconnected)
        budget.timed(result)
        return result.value

    async def _alone(
        self, model: LoadedModel, job: Callable[[Callable[[Feeds], Outputs]], T], budget: Budget
    ) -> T:
        budget.model_version = model.version
        value, timing = await model.batcher.run_alone(job, budget.deadline)
        budget.timed(timing)
        return value

    async def run(
        self,
        model: LoadedModel,
        processor: TaskProcessor[T, MetaT, ParamsT, ResultT],
        raws: Sequence[T],
        params: ParamsT,
        budget: Budget,
    ) -> list[ResultT]:
        """Each raw input: prepare → batcher → finish; results in input order."""
        if len(raws) == 1 and processor.runs_alone(raws[0]) and model.batcher.idle:
            raw = raws[0]

            def job(run_one: Callable[[Feeds], Outputs]) -> ResultT:
                feeds, meta = processor.prepare(raw)
                return processor.finish(run_one(feeds), meta, params)

            return [await self._alone(model, job, budget)]

        inline = processor.prepare_inline(raws)

        async def one(raw: T) -> ResultT:
            if inline:
                feeds, meta = processor.prepare(raw)
            else:
                feeds, meta = await self.in_pool(processor.prepare, raw)
            outputs = await self.submit(model, feeds, budget)
            if processor.finish_inline:
                return processor.finish(outputs, meta, params)
            return await self.in_pool(processor.finish, outputs, meta, params)

        return await gather_or_cancel([one(raw) for raw in raws])

    async def embed(
        self,
        name: str | None,
        version: int | None,
        texts: Sequence[str],
        params: EmbedParams,
        budget: Budget,
        *,
        truncate: bool,
        field: str = "inputs",
    ) -> Embedded:
        """Check the text limits, tokenize the request's texts in one call, run each through
        the batcher and pool it. ``field`` names the request field in error messages (``inputs``
        for /embed, ``input`` for OpenAI's API)."""
        self._check_texts(texts, field)
        async with self.lease(name, "embed", version, budget) as model:
            return await self._embed(model, texts, params, budget, truncate)

    async def _embed(
        self,
        model: LoadedModel,
        texts: Sequence[str],
        params: EmbedParams,
        budget: Budget,
        truncate: bool,
    ) -> Embedded:
        processor = model.processor_as(EmbedProcessor)
        if processor.prepare_inline(texts):
            encoded = processor.encode(texts, truncate=truncate)
        else:
            encoded = await self.in_pool(lambda: processor.encode(texts, truncate=truncate))

        def finish(outputs: Outputs, meta: TextMeta) -> np.ndarray:
            return processor.finish(outputs, meta, params).vector

        if len(encoded) == 1 and model.batcher.idle:
            [(feeds, meta)] = encoded
            vectors = [
                await self._alone(model, lambda run_one: finish(run_one(feeds), meta), budget)
            ]
        else:

            async def one(feeds: Feeds, meta: TextMeta) -> np.ndarray:
                return finish(await self.submit(model, feeds, budget), meta)

            vectors = await gather_or_cancel([one(feeds, meta) for feeds, meta in encoded])
        tokens = sum(meta.tokens for _, meta in encoded)
        return Embedded(model.name, model.version, vectors, tokens)

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
        self, model: LoadedModel, items: Sequence[Feeds], budget: Budget
    ) -> list[Outputs]:
        """Raw tensors (Open Inference Protocol): each item straight to the batcher."""
        return await gather_or_cancel([self.submit(model, item, budget) for item in items])
