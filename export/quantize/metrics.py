"""How often int8 gives a client the fp32 answer: top-1 agreement, mAP@0.5 against the fp32
detections, mIoU against the fp32 class maps (no labelled data: fp32 is the reference)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_agreement(
    ref: Sequence[np.ndarray], got: Sequence[np.ndarray], *, logits: bool
) -> dict[str, Any]:
    """Top-1 agreement and top-5 containment of ``got`` with ``ref`` (score rows ``[C]``);
    also top-1 agreement where fp32 is confident (top-1 probability > 0.5)."""
    from service.tasks.classification import softmax

    same = contained = confident = confident_same = 0
    for r, g in zip(ref, got, strict=True):
        r, g = r.reshape(-1), g.reshape(-1)
        r_top = int(np.argmax(r))
        g_top5 = np.argsort(-g, kind="stable")[:5]
        same += int(g_top5[0] == r_top)
        contained += int(r_top in g_top5)
        probs = softmax(r) if logits else r
        if probs[r_top] > 0.5:
            confident += 1
            confident_same += int(g_top5[0] == r_top)
    n = len(ref)
    return {
        "images": n,
        "top1_agreement": same / n,
        "top5_contains_fp32_top1": contained / n,
        "confident_images": confident,
        "top1_agreement_confident": confident_same / confident if confident else None,
    }


def average_precision(
    ref: Sequence[tuple[np.ndarray, np.ndarray]],
    got: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou_min: float = 0.5,
) -> tuple[float, int]:
    """mAP@``iou_min`` (COCO's 101-point interpolation, mean over the classes that have a
    reference box) of detections ``got`` = (boxes[N,4], scores[N], classes[N]) per image against
    reference boxes ``ref`` = (boxes[M,4], classes[M]) per image. Returns (mAP, classes)."""
    from service.tasks.detection import box_iou

    classes = sorted({int(c) for _, cls in ref for c in cls})
    aps: list[float] = []
    for c in classes:
        total = sum(int((cls == c).sum()) for _, cls in ref)
        scored: list[tuple[float, bool]] = []
        for (rb, rc), (gb, gs, gc) in zip(ref, got, strict=True):
            targets = rb[rc == c]
            matched = np.zeros(len(targets), dtype=bool)
            mine = np.flatnonzero(gc == c)
            for i in mine[np.argsort(-gs[mine], kind="stable")]:
                hit = False
                if len(targets):
                    ious = np.where(matched, -1.0, box_iou(gb[i], targets))
                    best = int(np.argmax(ious))
                    if ious[best] >= iou_min:
                        matched[best] = hit = True
                scored.append((float(gs[i]), hit))
        scored.sort(key=lambda s: -s[0])
        tp = np.cumsum([hit for _, hit in scored]) if scored else np.zeros(0)
        precision = tp / np.arange(1, len(scored) + 1) if scored else np.zeros(0)
        recall = tp / total if scored else np.zeros(0)
        # precision envelope, sampled at recall 0, 0.01, ..., 1
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if scored else np.zeros(0)
        points = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, points, side="left")
        aps.append(float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx])))
    return (float(np.mean(aps)) if aps else 1.0), len(classes)


def mean_iou(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> tuple[float, int]:
    """mIoU of class maps ``got`` against ``ref`` (intersection and union summed over all
    images per class, mean over the classes present in either). Returns (mIoU, classes)."""
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for r, g in zip(ref, got, strict=True):
        for c in np.union1d(np.unique(r), np.unique(g)).tolist():
            a, b = r == c, g == c
            inter[c] = inter.get(c, 0) + int((a & b).sum())
            union[c] = union.get(c, 0) + int((a | b).sum())
    ious = [inter[c] / union[c] for c in union if union[c]]
    return (float(np.mean(ious)) if ious else 1.0), len(ious)
