"""POST /classify"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import budget_for, inference_of, read_images_request, timing_headers
from service.api.openapi import images_body
from service.schemas.common import error_responses
from service.schemas.vision import ClassifyRequest, ClassifyResponse
from service.tasks.classification import ClassifyParams, ClassifyProcessor

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
    budget = budget_for(request)
    params, images = await read_images_request(request, ClassifyRequest)
    inference = inference_of(request)
    async with inference.lease(params.model, "classify", params.model_version, budget) as model:
        processor = model.processor_as(ClassifyProcessor)
        results = await inference.run(
            model, processor, images, ClassifyParams(params.top_k), budget
        )
    timing_headers(response, budget)
    return ClassifyResponse.from_results(model.name, results)
