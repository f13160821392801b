"""Request and response schemas of /classify, /detect and /segment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from service.schemas.common import Box, ImagesRequest, UnitFloat
from service.tasks import segmentation as seg
from service.tasks.classification import Classification
from service.tasks.detection import ImageDetections


class ClassifyRequest(ImagesRequest):
    top_k: int = Field(
        default=5, ge=1, le=1000, description="How many classes to return per image."
    )


class ClassPrediction(BaseModel):
    label: str = Field(examples=["espresso"])
    class_id: int = Field(examples=[967])
    score: float = Field(description="Probability in [0, 1].", examples=[0.83])


class ClassifyResult(BaseModel):
    predictions: list[ClassPrediction] = Field(description="Sorted by descending score.")


class ClassifyResponse(BaseModel):
    model: str = Field(examples=["mobilenet_v2"])
    results: list[ClassifyResult] = Field(description="One per input image, in input order.")

    @classmethod
    def from_results(cls, model: str, results: Sequence[Classification]) -> ClassifyResponse:
        return cls(
            model=model,
            results=[
                ClassifyResult(
                    predictions=[
                        ClassPrediction(label=p.label, class_id=p.class_id, score=p.score)
                        for p in result.predictions
                    ]
                )
                for result in results
            ],
        )


class RenderOptions(BaseModel):
    """``render=true``: answer with the annotated picture instead of JSON (one image only)."""

    render: bool = Field(
        default=False,
        description=(
            "Return the input image with the results drawn on it (content-type image/png or "
            "image/jpeg) instead of JSON. Needs exactly one image."
        ),
    )
    render_format: Literal["png", "jpeg"] = Field(default="png", description="With render=true.")


def rendered_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI: the 200 answer is JSON, or with render=true the annotated picture."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        200: {
            "description": "JSON results, or with render=true the annotated image.",
            "content": {"image/png": binary, "image/jpeg": binary},
        }
    }


class DetectRequest(RenderOptions, ImagesRequest):
    confidence: UnitFloat = Field(default=0.25, description="Minimum score of a detection.")
    iou: UnitFloat = Field(default=0.45, description="NMS IoU threshold.")
    max_detections: int = Field(default=300, ge=1, le=10000, description="Per image.")
    classes: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None,
        max_length=1000,
        description="Only return these labels.",
        examples=[["circle"]],
    )


class Detection(BaseModel):
    label: str = Field(examples=["circle"])
    class_id: int = Field(examples=[0])
    score: float = Field(examples=[0.91])
    box: Box


class DetectResult(BaseModel):
    width: int = Field(description="Original image width in pixels.")
    height: int = Field(description="Original image height in pixels.")
    detections: list[Detection] = Field(description="Sorted by descending score.")

    @classmethod
    def from_result(cls, result: ImageDetections) -> DetectResult:
        det = result.detections
        return cls(
            width=result.width,
            height=result.height,
            detections=[
                Detection(
                    label=label,
                    class_id=int(c),
                    score=float(s),
                    box=Box(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3])),
                )
                for b, s, c, label in zip(
                    det.boxes.tolist(),
                    det.scores.tolist(),
                    det.class_ids.tolist(),
                    result.labels,
                    strict=True,
                )
            ],
        )


class DetectResponse(BaseModel):
    model: str = Field(examples=["shapes-yolo"])
    results: list[DetectResult]

    @classmethod
    def from_results(cls, model: str, results: Sequence[ImageDetections]) -> DetectResponse:
        return cls(model=model, results=[DetectResult.from_result(r) for r in results])


class SegmentRequest(RenderOptions, ImagesRequest):
    confidence: UnitFloat = Field(default=0.5, description="Instance models: minimum score.")
    iou: UnitFloat = Field(default=0.45, description="YOLO segmentation models: NMS IoU threshold.")
    mask_format: Literal["png", "rle"] = Field(
        default="png",
        description="Semantic models: one PNG of class ids, or one COCO RLE per class.",
    )


class PngMask(BaseModel):
    format: Literal["png"] = "png"
    data: str = Field(description="Base64 PNG; pixel value = class id, original image size.")


class RleMask(BaseModel):
    format: Literal["rle"] = "rle"
    size: list[int] = Field(description="[height, width].", examples=[[480, 640]])
    counts: str = Field(description="COCO compressed RLE (pycocotools.mask.decode).")

    @classmethod
    def from_rle(cls, rle: dict[str, object]) -> RleMask:
        return cls.model_validate(rle)


class ClassArea(BaseModel):
    class_id: int
    label: str
    pixels: int
    fraction: float = Field(description="Share of the image's pixels.")
    mask: RleMask | None = Field(default=None, description="With mask_format=rle.")


class SemanticResult(BaseModel):
    kind: Literal["semantic"] = "semantic"
    width: int
    height: int
    mask: PngMask | None = Field(default=None, description="With mask_format=png.")
    classes: list[ClassArea]


class InstanceMask(BaseModel):
    label: str
    class_id: int
    score: float
    box: Box
    mask: RleMask


class InstanceResult(BaseModel):
    kind: Literal["instance"] = "instance"
    width: int
    height: int
    instances: list[InstanceMask] = Field(description="Sorted by descending score.")


class SegmentResponse(BaseModel):
    model: str = Field(examples=["shapes-unet"])
    results: list[Annotated[SemanticResult | InstanceResult, Field(discriminator="kind")]]

    @classmethod
    def from_results(
        cls, model: str, results: Sequence[seg.SemanticResult | seg.InstanceResult]
    ) -> SegmentResponse:
        out: list[SemanticResult | InstanceResult] = []
        for result in results:
            if isinstance(result, seg.SemanticResult):
                rle = result.rle
                out.append(
                    SemanticResult(
                        width=result.width,
                        height=result.height,
                        mask=PngMask(data=result.png) if result.png is not None else None,
                        classes=[
                            ClassArea(
                                class_id=a.class_id,
                                label=label,
                                pixels=a.pixels,
                                fraction=a.fraction,
                                mask=RleMask.from_rle(rle[a.class_id]) if rle else None,
                            )
                            for a, label in zip(result.areas, result.labels, strict=True)
                        ],
                    )
                )
            else:
                out.append(
                    InstanceResult(
                        width=result.width,
                        height=result.height,
                        instances=[
                            InstanceMask(
                                label=label,
                                class_id=inst.class_id,
                                score=inst.score,
                                box=Box(
                                    x1=inst.box[0], y1=inst.box[1], x2=inst.box[2], y2=inst.box[3]
                                ),
                                mask=RleMask.from_rle(inst.rle),
                            )
                            for inst, label in zip(result.instances, result.labels, strict=True)
                        ],
                    )
                )
        return cls(model=model, results=out)
