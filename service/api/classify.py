"""POST /classify"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import RequestContext, get_model, read_images_request
from service.api.openapi import images_body
from service.schemas.common import error_responses
from service.schemas.vision import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    ClassPrediction,
)
from service.tasks.base import Outputs
from service.tasks.classification import Prediction
from service.tasks.imaging import Geometry

router = APIRouter(tags=["vision"])


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Classify images",
    description="Top-k classes per image. Send JSON with base64 `images` or multipart `file` parts.",
    openapi_extra=images_body(ClassifyRequest),
    responses=error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
)
async def classify(request: Request, response: Response) -> ClassifyResponse:
    ctx = RequestContext.start(request)
    params, images = await read_images_request(request, ClassifyRequest)
    served = get_model(request, params.model, "classify")
    post = served.postprocess

    def postprocess(outputs: Outputs, _geo: Geometry) -> list[Prediction]:
        return post(outputs, params.top_k)  # type: ignore[no-any-return]

    # softmax + top-k over one row: tens of microseconds
    results = await ctx.run_images(served, images, postprocess, inline_postprocess=True)
    ctx.headers(response)
    return ClassifyResponse(
        model=served.name,
        results=[
            ClassifyResult(
                predictions=[
                    ClassPrediction(label=p.label, class_id=p.class_id, score=p.score)
                    for p in preds
                ]
            )
            for preds in results
        ],
    )
