"""The naive baseline: one model behind minimal FastAPI routes that call ``session.run`` per
request (no batcher, no worker pool; sync routes run in Starlette's thread pool). It reuses
ortserve's processors (the one factory) so that only the serving strategy differs.

    python -m benchmarks.naive --model-dir models/all-MiniLM-L6-v2 --port 8100
"""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import Body, FastAPI

from service.model_config import load_model_config
from service.tasks.classification import ClassifyParams, ClassifyProcessor
from service.tasks.detection import DetectParams, DetectProcessor
from service.tasks.embedding import EmbedParams, EmbedProcessor
from service.tasks.factory import processor_for
from service.tasks.segmentation import SegmentParams


def create_naive_app(folder: Path) -> FastAPI:
    config, labels = load_model_config(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(
        str(folder / config.model_file), options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in config.outputs]
    app = FastAPI()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batched = {k: v[None] for k, v in feeds.items()} if config.batched else feeds
        values = session.run(outputs, batched)
        return {n: (v[0] if config.batched else v) for n, v in zip(outputs, values, strict=True)}

    processor = processor_for(folder, config, labels, max_image_pixels=40_000_000)

    if isinstance(processor, EmbedProcessor):

        @app.post("/embed")
        def embed(body: dict[str, Any] = Body()) -> dict[str, Any]:  # noqa: B008
            texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            vectors = []
            for feeds, meta in processor.encode(texts, truncate=True):
                vectors.append(processor.finish(run(feeds), meta, EmbedParams()).vector.tolist())
            return {"embeddings": vectors}

    else:
        vision = processor

        @app.post(f"/{config.task}")
        def images(body: dict[str, Any] = Body()) -> dict[str, Any]:  # noqa: B008
            results: list[Any] = []
            for item in body["images"]:
                feeds, geo = vision.prepare(base64.b64decode(item))
                out = run(feeds)
                if isinstance(vision, ClassifyProcessor):
                    preds = vision.finish(out, geo, ClassifyParams(5)).predictions
                    results.append([{"label": p.label, "score": p.score} for p in preds])
                elif isinstance(vision, DetectProcessor):
                    det = vision.finish(out, geo, DetectParams()).detections
                    results.append({"boxes": det.boxes.tolist(), "scores": det.scores.tolist()})
                else:
                    seg = vision.finish(out, geo, SegmentParams())
                    results.append({"png": getattr(seg, "png", None)})
            return {"results": results}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(
        create_naive_app(args.model_dir), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
