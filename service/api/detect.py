"""POST /detect"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import (
    budget_for,
    inference_of,
    read_images_request,
    settings_of,
    timing_headers,
)
from service.api.openapi import images_body
from service.errors import BadRequestError
from service.schemas.common import error_responses
from service.schemas.vision import DetectRequest, DetectResponse, rendered_responses
from service.tasks import render
from service.tasks.detection import DetectProcessor

router = APIRouter(tags=["vision"])


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Detect objects",
    description=(
        "Boxes in pixels of the original image (x1, y1, x2, y2). YOLOv8/v11, YOLOv5 and "
        "torchvision-style detectors. Send JSON with base64 `images` or multipart `file` parts."
    ),
    openapi_extra=images_body(DetectRequest),
    responses={
        **rendered_responses(),
        **error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
    },
)
async def detect(request: Request, response: Response) -> DetectResponse | Response:
    budget = budget_for(request)
    params, images = await read_images_request(request, DetectRequest)
    if params.render and len(images) != 1:
        raise BadRequestError(f"render=true draws one image; this request has {len(images)}")
    inference = inference_of(request)
    async with inference.lease(params.model, "detect", params.model_version, budget) as model:
        processor = model.processor_as(DetectProcessor)
        det_params = processor.params(
            model=model.name,
            confidence=params.confidence,
            iou=params.iou,
            max_detections=params.max_detections,
            classes=params.classes,
        )
        results = await inference.run(model, processor, images, det_params, budget)
    if params.render:
        picture = await inference.render(
            lambda: render.detections_picture(
                images[0],
                results[0].detections,
                processor.labels,
                params.render_format,
                max_pixels=settings_of(request).max_image_pixels,
            ),
            params.render_format,
        )
        response = Response(picture, media_type=render.MEDIA_TYPES[params.render_format])
        timing_headers(response, budget)
        return response
    timing_headers(response, budget)
    return DetectResponse.from_results(model.name, results)
