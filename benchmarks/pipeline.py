"""``make bench``'s pipeline scenario: detect → crop → classify on the server against the
client-side alternative, images/s of both under the same closed-loop load.

- server-side: ``POST /pipelines/detect-classify`` with the photo; the server decodes it once,
  crops the decoded pixels and classifies every crop through mobilenet_v2's batcher;
- client-side: what a client does without pipelines: ``POST /detect`` (nanodet-coco, the
  pipeline's detect settings), decode the photo here, crop the same padded boxes, encode each crop
  as JPEG and ``POST /classify`` them (mobilenet_v2, one request per image with all its crops).

- detect only: ``POST /detect`` alone, the detector's share of both: no pipeline on this detector
  can serve more images/s than this, so ``detect only / client-side`` is the most any server-side
  pipeline could gain here.

All use the pipeline's own settings (``pipelines/detect-classify.yaml``) and the same photos,
so they compute the same thing; the client-side work (decode, crop, encode) runs in this process,
on the same cores as the server, as a client on the same host would.

    python -m benchmarks.pipeline [--models models] [--concurrency 8] [--duration-s 10] [--repeat 3]

starts ortserve on the three models it needs and prints one table; ``benchmarks.run`` (``make
bench``) runs the same rounds against its own server and adds them to its report.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.harness import ROOT, ortserve_server, save_results
from service.model_config import PipelineConfig, load_pipeline_config
from service.tasks.detection import Detections
from service.tasks.pipeline import plan_crops

PIPELINE = "detect-classify"
NEEDED = ("nanodet-coco", "mobilenet_v2", PIPELINE)
WAYS = ("server_side", "client_side", "detect_only")
PHOTOS = ("chelsea", "astronaut", "coffee", "motorcycle_left")


def photos(width: int = 640) -> list[bytes]:
    """scikit-image's sample photos as JPEGs ``width`` pixels wide (quality 90)."""
    import skimage.data  # test images shipped with scikit-image

    out = []
    for name in PHOTOS:
        img = Image.open(Path(skimage.data.__file__).parent / f"{name}.png").convert("RGB")
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def available(models: Path) -> bool:
    return all((models / name / "config.yaml").is_file() for name in NEEDED)


class Client:
    """One way of getting an image's classified detections; ``__call__`` → detections count."""

    def __init__(self, http: httpx.AsyncClient, config: PipelineConfig, pool: ThreadPoolExecutor):
        self.http = http
        self.config = config
        self.pool = pool

    async def server_side(self, image: bytes) -> int:
        body = {"images": [base64.b64encode(image).decode()]}
        r = await self.http.post(f"/pipelines/{PIPELINE}", json=body)
        r.raise_for_status()
        return len(r.json()["results"][0]["detections"])

    async def detect(self, image: bytes) -> dict[str, Any]:
        detect = self.config.detect
        body = {
            "images": [base64.b64encode(image).decode()],
            "model": detect.model,
            "confidence": detect.confidence,
            "iou": detect.iou,
            "max_detections": detect.max_detections,
        }
        r = await self.http.post("/detect", json=body)
        r.raise_for_status()
        result: dict[str, Any] = r.json()["results"][0]
        return result

    async def detect_only(self, image: bytes) -> int:
        return len((await self.detect(image))["detections"])

    async def client_side(self, image: bytes) -> int:
        crop, classify = self.config.crop, self.config.per_crop
        result = await self.detect(image)
        if not result["detections"]:
            return 0
        loop = asyncio.get_running_loop()
        crops = await loop.run_in_executor(self.pool, _crops, image, result, crop)
        if crops:
            body = {
                "images": [base64.b64encode(c).decode() for c in crops],
                "model": classify.model,
                "top_k": classify.top_k,
            }
            r = await self.http.post("/classify", json=body)
            r.raise_for_status()
        return len(result["detections"])


def _crops(image: bytes, result: dict[str, Any], crop: Any) -> list[bytes]:
    """What a client does: decode the photo, cut the padded boxes (the pipeline's own plan),
    encode each as JPEG for the next request."""
    picture = Image.open(io.BytesIO(image)).convert("RGB")
    boxes = [[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in result["detections"]]
    n = len(boxes)
    det = Detections(
        np.asarray(boxes, np.float32).reshape(n, 4), np.zeros(n, np.float32), np.zeros(n, np.int64)
    )
    plan = plan_crops(
        det,
        result["width"],
        result["height"],
        padding=crop.padding,
        min_size=crop.min_size,
        max_crops=crop.max_crops,
    )
    out = []
    for box in plan.crops:
        buf = io.BytesIO()
        picture.crop(box).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


async def _closed_loop(
    one: Callable[[bytes], Awaitable[int]], images: list[bytes], concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await one(images[i % len(images)])
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    lat = np.asarray(latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "images": len(latencies),
        "errors": len(errors),
        "images_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
    }


def _batches(metrics: str, model: str) -> tuple[float, float]:
    """(items, runs) of ``model`` so far, from ortserve_batch_size in /metrics."""
    values = []
    for suffix in ("sum", "count"):
        found = re.search(
            rf'^ortserve_batch_size_{suffix}{{model="{re.escape(model)}"}} ([\d.e+]+)$',
            metrics,
            re.M,
        )
        values.append(float(found.group(1)) if found else 0.0)
    return values[0], values[1]


async def measure(
    url: str, models: Path, concurrency: int, seconds: float, first: str
) -> dict[str, dict[str, Any]]:
    """One round: each way for ``seconds`` at ``concurrency`` (``first`` goes first), with the
    classifier's mean batch size over it."""
    config = load_pipeline_config(models / PIPELINE)
    images = photos()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    out: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            client = Client(http, config, pool)
            ways = {
                "server_side": client.server_side,
                "client_side": client.client_side,
                "detect_only": client.detect_only,
            }
            order = [first, *(w for w in ways if w != first)]
            for way in order:
                await ways[way](images[0])  # warm: connections, arenas
                before = _batches((await http.get("/metrics")).text, config.per_crop.model)
                run = await _closed_loop(ways[way], images, concurrency, seconds)
                after = _batches((await http.get("/metrics")).text, config.per_crop.model)
                items, runs = after[0] - before[0], after[1] - before[1]
                run["classifier_mean_batch"] = items / runs if runs else None
                out[way] = run
    return out


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the rounds, and the per-round ratios server-side / client-side and detect
    only / client-side (the ceiling)."""

    def ratios(way: str) -> list[float]:
        return [r[way]["images_per_s"] / r["client_side"]["images_per_s"] for r in rounds]

    return {
        "concurrency": rounds[0]["server_side"]["concurrency"],
        **{
            way: {
                "images_per_s": float(np.median([r[way]["images_per_s"] for r in rounds])),
                "p50_ms": float(np.median([r[way]["p50_ms"] or 0.0 for r in rounds])),
                "p95_ms": float(np.median([r[way]["p95_ms"] or 0.0 for r in rounds])),
                "errors": sum(r[way]["errors"] for r in rounds),
                "classifier_mean_batch": float(
                    np.median([r[way]["classifier_mean_batch"] or 0.0 for r in rounds])
                ),
            }
            for way in WAYS
        },
        "server_over_client": {
            "median": float(np.median(ratios("server_side"))),
            "rounds": ratios("server_side"),
        },
        "ceiling_over_client": {
            "median": float(np.median(ratios("detect_only"))),
            "rounds": ratios("detect_only"),
        },
        "rounds": rounds,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"pipeline {PIPELINE} (nanodet-coco → crop → mobilenet_v2), 640 px photos, "
        f"concurrency {result['concurrency']}:",
        "| way | images/s | p50 ms | p95 ms | errors | classifier mean batch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        "server_side": "server-side pipeline",
        "client_side": "client-side (/detect + crop + /classify)",
        "detect_only": "/detect alone (the ceiling)",
    }
    for way, label in names.items():
        r = result[way]
        lines.append(
            f"| {label} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
            f"{r['errors']} | {r['classifier_mean_batch']:.1f} |"
        )
    ratio = result["server_over_client"]
    lines.append(
        f"server-side / client-side images/s: {ratio['median']:.2f} (median of per-round ratios "
        + ", ".join(f"{x:.2f}" for x in ratio["rounds"])
        + ")"
    )
    ceiling = result["ceiling_over_client"]
    lines.append(
        f"/detect alone / client-side images/s: {ceiling['median']:.2f} (the most a server-side "
        "pipeline on this detector could gain; rounds "
        + ", ".join(f"{x:.2f}" for x in ceiling["rounds"])
        + ")"
    )
    return "\n".join(lines)


def rounds(url: str, models: Path, concurrency: int, seconds: float, repeat: int) -> dict[str, Any]:
    """``repeat`` interleaved rounds (the way that goes first alternates), summarised."""
    done = []
    for r in range(repeat):
        first = "server_side" if r % 2 == 0 else "client_side"
        print(f"[round {r + 1}/{repeat}] pipeline", flush=True)
        done.append(asyncio.run(measure(url, models, concurrency, seconds, first)))
    return summary(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=10.0, help="per way and round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    models = args.models.resolve()
    if not available(models):
        raise SystemExit(f"{', '.join(NEEDED)} are not all in {models}: run `make models` first")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name in NEEDED:  # only what the scenario needs: a quicker start, a quieter server
            (repo / name).symlink_to(models / name)
        with ortserve_server(repo) as (url, _):
            result = rounds(url, repo, args.concurrency, args.duration_s, args.repeat)
    table = render(result)
    print(table)
    save_results(args.out, "bench-pipeline", {"pipeline": result}, table)


if __name__ == "__main__":
    main()
