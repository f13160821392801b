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


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 25)))) for _ in range(n)]


def scenarios(models: Path) -> list[Scenario]:
    out: list[Scenario] = []

    def have(name: str) -> bool:
        return (models / name / "model.onnx").is_file()

    if have("mobilenet_v2"):
        jpeg = photo_jpeg()
        body = json.dumps({"images": [base64.b64encode(jpeg).decode()], "model": "mobilenet_v2"})
        out.append(Scenario("classify", "mobilenet_v2", "/classify", [body], 1, [jpeg]))
    for task, model in (("detect", "shapes-yolo"), ("segment", "shapes-unet")):
        if have(model):
            pngs = [shapes_png(seed=s) for s in range(4)]
            bodies = [
                json.dumps({"images": [base64.b64encode(p).decode()], "model": model}) for p in pngs
            ]
            out.append(Scenario(task, model, f"/{task}", bodies, 1, pngs))
    for model in ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"):
        if have(model):
            texts = sentences(256)
            singles = [json.dumps({"inputs": t, "model": model}) for t in texts]
            suffix = "" if model == "all-MiniLM-L6-v2" else "-int8"
            out.append(Scenario(f"embed{suffix}", model, "/embed", singles, 1, texts))
            batches = [
                json.dumps({"inputs": texts[i : i + 32], "model": model}) for i in range(0, 256, 32)
            ]
            out.append(Scenario(f"embed{suffix}-batch32", model, "/embed", batches, 32, texts))
    return out
