"""Request and response schemas of POST /pipelines/{name}."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from service.inference import PipelineRun
from service.schemas.common import Box, ImageInputs, UnitFloat
from service.schemas.vision import (
    ClassifyResult,
    ClassPrediction,
    Detection,
    DetectResult,
    RenderOptions,
)
from service.tasks.classification import Classification
from service.tasks.pipeline import PipelineImage


class PipelineRequest(RenderOptions, ImageInputs):
    """The pipeline's own config names its models and settings; a request may adjust these."""

    confidence: UnitFloat | None = Field(
        default=None, description="Minimum detection score; omit for the pipeline's."
    )
    classes: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None,
        max_length=1000,
        description=(
            "Only detect these labels (of the detect model), within the pipeline's own class "
            "filter if it has one."
        ),
        examples=[["cat", "dog"]],
    )
    top_k: int | None = Field(
        default=None, ge=1, le=1000, description="Classes per crop; omit for the pipeline's."
    )


class PipelineDetection(Detection):
    crop: Box | None = Field(
        description="The region classified: the box, padded and clipped; null when not cropped."
    )
    classification: ClassifyResult | None = Field(
        description="The crop's classes (descending score); null when not cropped."
    )
    skipped: Literal["too_small", "over_limit"] | None = Field(
        default=None,
        description=(
            "Why it was not cropped: its box is under the pipeline's min_size, or the image "
            "already had max_crops crops (detections are cropped by descending score)."
        ),
    )


class PipelineResult(BaseModel):
    width: int = Field(description="Original image width in pixels.")
    height: int = Field(description="Original image height in pixels.")
    detections: list[PipelineDetection] = Field(description="Sorted by descending score.")

    @classmethod
    def from_image(cls, image: PipelineImage) -> PipelineResult:
        plain = DetectResult.from_result(image.detections)
        return cls(
            width=plain.width,
            height=plain.height,
            detections=[
                PipelineDetection(
                    **detection.model_dump(),
                    crop=_box(crop.box),
                    classification=_classes(crop.result),
                    skipped=crop.skipped,
                )
                for detection, crop in zip(plain.detections, image.crops, strict=True)
            ],
        )


def _box(box: tuple[int, int, int, int] | None) -> Box | None:
    if box is None:
        return None
    return Box(x1=float(box[0]), y1=float(box[1]), x2=float(box[2]), y2=float(box[3]))


def _classes(result: Classification | None) -> ClassifyResult | None:
    if result is None:
        return None
    return ClassifyResult(
        predictions=[
            ClassPrediction(label=p.label, class_id=p.class_id, score=p.score)
            for p in result.predictions
        ]
    )


class StageInfo(BaseModel):
    stage: str = Field(examples=["detect"])
    model: str | None = Field(
        description="The model it ran (none for crop).", examples=["nanodet-coco"]
    )
    model_version: int | None = Field(default=None, examples=[1])


class PipelineResponse(BaseModel):
    model: str = Field(description="The pipeline.", examples=["detect-classify"])
    stages: list[StageInfo] = Field(description="The stages in the order they ran.")
    results: list[PipelineResult] = Field(description="One per input image, in input order.")

    @classmethod
    def from_run(cls, run: PipelineRun) -> PipelineResponse:
        return cls(
            model=run.name,
            stages=[
                StageInfo(stage=s.stage, model=s.model, model_version=s.version) for s in run.stages
            ],
            results=[PipelineResult.from_image(image) for image in run.images],
        )
