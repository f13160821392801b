"""POST /pipelines/{name}"""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response

from service.api.deps import context_for, core_of, read_images_request
from service.api.openapi import images_body
from service.errors import BadRequestError
from service.inference import PipelineRun
from service.model_config import MODEL_NAME_PATTERN
from service.schemas.common import error_responses
from service.schemas.pipelines import PipelineRequest, PipelineResponse
from service.schemas.vision import rendered_responses
from service.tasks import render
from service.tasks.pipeline import PipelineOptions

router = APIRouter(tags=["pipelines"])


def stage_headers(response: Response, run: PipelineRun) -> None:
    """Per stage: ``x-<stage>-time-ms`` (wall time) and, for model stages that ran,
    ``x-<stage>-batch-size`` (the largest batch its items were in); ``x-crops``; and the same
    times as ``server-timing`` (browsers' developer tools show it)."""
    for stage in run.stages:
        response.headers[f"x-{stage.stage}-time-ms"] = f"{stage.ms:.2f}"
        if stage.batch_size:
            response.headers[f"x-{stage.stage}-batch-size"] = str(stage.batch_size)
    crops = sum(1 for image in run.images for crop in image.crops if crop.box is not None)
    response.headers["x-crops"] = str(crops)
    response.headers["server-timing"] = ", ".join(
        f"{stage.stage};dur={stage.ms:.2f}" for stage in run.stages
    )


@router.post(
    "/pipelines/{name}",
    response_model=PipelineResponse,
    summary="Run a pipeline: detect, crop, classify each crop",
    description=(
        "A pipeline is a model folder with `task: pipeline` (GET /v1/models lists them with "
        "their steps). Per image: the detections as /detect returns them, each with its crop's "
        "classification. Every stage runs through its model's batcher, so crops of concurrent "
        "requests share batches. Send JSON with base64 `images` or multipart `file` parts; "
        "`render=true` answers with the picture, boxes tagged with both labels."
    ),
    openapi_extra=images_body(PipelineRequest),
    responses={
        **rendered_responses(),
        **error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
    },
)
async def run_pipeline(
    request: Request,
    response: Response,
    name: str = Path(pattern=MODEL_NAME_PATTERN, max_length=128, description="The pipeline."),
) -> PipelineResponse | Response:
    ctx = context_for(request)
    params, images = await read_images_request(request, PipelineRequest)
    if params.render and len(images) != 1:
        raise BadRequestError(f"render=true draws one image; this request has {len(images)}")
    options = PipelineOptions(
        params.confidence,
        tuple(params.classes) if params.classes is not None else None,
        params.top_k,
    )
    core = core_of(request)
    run = await core.pipeline(ctx, name, images, options)
    if params.render:
        picture = await core.inference.render(
            lambda: render.pipeline_picture(
                run.pictures[0].image, run.images[0], params.render_format
            ),
            params.render_format,
        )
        response = Response(picture, media_type=render.MEDIA_TYPES[params.render_format])
        stage_headers(response, run)
        return response
    stage_headers(response, run)
    return PipelineResponse.from_run(run)
