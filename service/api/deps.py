"""What every inference route needs: the registry, request parsing, deadlines, the worker pool
and the timing headers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from service.errors import (
    BadRequestError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from service.runtime.batcher import BatchResult
from service.runtime.registry import ModelRegistry, ServedModel
from service.schemas.common import ImagesRequest
from service.settings import Settings
from service.tasks.base import Feeds, Outputs
from service.tasks.imaging import Geometry

T = TypeVar("T")
R = TypeVar("R")
ImagesRequestT = TypeVar("ImagesRequestT", bound=ImagesRequest)
RunOne = Callable[[Feeds], Outputs]  # the model's run on a batch of one

TIMEOUT_HEADER = "x-request-timeout-ms"
# A lone image larger than this decodes in the pool even when its model is idle: its decode would
# hold the model thread that long, and a request arriving meanwhile would wait for it
LONE_MAX_BYTES = 1024 * 1024


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def registry_of(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


def get_model(request: Request, name: str | None, task: str) -> ServedModel:
    """Look the model up (404 / 400 / 503 errors) and label the request with it for metrics."""
    served = registry_of(request).get(name, task)
    request.state.model = served.name
    return served


async def gather_or_cancel(aws: Sequence[Awaitable[Any]]) -> list[Any]:
    """Like ``asyncio.gather`` but cancels the siblings as soon as one fails."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def check_api_key(request: Request) -> None:
    """Dependency: ``Authorization: Bearer <key>`` when ORTSERVE_API_KEYS is set."""
    keys = settings_of(request).api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token_bytes = token.strip().encode()
    # compare against every key (no early exit) in constant time per key
    valid = False
    for key in keys:
        valid |= secrets.compare_digest(token_bytes, key.get_secret_value().encode())
    if scheme.lower() != "bearer" or not valid:
        raise UnauthorizedError()


@dataclass
class RequestContext:
    """Per-request deadline and timing, turned into response headers at the end."""

    request: Request
    deadline: float
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, request: Request) -> RequestContext:
        timeout_s = settings_of(request).request_timeout_s
        header = request.headers.get(TIMEOUT_HEADER)
        if header is not None:
            try:
                asked = float(header) / 1000.0
            except ValueError:
                raise BadRequestError(
                    f"{TIMEOUT_HEADER} must be a number of milliseconds"
                ) from None
            if not asked > 0 or asked != asked:  # rejects 0, negatives and NaN
                raise BadRequestError(f"{TIMEOUT_HEADER} must be positive")
            timeout_s = min(timeout_s, asked)  # clients may shorten the deadline, not extend it
        return cls(request, asyncio.get_running_loop().time() + timeout_s)

    async def in_pool(self, fn: Callable[..., R], *args: Any) -> R:
        pool: ThreadPoolExecutor = self.request.app.state.pool
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def infer(self, served: ServedModel, feeds: Any) -> Outputs:
        assert served.batcher is not None
        result: BatchResult[Outputs] = await served.batcher.submit(
            feeds, self.deadline, self.request.is_disconnected
        )
        self._timed(result)
        return result.value

    @staticmethod
    def model_idle(served: ServedModel) -> bool:
        """Nothing queued or running for the model: a request now would be a batch of one."""
        return served.batcher is not None and served.batcher.idle

    async def run_alone(self, served: ServedModel, job: Callable[[RunOne], R]) -> R:
        """``job(run_one)`` on the model's thread, for a request that found the model idle:
        its preparation, run and postprocessing cost one thread hop instead of one each."""
        assert served.batcher is not None
        value, timing = await served.batcher.run_alone(job, self.deadline)
        self._timed(timing)
        return value

    def _timed(self, result: BatchResult[Any]) -> None:
        self.queue_ms = max(self.queue_ms, result.queue_ms)
        self.inference_ms = max(self.inference_ms, result.inference_ms)
        self.batch_sizes.append(result.batch_size)

    async def run_images(
        self,
        served: ServedModel,
        images: list[bytes],
        postprocess: Callable[[Outputs, Geometry], R],
        *,
        inline_postprocess: bool = False,
    ) -> list[R]:
        """Each image: decode + resize in the pool → batcher → postprocess in the pool, or on
        the event loop when it takes microseconds (top-k), where a thread hop costs more. One
        image of at most ``LONE_MAX_BYTES`` for an idle model: all three in one job on the model
        thread (``run_alone``)."""
        assert served.image is not None
        image = served.image
        if len(images) == 1 and len(images[0]) <= LONE_MAX_BYTES and self.model_idle(served):
            # one thread hop instead of three: decode, run, postprocess in one job
            data = images[0]

            def job(run_one: RunOne) -> R:
                feeds, geo = image.preprocess(data)
                return postprocess(run_one(feeds), geo)

            return [await self.run_alone(served, job)]

        async def one(data: bytes) -> R:
            feeds, geo = await self.in_pool(image.preprocess, data)
            outputs = await self.infer(served, feeds)
            if inline_postprocess:
                return postprocess(outputs, geo)
            return await self.in_pool(postprocess, outputs, geo)

        return await gather_or_cancel([one(data) for data in images])

    def headers(self, response: Response) -> None:
        response.headers["x-queue-time-ms"] = f"{self.queue_ms:.2f}"
        response.headers["x-inference-time-ms"] = f"{self.inference_ms:.2f}"
        if self.batch_sizes:
            response.headers["x-batch-size"] = str(max(self.batch_sizes))


def _b64decode(value: str, index: int) -> bytes:
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"images[{index}] is not valid base64") from None


async def read_images_request(
    request: Request, model: type[ImagesRequestT]
) -> tuple[ImagesRequestT, list[bytes]]:
    """Parse either JSON (base64 images) or multipart/form-data (``file`` parts + form fields)."""
    settings = settings_of(request)
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type == "application/json":
        parsed = model.model_validate(parse_json(await request.body()))
        _check_count(len(parsed.images), settings.max_images_per_request)
        return parsed, [_b64decode(v, i) for i, v in enumerate(parsed.images)]
    if content_type == "multipart/form-data":
        limit = settings.max_images_per_request
        form = await request.form(max_files=limit + 1, max_fields=64)
        files: list[bytes] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise BadRequestError(
                        f"unexpected file part {key!r}; send images as 'file' parts"
                    )
                _check_count(len(files) + 1, limit)
                files.append(await value.read())
            elif key == "classes":
                fields.setdefault("classes", []).extend(
                    c.strip() for c in value.split(",") if c.strip()
                )
            elif key == "file":
                raise BadRequestError("the 'file' part must be a file upload, not a text field")
            else:
                fields[key] = value
        if not files:
            raise BadRequestError("send one or more images as multipart 'file' parts")
        parsed = model.model_validate({**fields, "images": ["-"] * len(files)})
        return parsed, files
    raise UnsupportedMediaTypeError(
        "send application/json with base64 'images' or multipart/form-data with 'file' parts"
    )


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequestError("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequestError("the request body is not valid JSON") from None


async def read_json_request(request: Request, model: type[T]) -> T:
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise UnsupportedMediaTypeError("send an application/json body")
    validated: T = model.model_validate(parse_json(await request.body()))  # type: ignore[attr-defined]
    return validated


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLargeError(
            f"at most {limit} images per request (ORTSERVE_MAX_IMAGES_PER_REQUEST)"
        )


def model_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")
