"""POST /classify, /detect and /segment: parse, one core call, encode.

The three share one skeleton (``_serve``): the request's context, the images (JSON base64 or
multipart), ``core.run`` on the task's model with the parameters that model needs, then either
the typed JSON answer or, with ``render=true``, the annotated picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response

from service.api.deps import (
    context_for,
    core_of,
    read_images_request,
    settings_of,
    timing_headers,
)
from service.api.openapi import images_body
from service.core.raw import task_params
from service.errors import BadRequestError
from service.runtime.model import LoadedModel
from service.schemas.common import ImagesRequest, error_responses
from service.schemas.vision import (
    ClassifyRequest,
    ClassifyResponse,
    DetectRequest,
    DetectResponse,
    SegmentRequest,
    SegmentResponse,
    rendered_responses,
)
from service.tasks import render

router = APIRouter(tags=["vision"])
RequestT = TypeVar("RequestT", bound=ImagesRequest)
ERRORS = error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504)
# draws the picture of one image's result: (image bytes, result, labels, format, max pixels)
Draw = Callable[[bytes, Any, Sequence[str], render.RenderFormat, int], bytes]


async def _serve(
    request: Request,
    response: Response,
    schema: type[RequestT],
    task: str,
    params: Callable[[RequestT, LoadedModel], tuple[Any, Any]],
    answer: Callable[[str, list[Any]], Any],
    draw: Draw | None = None,
) -> Any:
    ctx = context_for(request)
    parsed, images = await read_images_request(request, schema)
    rendering = draw is not None and bool(getattr(parsed, "render", False))
    if rendering and len(images) != 1:
        raise BadRequestError(f"render=true draws one image; this request has {len(images)}")
    core = core_of(request)
    model, results = await core.run(
        ctx,
        task,
        parsed.model,
        parsed.model_version,
        images,
        lambda loaded: params(parsed, loaded),
    )
    if rendering and draw is not None:
        media_format: render.RenderFormat = getattr(parsed, "render_format", "png")
        max_pixels = settings_of(request).max_image_pixels
        picture = await core.inference.render(
            lambda: draw(images[0], results[0], model.labels, media_format, max_pixels),
            media_format,
        )
        response = Response(picture, media_type=render.MEDIA_TYPES[media_format])
    timing_headers(response, ctx)
    return response if rendering else answer(model.name, results)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Classify images",
    description="Top-k classes per image. Send JSON with base64 `images` or multipart `file` parts.",
    openapi_extra=images_body(ClassifyRequest),
    responses=ERRORS,
)
async def classify(request: Request, response: Response) -> ClassifyResponse:
    def params(p: ClassifyRequest, model: LoadedModel) -> tuple[Any, Any]:
        return task_params("classify", p, model)

    answer: ClassifyResponse = await _serve(
        request, response, ClassifyRequest, "classify", params, ClassifyResponse.from_results
    )
    return answer


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects",
    description=(
        "Boxes in pixels of the original image (x1, y1, x2, y2). YOLOv8/v11, YOLOv5 and "
        "torchvision-style detectors. Send JSON with base64 `images` or multipart `file` parts."
    ),
    openapi_extra=images_body(DetectRequest),
    responses={**rendered_responses(), **ERRORS},
)
async def detect(request: Request, response: Response) -> DetectResponse | Response:
    def params(p: DetectRequest, model: LoadedModel) -> tuple[Any, Any]:
        return task_params("detect", p, model)

    def draw(
        image: bytes, result: Any, labels: Sequence[str], fmt: render.RenderFormat, pixels: int
    ) -> bytes:
        return render.detections_picture(image, result.detections, labels, fmt, max_pixels=pixels)

    answer: DetectResponse | Response = await _serve(
        request, response, DetectRequest, "detect", params, DetectResponse.from_results, draw
    )
    return answer


@router.post(
    "/segment",
    response_model=SegmentResponse,
    summary="Segment images",
    description=(
        "Semantic models return a class-id mask (PNG, or COCO RLE per class); instance models "
        "(Mask R-CNN, YOLO-seg) return scored instances with COCO RLE masks. Masks are at original size."
    ),
    openapi_extra=images_body(SegmentRequest),
    responses={**rendered_responses(), **ERRORS},
)
async def segment(request: Request, response: Response) -> SegmentResponse | Response:
    def params(p: SegmentRequest, model: LoadedModel) -> tuple[Any, Any]:
        # a picture is drawn from the class map itself: no PNG or RLE round trip
        return task_params(
            "segment", p.model_copy(update={"mask_format": "map"}) if p.render else p, model
        )

    def draw(
        image: bytes, result: Any, labels: Sequence[str], fmt: render.RenderFormat, pixels: int
    ) -> bytes:
        return render.segmentation_picture(image, result, labels, fmt, max_pixels=pixels)

    answer: SegmentResponse | Response = await _serve(
        request, response, SegmentRequest, "segment", params, SegmentResponse.from_results, draw
    )
    return answer
