"""POST /segment"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service import render
from service.api.deps import RequestContext, get_model, read_images_request, settings_of
from service.api.openapi import images_body
from service.errors import BadRequestError
from service.runtime.registry import ServedModel
from service.schemas.common import Box, error_responses
from service.schemas.vision import (
    ClassArea,
    InstanceMask,
    InstanceResult,
    PngMask,
    RleMask,
    SegmentRequest,
    SegmentResponse,
    SemanticResult,
    rendered_responses,
)
from service.tasks import segmentation as seg
from service.tasks.base import Outputs
from service.tasks.classification import label_for
from service.tasks.imaging import Geometry

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
    ctx = RequestContext.start(request)
    params, images = await read_images_request(request, SegmentRequest)
    if params.render and len(images) != 1:
        raise BadRequestError(f"render=true draws one image; this request has {len(images)}")
    served = get_model(request, params.model, "segment")
    labels = served.labels
    seg_params = seg.SegmentParams(params.confidence, params.mask_format, params.iou)
    post = served.postprocess

    def postprocess(
        outputs: Outputs, geo: Geometry
    ) -> tuple[seg.SemanticResult | list[seg.Instance], Geometry]:
        return post(outputs, geo, seg_params), geo

    if params.render:
        return await _rendered(ctx, served, images[0], seg_params, params.render_format)
    results = await ctx.run_images(served, images, postprocess)
    ctx.headers(response)
    out: list[SemanticResult | InstanceResult] = []
    for result, geo in results:
        if isinstance(result, seg.SemanticResult):
            out.append(
                SemanticResult(
                    width=geo.orig_w,
                    height=geo.orig_h,
                    mask=PngMask(data=result.png) if result.png is not None else None,
                    classes=[
                        ClassArea(
                            class_id=a.class_id,
                            label=label_for(labels, a.class_id),
                            pixels=a.pixels,
                            fraction=a.fraction,
                            mask=RleMask(**result.rle[a.class_id]) if result.rle else None,  # type: ignore[arg-type]
                        )
                        for a in result.areas
                    ],
                )
            )
        else:
            out.append(
                InstanceResult(
                    width=geo.orig_w,
                    height=geo.orig_h,
                    instances=[
                        InstanceMask(
                            label=label_for(labels, inst.class_id),
                            class_id=inst.class_id,
                            score=inst.score,
                            box=Box(x1=inst.box[0], y1=inst.box[1], x2=inst.box[2], y2=inst.box[3]),
                            mask=RleMask(**inst.rle),  # type: ignore[arg-type]
                        )
                        for inst in result
                    ],
                )
            )
    return SegmentResponse(model=served.name, results=out)


async def _rendered(
    ctx: RequestContext,
    served: ServedModel,
    image: bytes,
    seg_params: seg.SegmentParams,
    fmt: render.RenderFormat,
) -> Response:
    """The picture: semantic class map as an overlay with a legend, or outlined instances."""
    post = served.postprocess
    labels = served.labels
    max_pixels = settings_of(ctx.request).max_image_pixels

    def draw(outputs: Outputs, geo: Geometry) -> bytes:
        if post.instance:
            instances = post(outputs, geo, seg_params)
            return render.instances_picture(image, instances, labels, fmt, max_pixels=max_pixels)
        # the class map itself: no PNG or RLE round trip for drawing
        class_map = seg.semantic_class_map(outputs[post.output_names[0]], geo)
        return render.semantic_picture(image, class_map, labels, fmt, max_pixels=max_pixels)

    [picture] = await ctx.run_images(served, [image], draw)
    rendered = Response(picture, media_type=render.MEDIA_TYPES[fmt])
    ctx.headers(rendered)
    return rendered
