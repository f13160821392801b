"""A pipeline's task code: detect → crop → a model on each crop, around the stages' own processors.

Pure numpy / Pillow, like every task module; ``service.inference`` runs the stages, each through
its model's own batcher. Two adapters give the stage processors the pipeline's inputs:

- ``WholeImage`` (first stage): decodes the request's image once, prepares the model's input from
  it, and keeps the picture beside the model's result at no more than ``WORKING_PIXELS`` (the
  crops and the rendered picture are cut from it, with no second decode). Coordinates stay in
  pixels of the original image; only the pixels kept are fewer.
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
    reduced,
)

ParamsT = TypeVar("ParamsT", contravariant=True)
ResultT = TypeVar("ResultT", covariant=True)
P = TypeVar("P")
R = TypeVar("R")
Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the original image
Skip = Literal["too_small", "over_limit"]

# The most pixels of each image a pipeline keeps between its stages (for the crops, and the
# picture ``render=true`` draws on): a request's images are all held until its crops are
# classified, so it is this, not the decode limit, that bounds the pipeline's memory
# (× 3 bytes × images per request). A crop of a larger image is cut from the picture scaled to
# this; the per-crop model's input is far smaller still.
WORKING_PIXELS = 4_000_000


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
    """The first stage's meta: the model input's geometry and the decoded picture, at no more
    than ``WORKING_PIXELS``."""

    geometry: Geometry
    picture: DecodedImage


@dataclass(frozen=True)
class Seen(Generic[R]):
    """A first-stage result with the picture it was computed on (oriented, at no more than
    ``WORKING_PIXELS``; its ``orig_w``/``orig_h`` are the original image's)."""

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

    working_pixels = WORKING_PIXELS

    def prepare(self, raw: bytes) -> tuple[Feeds, Framed]:
        # A JPEG decodes at the smallest DCT scale that keeps the working resolution; other
        # formats decode whole. The model's input comes from the decoded pixels; the picture
        # kept is scaled down to the working resolution and the decoded one dropped here.
        decoded = decode_image(
            raw, max_pixels=self.stage.image.max_pixels, min_pixels=self.working_pixels
        )
        feeds, geometry = self.stage.image.from_decoded(decoded)
        return feeds, Framed(geometry, reduced(decoded, self.working_pixels))

    def prepare_inline(self, raws: Sequence[bytes]) -> bool:
        return False  # decoding takes milliseconds: in the pool

    def runs_alone(self, raw: bytes) -> bool:
        return len(raw) <= LONE_MAX_BYTES

    def finish(self, outputs: Outputs, meta: Framed, params: P) -> Seen[R]:
        return Seen(self.stage.finish(outputs, meta.geometry, params), meta.picture)


@dataclass(frozen=True)
class Crop:
    """One region of a decoded picture (shared by all its crops, not copied until prepared);
    ``box`` is in pixels of the original image, whatever the picture's own size."""

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
