"""The pipeline executor: a detect → crop → classify pipeline (``service.tasks.pipeline``) run
stage by stage within one request's deadline.

Each model stage is ``Inference.run`` on that stage's model, through its own batcher, so the
crops of concurrent requests share the classifier's batches. One deadline covers the whole
request and is checked before each stage; a stage's failure fails the request with the stage
named (``in_stage``: in its message and in the ``x-pipeline-stage`` header). Both stage models
are leased for the whole request, so a reload meanwhile never mixes versions within it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from service import tracing
from service.context import RequestContext
from service.errors import DeadlineExceededError, InferenceFailedError, ServiceError
from service.runtime.entries import Lookup
from service.runtime.model import LoadedModel
from service.tasks.base import TaskProcessor
from service.tasks.classification import Classification, ClassifyParams, ClassifyProcessor
from service.tasks.detection import DetectProcessor, ImageDetections
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


class RunsTask(Protocol):
    """``Inference.run``: raw inputs through a model's task processor and batcher."""

    async def __call__(
        self,
        model: LoadedModel,
        processor: TaskProcessor[T, MetaT, ParamsT, ResultT],
        raws: Sequence[T],
        params: ParamsT,
        ctx: RequestContext,
    ) -> list[ResultT]: ...


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


class PipelineExecutor:
    """Runs the registry's pipelines, each model stage through ``run`` (``Inference.run``)."""

    def __init__(self, registry: Lookup, run: RunsTask) -> None:
        self.registry = registry
        self._run = run

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
                return await self._run(detector, WholeImage(det_processor), raws, params, stage)

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
                return await self._run(
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


def in_stage(error: ServiceError, pipeline: str, stage: str, model: str | None) -> ServiceError:
    """``error`` (same class, status and headers) with the pipeline stage named in its message
    and in the ``x-pipeline-stage`` header."""
    where = f"pipeline {pipeline!r}, stage {stage}" + (f" (model {model!r})" if model else "")
    named = copy.copy(error)
    named.message = f"{where}: {error.message}"
    named.args = (named.message,)
    named.headers = {**error.headers, STAGE_HEADER: stage}
    return named
