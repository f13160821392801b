"""POST /detect"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service import render
from service.api.deps import RequestContext, get_model, read_images_request, settings_of
from service.api.openapi import images_body
from service.errors import BadRequestError
from service.schemas.common import Box, error_responses
from service.schemas.vision import (
    Detection,
    DetectRequest,
    DetectResponse,
    DetectResult,
    rendered_responses,
)
from service.tasks.base import Outputs
from service.tasks.classification import label_for
from service.tasks.detection import Detections, DetectParams
from service.tasks.imaging import Geometry

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
    ctx = RequestContext.start(request)
    params, images = await read_images_request(request, DetectRequest)
    if params.render and len(images) != 1:
        raise BadRequestError(f"render=true draws one image; this request has {len(images)}")
    served = get_model(request, params.model, "detect")
    labels = served.labels
    class_ids = None
    if params.classes is not None:
        unknown = sorted(set(params.classes) - set(labels))
        if unknown:
            raise BadRequestError(f"classes {unknown} are not labels of model {served.name!r}")
        class_ids = frozenset(i for i, label in enumerate(labels) if label in set(params.classes))
    det_params = DetectParams(params.confidence, params.iou, params.max_detections, class_ids)
    post = served.postprocess

    def postprocess(outputs: Outputs, geo: Geometry) -> tuple[Detections, Geometry]:
        return post(outputs, geo, det_params), geo

    results = await ctx.run_images(served, images, postprocess)
    if params.render:
        picture = await ctx.in_pool(
            lambda: render.detections_picture(
                images[0],
                results[0][0],
                labels,
                params.render_format,
                max_pixels=settings_of(request).max_image_pixels,
            )
        )
        rendered = Response(picture, media_type=render.MEDIA_TYPES[params.render_format])
        ctx.headers(rendered)
        return rendered
    ctx.headers(response)
    return DetectResponse(
        model=served.name,
        results=[
            DetectResult(
                width=geo.orig_w,
                height=geo.orig_h,
                detections=[
                    Detection(
                        label=label_for(labels, int(c)),
                        class_id=int(c),
                        score=float(s),
                        box=Box(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3])),
                    )
                    for b, s, c in zip(
                        det.boxes.tolist(), det.scores.tolist(), det.class_ids.tolist(), strict=True
                    )
                ],
            )
            for det, geo in results
        ],
    )
