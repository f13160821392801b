"""Accuracy of the shapes models measured through the HTTP API on held-out generated images.

    python -m training.evaluate --url http://127.0.0.1:8000 [--images N] [--only detect]

Detection mAP@0.5 and mAP@0.5:0.95 and instance mask mAP@0.5 and @0.5:0.95 come from pycocotools'
COCOeval; semantic mean IoU from a confusion matrix over all pixels at original resolution. The
scoring (``*_scores``: held-out samples + the API's JSON results → metrics) is separate from the
HTTP calls (``evaluate_*``), so it is tested on its own (tests/training/test_evaluate.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
from typing import Any

import httpx
import numpy as np
from PIL import Image

from training.shapes import CLASSES, SEMANTIC_LABELS, Sample, generate

EVAL_SEED_BASE = 1_000_000  # training draws seeds far below this


def held_out(count: int, offset: int = 0) -> list[Sample]:
    return [generate(EVAL_SEED_BASE + offset + i) for i in range(count)]


def _png(sample: Sample) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(sample.image).save(buf, format="PNG")
    return buf.getvalue()


def _post(
    client: httpx.Client, path: str, samples: list[Sample], data: dict[str, str]
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(samples), 4):
        chunk = samples[start : start + 4]
        files = [("file", (f"{i}.png", _png(s), "image/png")) for i, s in enumerate(chunk)]
        r = client.post(path, files=files, data=data)
        r.raise_for_status()
        results.extend(r.json()["results"])
    return results


def _coco_eval(
    gt: dict[str, Any], dets: list[dict[str, Any]], iou_type: str
) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not dets:
            return 0.0, 0.0
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])  # AP@0.5, AP@0.5:0.95


def _gt(samples: list[Sample], with_masks: bool) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, s in enumerate(samples):
        h, w = s.semantic.shape
        images.append({"id": image_id, "width": w, "height": h})
        masks = s.instance_masks() if with_masks else None
        for k, (box, cls) in enumerate(zip(s.boxes, s.classes, strict=True)):
            x1, y1, x2, y2 = (float(v) for v in box)
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(cls) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[k].astype(np.uint8)))
                ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
                ann["area"] = float(masks[k].sum())
            annotations.append(ann)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detection_scores(samples: list[Sample], results: list[dict[str, Any]]) -> dict[str, float]:
    """Box mAP@0.5 and mAP@0.5:0.95 of ``/detect`` results (the API's JSON, one per sample)."""
    dets = []
    for image_id, result in enumerate(results):
        for d in result["detections"]:
            b = d["box"]
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": CLASSES.index(d["label"]) + 1,
                    "score": d["score"],
                    "bbox": [b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]],
                }
            )
    map50, map5095 = _coco_eval(_gt(samples, with_masks=False), dets, "bbox")
    return {"images": len(samples), "map50": map50, "map50_95": map5095}


def semantic_scores(samples: list[Sample], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean IoU over background and the classes of ``/segment`` semantic results (a PNG label map
    each), from one confusion matrix over all pixels at the original resolution."""
    k = len(SEMANTIC_LABELS)
    confusion = np.zeros((k, k), np.int64)
    for s, result in zip(samples, results, strict=True):
        pred = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask"]["data"]))))
        if pred.shape != s.semantic.shape:
            raise ValueError(f"mask {pred.shape} for an image of {s.semantic.shape}")
        confusion += np.bincount(
            s.semantic.ravel().astype(np.int64) * k + pred.ravel(), minlength=k * k
        ).reshape(k, k)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    return {
        "images": len(samples),
        "miou": float(iou.mean()),
        "iou": dict(zip(SEMANTIC_LABELS, iou.round(4).tolist(), strict=True)),
    }


def instance_scores(samples: list[Sample], results: list[dict[str, Any]]) -> dict[str, float]:
    """Mask mAP@0.5 and mAP@0.5:0.95 of ``/segment`` instance results (COCO RLE masks)."""
    dets = []
    for image_id, result in enumerate(results):
        for inst in result["instances"]:
            if inst["label"] not in CLASSES:
                continue
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": CLASSES.index(inst["label"]) + 1,
                    "score": inst["score"],
                    "segmentation": {
                        "size": inst["mask"]["size"],
                        "counts": inst["mask"]["counts"],
                    },
                }
            )
    map50, map5095 = _coco_eval(_gt(samples, with_masks=True), dets, "segm")
    return {"images": len(samples), "mask_map50": map50, "mask_map50_95": map5095}


# The image counts the published numbers (README, docs/detection-segmentation.md) are measured on
DETECTION_IMAGES, SEMANTIC_IMAGES, INSTANCE_IMAGES = 80, 60, 40


def evaluate_detection(
    url: str, model: str = "shapes-yolo", images: int = DETECTION_IMAGES
) -> dict[str, float]:
    samples = held_out(images)
    with httpx.Client(base_url=url, timeout=120) as client:
        results = _post(
            client,
            "/detect",
            samples,
            {"model": model, "confidence": "0.01", "max_detections": "100"},
        )
    return detection_scores(samples, results)


def evaluate_semantic(
    url: str, model: str = "shapes-unet", images: int = SEMANTIC_IMAGES
) -> dict[str, Any]:
    samples = held_out(images, offset=10_000)
    with httpx.Client(base_url=url, timeout=120) as client:
        results = _post(client, "/segment", samples, {"model": model})
    return semantic_scores(samples, results)


def evaluate_instance(
    url: str, model: str = "shapes-maskrcnn", images: int = INSTANCE_IMAGES
) -> dict[str, float]:
    samples = held_out(images, offset=20_000)
    with httpx.Client(base_url=url, timeout=300) as client:
        results = _post(client, "/segment", samples, {"model": model, "confidence": "0.05"})
    return instance_scores(samples, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--images",
        type=int,
        help=f"held-out images per model (default {DETECTION_IMAGES} detection, "
        f"{SEMANTIC_IMAGES} semantic, {INSTANCE_IMAGES} instance)",
    )
    parser.add_argument("--only", choices=["detect", "semantic", "instance"])
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if args.only in (None, "detect"):
        report["detect"] = evaluate_detection(args.url, images=args.images or DETECTION_IMAGES)
    if args.only in (None, "semantic"):
        report["semantic"] = evaluate_semantic(args.url, images=args.images or SEMANTIC_IMAGES)
    if args.only in (None, "instance"):
        report["instance"] = evaluate_instance(args.url, images=args.images or INSTANCE_IMAGES)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
