"""Inference: raw inputs through a LoadedModel — prepare, batch, run, finish — within a deadline.

Routes call this; it knows nothing of HTTP. For each input:
``processor.prepare`` in the worker pool (or on the loop when it is cheap) → the model's
``DynamicBatcher`` → ``processor.finish`` in the pool (or on the loop when it is cheap). A lone
input that finds its model idle runs all three as one job on the model thread
(``DynamicBatcher.run_alone``): one thread hop instead of three, and the batch would have held
it alone anyway.

``pipeline`` runs a detect → crop → classify pipeline (``service.tasks.pipeline``): each stage is
``run`` on that stage's model, through its own batcher, so the crops of concurrent requests share
the classifier's batches. One deadline covers the whole request and is checked before each stage;
a stage's failure fails the request with the stage named.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service import tracing
from service.context import RequestContext
from service.errors import (
    DeadlineExceededError,
    InferenceFailedError,
    PayloadTooLargeError,
    ServiceError,
    ValidationFailedError,
)
from service.runtime.model import LoadedModel
from service.runtime.registry import Lease, ModelRegistry
from service.settings import Settings
from service.tasks.base import Feeds, Outputs, TaskProcessor
from service.tasks.classification import Classification, ClassifyParams, ClassifyProcessor
from service.tasks.detection import DetectProcessor, ImageDetections
from service.tasks.embedding import EmbedParams, EmbedProcessor, TextMeta
from service.tasks.imaging import DecodedImage
from service.tasks.pipeline import (
    Crop,
    CropInput,
    PipelineImage,
    PipelineOptions,
    Seen,
    WholeImage,
    assemble,
    plan_crops,
)

log = logging.getLogger(__name__)
# which stage of a pipeline failed, for clients that branch on it (the message names it too)
STAGE_HEADER = "x-pipeline-stage"

T = TypeVar("T")
MetaT = TypeVar("MetaT")
ParamsT = TypeVar("ParamsT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class StageRun:
    """One pipeline stage of one request: its model (None for crop), wall time, and the
    slowest queue wait, batch run and largest batch of its items."""

    stage: str
    model: str | None
    version: int | None
    ms: float
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_size: int = 0  # 0: no model run (crop, or no crops to classify)
    items: int = 0


@dataclass(frozen=True)
class PipelineRun:
    name: str
    images: list[PipelineImage]  # in input order
    # each image as kept for cropping (at most the working resolution, orig_w/orig_h the
    # original's), for render=true: one image only, so a larger request keeps none
    pictures: list[DecodedImage]
    stages: list[StageRun]


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
        if len(raws) == 1 and processor.runs_alone(raws[0]) and model.batcher.idle:
            raw = raws[0]
            traced = tracing.current()  # the job runs on the model thread: spans need a parent

            def job(run_one: Callable[[Feeds], Outputs]) -> ResultT:
                with tracing.span("prepare", parent=traced):
                    feeds, meta = processor.prepare(raw)
                outputs = run_one(feeds)
                with tracing.span("finish", parent=traced):
                    return processor.finish(outputs, meta, params)

            return [await self._alone(model, job, ctx)]

        inline = processor.prepare_inline(raws)

        async def one(raw: T) -> ResultT:
            with tracing.span("prepare"):
                if inline:
                    feeds, meta = processor.prepare(raw)
                else:
                    feeds, meta = await self.in_pool(processor.prepare, raw)
            outputs = await self.submit(model, feeds, ctx)
            with tracing.span("finish"):
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

        def finish(outputs: Outputs, meta: TextMeta, parent: tracing.Context | None) -> np.ndarray:
            with tracing.span("finish", parent=parent):
                return processor.finish(outputs, meta, params).vector

        if len(encoded) == 1 and model.batcher.idle:
            [(feeds, meta)] = encoded
            traced = tracing.current()  # finish runs on the model thread
            vectors = [
                await self._alone(model, lambda run_one: finish(run_one(feeds), meta, traced), ctx)
            ]
        else:

            async def one(feeds: Feeds, meta: TextMeta) -> np.ndarray:
                return finish(await self.submit(model, feeds, ctx), meta, None)

            vectors = await gather_or_cancel([one(feeds, meta) for feeds, meta in encoded])
        tokens = sum(meta.tokens for _, meta in encoded)
        return Embedded(model.name, model.version, vectors, tokens)

    async def pipeline(
        self, name: str, raws: Sequence[bytes], options: PipelineOptions, ctx: RequestContext
    ) -> PipelineRun:
        """Images through the pipeline ``name``: detect on each, crop each detection kept, the
        per-crop model on each crop (skipped when there are none). Its models are leased for the
        whole request, so a reload meanwhile never mixes versions within it."""
        pipeline = self.registry.pipeline(name)
        assert pipeline.config is not None  # registry.pipeline returns ready pipelines only
        config = pipeline.config
        if ctx.on_model is not None:
            ctx.on_model(name)
        detect, crop, per_crop = config.detect, config.crop, config.per_crop
        stages: list[StageRun] = []
        async with contextlib.AsyncExitStack() as held:
            detector = await self._hold(held, name, detect.step, detect.model, detect.task)
            classifier = await self._hold(held, name, per_crop.step, per_crop.model, per_crop.task)
            det_processor = detector.processor_as(DetectProcessor)
            cls_processor = classifier.processor_as(ClassifyProcessor)
            # both stages' queues before any decoding: a full classifier would otherwise refuse
            # this request only after its detection ran
            classifier.batcher.admit(1)
            classes = options.classes_within(detect.classes)
            confidence = detect.confidence if options.confidence is None else options.confidence

            async def detecting(stage: RequestContext) -> list[Seen[ImageDetections]]:
                params = det_processor.params(  # unknown labels: a 400 naming the stage
                    model=detector.name,
                    confidence=confidence,
                    iou=detect.iou,
                    max_detections=detect.max_detections,
                    classes=classes,
                )
                return await self.run(detector, WholeImage(det_processor), raws, params, stage)

            seen = await self._stage(name, "detect", detector, ctx, stages, detecting)
            started = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
            self._check_deadline(name, "crop", ctx)
            with tracing.span("stage crop", {"ortserve.pipeline": name, "ortserve.stage": "crop"}):
                plans = [
                    plan_crops(
                        s.result.detections,
                        s.result.width,
                        s.result.height,
                        padding=crop.padding,
                        min_size=crop.min_size,
                        max_crops=crop.max_crops,
                    )
                    for s in seen
                ]
                crops = [
                    Crop(s.picture, box)
                    for s, plan in zip(seen, plans, strict=True)
                    for box in plan.crops
                ]
            crop_ms = (time.perf_counter() - started) * 1000.0
            stages.append(StageRun("crop", None, None, crop_ms, items=len(crops)))
            top_k = per_crop.top_k if options.top_k is None else options.top_k

            async def classifying(stage: RequestContext) -> list[Classification]:
                if not crops:  # zero detections: the classifier is not called
                    return []
                return await self.run(
                    classifier, CropInput(cls_processor), crops, ClassifyParams(top_k), stage
                )

            classified = await self._stage(
                name, per_crop.step, classifier, ctx, stages, classifying
            )
        images: list[PipelineImage] = []
        offset = 0
        for s, plan in zip(seen, plans, strict=True):
            count = len(plan.crops)
            images.append(assemble(s.result, plan, classified[offset : offset + count]))
            offset += count
        pictures = [s.picture for s in seen] if len(raws) == 1 else []
        return PipelineRun(name, images, pictures, stages)

    async def _hold(
        self, held: contextlib.AsyncExitStack, pipeline: str, stage: str, model: str, task: str
    ) -> LoadedModel:
        """Lease a stage's model until ``held`` closes; a model that cannot serve (gone, not
        ready) fails the request naming the stage."""
        try:
            return await held.enter_async_context(self.registry.lease(model, task))
        except ServiceError as exc:
            raise in_stage(exc, pipeline, stage, model) from None

    def _check_deadline(self, pipeline: str, stage: str, ctx: RequestContext) -> None:
        if asyncio.get_running_loop().time() >= ctx.deadline:
            error = DeadlineExceededError("the request deadline passed before this stage began")
            raise in_stage(error, pipeline, stage, None)

    async def _stage(
        self,
        pipeline: str,
        stage: str,
        model: LoadedModel,
        ctx: RequestContext,
        stages: list[StageRun],
        work: Callable[[RequestContext], Awaitable[list[T]]],
    ) -> list[T]:
        """``work`` on a ctx of its own (same deadline, its own timings), the stage named in
        any error it raises; its timing appended to ``stages``."""
        self._check_deadline(pipeline, stage, ctx)
        started = time.perf_counter()
        own = ctx.stage()
        attributes: dict[str, str | int] = {
            "ortserve.pipeline": pipeline,
            "ortserve.stage": stage,
            "ortserve.model": model.name,
            "ortserve.model.version": model.version,
        }
        # the stage's prepare / queue / finish spans are its children; its batches link to it
        with tracing.span(f"stage {stage}", attributes):
            try:
                value = await work(own)
            except ServiceError as exc:
                raise in_stage(exc, pipeline, stage, model.name) from None
            except Exception as exc:  # a bug in a stage: logged here with its stage, never sent
                log.error("pipeline %s: stage %s failed", pipeline, stage, exc_info=exc)
                failed = InferenceFailedError(
                    "the stage failed; quote this request_id to the operator"
                )
                raise in_stage(failed, pipeline, stage, model.name) from None
        stages.append(
            StageRun(
                stage,
                model.name,
                model.version,
                (time.perf_counter() - started) * 1000.0,
                own.queue_ms,
                own.inference_ms,
                max(own.batch_sizes, default=0),
                len(value),
            )
        )
        return value

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


def in_stage(error: ServiceError, pipeline: str, stage: str, model: str | None) -> ServiceError:
    """``error`` (same class, status and headers) with the pipeline stage named in its message
    and in the ``x-pipeline-stage`` header."""
    where = f"pipeline {pipeline!r}, stage {stage}" + (f" (model {model!r})" if model else "")
    named = copy.copy(error)
    named.message = f"{where}: {error.message}"
    named.args = (named.message,)
    named.headers = {**error.headers, STAGE_HEADER: stage}
    return named
