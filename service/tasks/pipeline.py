"""A pipeline's task code: detect → crop → a model on each crop, around the stages' own processors.

Pure numpy / Pillow, like every task module; ``service.inference`` runs the stages, each through
its model's own batcher. Two adapters give the stage processors the pipeline's inputs:

- ``WholeImage`` (first stage): decodes the request's image at full resolution once and keeps the
  picture beside the model's result, so the crops and the rendered picture need no second decode.
- ``CropInput`` (per-crop stage): takes a ``Crop`` (the decoded picture + a box) and prepares the
  box's pixels as the model's own preprocessing says, from the array: never re-encoded.

``plan_crops`` decides which detections are cropped (padding, minimum size, at most N per image)
and ``assemble`` puts the per-crop results back beside their detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np

from service.errors import BadRequestError
from service.tasks.base import Feeds, Outputs
from service.tasks.classification import Classification
from service.tasks.detection import Detections, ImageDetections
from service.tasks.imaging import (
    LONE_MAX_BYTES,
    DecodedImage,
    Geometry,
    ImageProcessor,
    crop_image,
    decode_image,
)

ParamsT = TypeVar("ParamsT", contravariant=True)
ResultT = TypeVar("ResultT", covariant=True)
P = TypeVar("P")
R = TypeVar("R")
Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the original image
Skip = Literal["too_small", "over_limit"]


class ImageStage(Protocol[ParamsT, ResultT]):
    """What a vision processor offers a pipeline (``DetectProcessor``, ``ClassifyProcessor``):
    its image preprocessing, its collate, and a ``finish`` from outputs + ``Geometry``."""

    @property
    def image(self) -> ImageProcessor: ...

    @property
    def finish_inline(self) -> bool: ...

    def collate(self, items: Sequence[Feeds]) -> Feeds: ...

    def finish(self, outputs: Outputs, meta: Geometry, params: ParamsT) -> ResultT: ...


@dataclass(frozen=True)
class PipelineOptions:
    """What one request may change of its pipeline's steps (None: as configured)."""

    confidence: float | None = None
    classes: tuple[str, ...] | None = None  # narrows the detect step's class filter
    top_k: int | None = None

    def classes_within(self, configured: Sequence[str] | None) -> list[str] | None:
        """The class filter to detect with: the request's, which must lie inside the
        configured one (a 400 otherwise); or the configured one."""
        if self.classes is None:
            return list(configured) if configured is not None else None
        if configured is not None:
            outside = sorted(set(self.classes) - set(configured))
            if outside:
                raise BadRequestError(
                    f"classes {outside} are outside this pipeline's class filter {list(configured)}"
                )
        return list(self.classes)


@dataclass(frozen=True)
class Framed:
    """The first stage's meta: the model input's geometry and the decoded picture."""

    geometry: Geometry
    picture: DecodedImage


@dataclass(frozen=True)
class Seen(Generic[R]):
    """A first-stage result with the picture it was computed on (full resolution, oriented)."""

    result: R
    picture: DecodedImage


class _StageAdapter(Generic[P, R]):
    """What both pipeline adapters take from the vision stage they wrap: batching and whether
    its finish runs inline."""

    bucket_by: str | None = None

    def __init__(self, stage: ImageStage[P, R]) -> None:
        self.stage = stage

    @property
    def finish_inline(self) -> bool:
        return self.stage.finish_inline

    def collate(self, items: Sequence[Feeds]) -> Feeds:
        return self.stage.collate(items)


class WholeImage(_StageAdapter[P, R]):
    """``stage``'s processor for a pipeline's first step: image bytes → (feeds, ``Framed``);
    ``finish`` → ``Seen`` (the stage's result + the picture)."""

    def prepare(self, raw: bytes) -> tuple[Feeds, Framed]:
        # full resolution (no draft decoding): the crops are cut from these pixels
        picture = decode_image(raw, max_pixels=self.stage.image.max_pixels)
        feeds, geometry = self.stage.image.from_decoded(picture)
        return feeds, Framed(geometry, picture)

    def prepare_inline(self, raws: Sequence[bytes]) -> bool:
        return False  # decoding takes milliseconds: in the pool

    def runs_alone(self, raw: bytes) -> bool:
        return len(raw) <= LONE_MAX_BYTES

    def finish(self, outputs: Outputs, meta: Framed, params: P) -> Seen[R]:
        return Seen(self.stage.finish(outputs, meta.geometry, params), meta.picture)


@dataclass(frozen=True)
class Crop:
    """One region of a decoded picture (shared by all its crops, not copied until prepared)."""

    picture: DecodedImage
    box: Box


class CropInput(_StageAdapter[P, R]):
    """``stage``'s processor for the per-crop step: ``Crop`` → the box's pixels prepared as the
    stage's model wants them (``float32[3,H,W]``); ``finish`` is the stage's own."""

    def prepare(self, raw: Crop) -> tuple[Feeds, Geometry]:
        return self.stage.image.from_decoded(crop_image(raw.picture, raw.box))

    def prepare_inline(self, raws: Sequence[Crop]) -> bool:
        return False  # a resize per crop: in the pool

    def runs_alone(self, raw: Crop) -> bool:
        return True  # one crop's resize is short

    def finish(self, outputs: Outputs, meta: Geometry, params: P) -> R:
        return self.stage.finish(outputs, meta, params)


@dataclass(frozen=True)
class CropPlan:
    """Per detection (in the detections' order): the region to crop, or None and why not."""

    boxes: tuple[Box | None, ...]
    skipped: tuple[Skip | None, ...]

    @property
    def crops(self) -> list[Box]:
        return [b for b in self.boxes if b is not None]


def plan_crops(
    det: Detections, width: int, height: int, *, padding: float, min_size: int, max_crops: int
) -> CropPlan:
    """Which detections to crop, and where: each box grows by ``padding`` × its width (left and
    right) and height (top and bottom), is clipped to the ``width`` × ``height`` image and
    rounded outwards to whole pixels. Boxes narrower or lower than ``min_size`` are skipped
    (``too_small``); of the rest, the first ``max_crops`` (detections come by descending score)
    are cropped and the others skipped (``over_limit``)."""
    boxes: list[Box | None] = []
    skipped: list[Skip | None] = []
    taken = 0
    for x1, y1, x2, y2 in np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4).tolist():
        w, h = x2 - x1, y2 - y1
        if w < min_size or h < min_size:
            boxes.append(None)
            skipped.append("too_small")
            continue
        if taken >= max_crops:
            boxes.append(None)
            skipped.append("over_limit")
            continue
        taken += 1
        left = max(0, int(np.floor(x1 - padding * w)))
        top = max(0, int(np.floor(y1 - padding * h)))
        right = min(width, int(np.ceil(x2 + padding * w)))
        bottom = min(height, int(np.ceil(y2 + padding * h)))
        boxes.append((left, top, max(right, left + 1), max(bottom, top + 1)))
        skipped.append(None)
    return CropPlan(tuple(boxes), tuple(skipped))


@dataclass(frozen=True)
class CropResult(Generic[R]):
    """One detection's crop: its region and the per-crop model's result, or why it has none."""

    box: Box | None
    result: R | None
    skipped: Skip | None


@dataclass(frozen=True)
class PipelineImage:
    """One image through a pipeline: its detections and, for each, its crop's classification."""

    detections: ImageDetections
    crops: tuple[CropResult[Classification], ...]  # one per detection, the same order


def assemble(
    detections: ImageDetections, plan: CropPlan, results: Sequence[Classification]
) -> PipelineImage:
    """``results`` are the planned crops' results, in ``plan.crops`` order."""
    if len(results) != len(plan.crops):
        raise ValueError(f"{len(results)} results for {len(plan.crops)} crops")
    found = iter(results)
    crops = tuple(
        CropResult(box, next(found) if box is not None else None, skip)
        for box, skip in zip(plan.boxes, plan.skipped, strict=True)
    )
    return PipelineImage(detections, crops)
