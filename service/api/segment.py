"""POST /segment"""

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
from service.schemas.vision import SegmentRequest, SegmentResponse, rendered_responses
from service.tasks import render
from service.tasks.segmentation import SegmentParams, SegmentProcessor

router = APIRouter(tags=["vision"])


@router.post(
    "/segment",
    response_model=SegmentResponse,
    summary="Segment images",
    description=(
        "Semantic models return a class-id mask (PNG, or COCO RLE per class); instance models "
        "(Mask R-CNN, YOLO-seg) return scored instances with COCO RLE masks. Masks are at original size."
    ),
    openapi_extra=images_body(SegmentRequest),
    responses={
        **rendered_responses(),
        **error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
    },
)
async def segment(request: Request, response: Response) -> SegmentResponse | Response:
    budget = budget_for(request)
    params, images = await read_images_request(request, SegmentRequest)
    if params.render and len(images) != 1:
        raise BadRequestError(f"render=true draws one image; this request has {len(images)}")
    # a picture is drawn from the class map itself: no PNG or RLE round trip
    mask_format = "map" if params.render else params.mask_format
    seg_params = SegmentParams(params.confidence, mask_format, params.iou)
    inference = inference_of(request)
    async with inference.lease(params.model, "segment", params.model_version, budget) as model:
        processor = model.processor_as(SegmentProcessor)
        results = await inference.run(model, processor, images, seg_params, budget)
    if params.render:
        picture = await inference.render(
            lambda: render.segmentation_picture(
                images[0],
                results[0],
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
    return SegmentResponse.from_results(model.name, results)
