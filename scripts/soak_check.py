"""The correctness soak's references and checker (used by ``scripts/soak.py``).

References are computed in this process, before the server takes traffic, by the service's own
code on the same model folders: a ``ModelRegistry`` built here (``build_model`` → the one
processor factory → ONNX Runtime), each input run alone through ``Inference``. The server under
test never sees these runs; a soak answer matches only if an independent run of the same graph
on the same input agrees with it. Each checked request picks inputs from a fixed set, so every
200 can be compared with the references of its inputs and of the model version it claims.

Tolerances (``compare``): scores and other floats 1e-4, box corners 1 px, embeddings cosine
≥ 1 - 1e-5, masks IoU ≥ 0.99 (COCO RLE, or the class map of a PNG mask), pixel counts 1 %.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.context import RequestContext
from service.inference import Inference
from service.runtime.registry import ModelRegistry
from service.schemas.pipelines import PipelineResponse
from service.schemas.vision import ClassifyResponse, DetectResponse, SegmentResponse
from service.settings import Settings
from service.tasks.classification import ClassifyParams, ClassifyProcessor
from service.tasks.detection import DetectProcessor
from service.tasks.embedding import EmbedParams
from service.tasks.pipeline import PipelineOptions
from service.tasks.segmentation import SegmentParams, SegmentProcessor

SCORE_TOL = 1e-4
BOX_TOL_PX = 1.0
COSINE_TOL = 1e-5
MASK_IOU = 0.99
PIXELS_REL_TOL = 0.01
TENSOR_TOL = 1e-4

# the parameters every checked request sends (the references are computed with the same)
CLASSIFY = {"top_k": 3}
DETECT = {"confidence": 0.25, "iou": 0.45, "max_detections": 100}
SEGMENT = {"confidence": 0.5, "iou": 0.45, "mask_format": "rle"}
PIPELINE: dict[str, Any] = {}
VISION_TASKS = ("classify", "detect", "segment")


@dataclass
class References:
    """Everything a soak client needs: the inputs, and per (model, version, input) the answer.

    ``vision[(model, version, input)]`` is one ``results`` item of /classify, /detect or
    /segment as JSON; ``pipeline[(name, input)]`` one /pipelines result plus its stages;
    ``embed[(model, version, text)]`` one vector; ``tensors[(model, version, case)]`` the v2
    outputs of one token-id case. Picklable: it goes to every client process.
    """

    images: list[bytes]
    texts: list[str]
    token_cases: dict[str, list[dict[str, list[int]]]]  # embed model → v2 input rows
    models: dict[str, list[str]]  # task → model names (pipelines under "pipeline")
    versions: dict[str, list[int]]  # model → versions referenced
    vision: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)
    pipeline: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    embed: dict[tuple[str, int, int], list[float]] = field(default_factory=dict)
    tensors: dict[tuple[str, int, int], dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.vision) + len(self.pipeline) + len(self.embed) + len(self.tensors)


def _ctx() -> RequestContext:
    return RequestContext(deadline=asyncio.get_running_loop().time() + 600.0)


async def _compute(
    repository: Path,
    images: Sequence[bytes],
    texts: Sequence[str],
    token_rows: int,
    settings_overrides: dict[str, Any],
) -> References:
    settings = Settings(
        model_repository=repository, model_control="none", strict_startup=True, **settings_overrides
    )
    registry = ModelRegistry(settings)
    await asyncio.to_thread(registry.load)
    registry.start()
    pool = ThreadPoolExecutor(2)
    inference = Inference(registry, pool, settings)
    models: dict[str, list[str]] = {}
    versions: dict[str, list[int]] = {}
    for name, entry in sorted(registry.models.items()):
        if entry.task is not None and entry.serving:
            models.setdefault(entry.task, []).append(name)
            versions[name] = sorted(entry.serving)
    models["pipeline"] = sorted(n for n, p in registry.pipelines.items() if p.config is not None)
    refs = References(list(images), list(texts), {}, models, versions)
    try:
        for task in VISION_TASKS:
            for name in models.get(task, []):
                for version in versions[name]:
                    for index, image in enumerate(images):
                        refs.vision[(name, version, index)] = await _vision_one(
                            registry, inference, task, name, version, image
                        )
        for name in models["pipeline"]:
            for index, image in enumerate(images):
                run = await inference.pipeline(name, [image], PipelineOptions(), _ctx())
                body = PipelineResponse.from_run(run).model_dump(mode="json")
                refs.pipeline[(name, index)] = {
                    "stages": body["stages"],
                    "result": body["results"][0],
                }
        for name in models.get("embed", []):
            rng = np.random.default_rng(len(name))
            for version in versions[name]:
                for index, text in enumerate(texts):
                    got = await inference.embed(
                        name, version, [text], EmbedParams(), _ctx(), truncate=True
                    )
                    refs.embed[(name, version, index)] = [float(v) for v in got.vectors[0]]
                model = registry.get(name, "embed", versions[name][-1])
                cases = []
                for _ in range(token_rows):
                    n = int(rng.integers(2, 13))
                    ids = [2] + [int(v) for v in rng.integers(4, 10, n - 2)] + [3]
                    row = {
                        t.name: (
                            [1] * n
                            if t.name == "attention_mask"
                            else [0] * n
                            if t.name == "token_type_ids"
                            else ids
                        )
                        for t in model.config.inputs
                    }
                    cases.append(row)
                refs.token_cases[name] = cases
                for version in versions[name]:
                    loaded = registry.get(name, "embed", version)
                    for index, row in enumerate(cases):
                        feeds = {k: np.asarray([v], dtype=np.int64) for k, v in row.items()}
                        out = await asyncio.to_thread(loaded.session.run, feeds)
                        refs.tensors[(name, version, index)] = out
    finally:
        await registry.stop()
        pool.shutdown(wait=False, cancel_futures=True)
    return refs


async def _vision_one(
    registry: ModelRegistry,
    inference: Inference,
    task: str,
    name: str,
    version: int,
    image: bytes,
) -> dict[str, Any]:
    ctx = _ctx()
    async with inference.lease(name, task, version, ctx) as model:
        if task == "classify":
            results = await inference.run(
                model,
                model.processor_as(ClassifyProcessor),
                [image],
                ClassifyParams(CLASSIFY["top_k"]),
                ctx,
            )
            body = ClassifyResponse.from_results(name, results).model_dump(mode="json")
        elif task == "detect":
            processor = model.processor_as(DetectProcessor)
            params = processor.params(
                model=name,
                confidence=DETECT["confidence"],
                iou=DETECT["iou"],
                max_detections=DETECT["max_detections"],
                classes=None,
            )
            results = await inference.run(model, processor, [image], params, ctx)
            body = DetectResponse.from_results(name, results).model_dump(mode="json")
        else:
            params = SegmentParams(SEGMENT["confidence"], SEGMENT["mask_format"], SEGMENT["iou"])
            results = await inference.run(
                model, model.processor_as(SegmentProcessor), [image], params, ctx
            )
            body = SegmentResponse.from_results(name, results).model_dump(mode="json")
    result: dict[str, Any] = body["results"][0]
    return result


def compute_references(
    repository: Path,
    images: Sequence[bytes],
    texts: Sequence[str],
    *,
    token_rows: int = 4,
    settings_overrides: dict[str, Any] | None = None,
) -> References:
    """Every model of ``repository`` (every version it serves), every input, run alone here."""
    started = time.monotonic()
    refs = asyncio.run(_compute(repository, images, texts, token_rows, settings_overrides or {}))
    refs.seconds = time.monotonic() - started
    return refs


# -- comparison ------------------------------------------------------------------------------
def _rle_mask(rle: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as coco_mask

    decoded: np.ndarray = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    return decoded.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _png_agreement(a: str, b: str) -> float:
    """Share of pixels with the same class id in two base64 PNG class maps."""
    maps = [np.asarray(Image.open(io.BytesIO(base64.b64decode(x)))) for x in (a, b)]
    if maps[0].shape != maps[1].shape:
        return 0.0
    return float((maps[0] == maps[1]).mean())


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return 1.0 if denom == 0 else float(x @ y / denom)


def compare(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Differences beyond the soak's tolerances between a reference and an answer (JSON), each
    a line naming where; empty when they agree."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {type(actual).__name__}"]
        if expected.get("format") == "rle" and "counts" in expected:
            if actual.get("format") != "rle" or "counts" not in actual:
                return [f"{path}: expected an RLE mask"]
            iou = _iou(_rle_mask(expected), _rle_mask(actual))
            return [] if iou >= MASK_IOU else [f"{path}: mask IoU {iou:.4f} < {MASK_IOU}"]
        if expected.get("format") == "png" and "data" in expected:
            agree = _png_agreement(expected["data"], actual.get("data", ""))
            return [] if agree >= MASK_IOU else [f"{path}: class map agreement {agree:.4f}"]
        problems: list[str] = []
        if set(expected) != set(actual):
            problems.append(f"{path}: keys {sorted(expected)} != {sorted(actual)}")
        for key in expected:
            if key in actual:
                problems += _compare_key(key, expected[key], actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            n = len(actual) if isinstance(actual, list) else type(actual).__name__
            return [f"{path}: expected {len(expected)} items, got {n}"]
        problems = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problems += compare(e, a, f"{path}[{i}]")
        return problems
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return [f"{path}: expected {expected!r}, got {actual!r}"]
        ok = math.isclose(float(expected), float(actual), rel_tol=0.0, abs_tol=SCORE_TOL)
        return [] if ok else [f"{path}: {actual!r} != {expected!r} (± {SCORE_TOL})"]
    return [] if expected == actual else [f"{path}: {actual!r} != {expected!r}"]


def _compare_key(key: str, expected: Any, actual: Any, path: str) -> list[str]:
    if key in ("x1", "y1", "x2", "y2") and isinstance(expected, int | float):
        if not isinstance(actual, int | float) or abs(float(expected) - float(actual)) > BOX_TOL_PX:
            return [f"{path}: {actual!r} != {expected!r} (± {BOX_TOL_PX} px)"]
        return []
    if key == "pixels" and isinstance(expected, int):
        if not isinstance(actual, int) or abs(expected - actual) > max(
            1.0, PIXELS_REL_TOL * expected
        ):
            return [f"{path}: {actual!r} != {expected!r} (± {PIXELS_REL_TOL:.0%})"]
        return []
    if key == "fraction" and isinstance(expected, float):
        if not isinstance(actual, int | float) or abs(expected - actual) > PIXELS_REL_TOL:
            return [f"{path}: {actual!r} != {expected!r} (± {PIXELS_REL_TOL})"]
        return []
    return compare(expected, actual, path)


def compare_vector(expected: Sequence[float], actual: Any, path: str) -> list[str]:
    if not isinstance(actual, list) or len(actual) != len(expected):
        return [f"{path}: expected a vector of {len(expected)}"]
    cos = _cosine(expected, actual)
    return [] if cos >= 1 - COSINE_TOL else [f"{path}: cosine {cos:.7f} < 1 - {COSINE_TOL}"]


def compare_tensors(expected: dict[str, np.ndarray], outputs: Any, path: str) -> list[str]:
    """A v2 inference response's ``outputs`` against the reference run's arrays."""
    if not isinstance(outputs, list):
        return [f"{path}: no outputs"]
    by_name = {o.get("name"): o for o in outputs if isinstance(o, dict)}
    problems = []
    for name, value in expected.items():
        got = by_name.get(name)
        if got is None:
            problems.append(f"{path}.{name}: missing")
            continue
        if list(got.get("shape", [])) != list(value.shape):
            problems.append(f"{path}.{name}: shape {got.get('shape')} != {list(value.shape)}")
            continue
        data = np.asarray(got.get("data", []), dtype=np.float64).reshape(value.shape)
        worst = float(np.max(np.abs(data - value))) if value.size else 0.0
        if worst > TENSOR_TOL:
            problems.append(f"{path}.{name}: max |diff| {worst:.2e} > {TENSOR_TOL}")
    return problems
