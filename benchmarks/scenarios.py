"""The benchmark's scenarios: one model and one request shape each, with pre-encoded request
bodies for the load generator and the raw inputs for the in-process limit."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "small",
    "children",
    "watch",
    "from",
    "the",
    "old",
    "stone",
    "bridge",
    "near",
    "the",
    "river",
    "and",
    "a",
    "man",
    "sells",
    "fresh",
    "bread",
    "to",
    "tourists",
    "in",
    "the",
    "market",
    "square",
]


@dataclass
class Scenario:
    name: str
    model: str
    path: str
    bodies: list[str]
    items_per_request: int
    samples: list[Any]  # raw inputs for the limit measurement (image bytes or texts)


def photo_jpeg(w: int = 640, h: int = 480) -> bytes:
    from skimage import data  # test images shipped with scikit-image

    coffee = data.coffee()  # type: ignore[no-untyped-call]
    img = Image.fromarray(coffee).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def shapes_png(w: int = 640, h: int = 480, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x, y, s = (
            int(rng.integers(0, w - 120)),
            int(rng.integers(0, h - 120)),
            int(rng.integers(30, 110)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x, y, x + s, y + s), fill=colour)
        elif kind == 1:
            draw.rectangle((x, y, x + s, y + s), fill=colour)
        else:
            draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# 15 tokens with MiniLM's tokenizer, [CLS] and [SEP] included
SAME_SENTENCE = "Batched inference keeps every core busy while requests wait in line."


def _variant(model: str) -> str:
    """``-int8`` for a model's int8 variant, else nothing: scenario ``X-int8`` beside ``X``."""
    return "-int8" if model.endswith("-int8") else ""


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 25)))) for _ in range(n)]


def scenarios(models: Path) -> list[Scenario]:
    out: list[Scenario] = []

    def have(name: str) -> bool:
        return (models / name / "model.onnx").is_file()

    jpeg = photo_jpeg()
    for model in ("mobilenet_v2", "mobilenet_v2-int8"):
        if have(model):
            body = json.dumps({"images": [base64.b64encode(jpeg).decode()], "model": model})
            out.append(
                Scenario(f"classify{_variant(model)}", model, "/classify", [body], 1, [jpeg])
            )
    # the default detector on the same photo; the shapes models on their own kind of picture
    for model in ("nanodet-coco", "nanodet-coco-int8"):
        if have(model):
            body = json.dumps({"images": [base64.b64encode(jpeg).decode()], "model": model})
            out.append(Scenario(f"detect{_variant(model)}", model, "/detect", [body], 1, [jpeg]))
    for task, model in (("detect-shapes", "shapes-yolo"), ("segment", "shapes-unet")):
        if have(model):
            pngs = [shapes_png(seed=s) for s in range(4)]
            bodies = [
                json.dumps({"images": [base64.b64encode(p).decode()], "model": model}) for p in pngs
            ]
            path = "/" + task.split("-")[0]
            out.append(Scenario(task, model, path, bodies, 1, pngs))
    for model in ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"):
        if have(model):
            texts = sentences(256)
            singles = [json.dumps({"inputs": t, "model": model}) for t in texts]
            suffix = _variant(model)
            out.append(Scenario(f"embed{suffix}", model, "/embed", singles, 1, texts))
            batches = [
                json.dumps({"inputs": texts[i : i + 32], "model": model}) for i in range(0, 256, 32)
            ]
            out.append(Scenario(f"embed{suffix}-batch32", model, "/embed", batches, 32, texts))
    if have("all-MiniLM-L6-v2"):
        # one identical sentence of 15 tokens per request: the limit is the model at its best
        # batch on that same sentence, so padding plays no part on either side
        same = [json.dumps({"inputs": SAME_SENTENCE, "model": "all-MiniLM-L6-v2"})]
        out.append(Scenario("embed-same", "all-MiniLM-L6-v2", "/embed", same, 1, [SAME_SENTENCE]))
    return out
