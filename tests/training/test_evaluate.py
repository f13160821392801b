"""The accuracy scoring of ``training.evaluate``, without a server: the API's JSON shapes built
from the held-out ground truth, then degraded in known ways."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from training.evaluate import (
    detection_scores,
    held_out,
    instance_scores,
    semantic_scores,
)
from training.shapes import CLASSES, SEMANTIC_LABELS, Sample


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    data = held_out(6)
    assert sum(len(s.classes) for s in data) >= 10, "enough objects to score"
    return data


def _detections(
    samples: list[Sample], move: Any = None, relabel: bool = False
) -> list[dict[str, Any]]:
    """``/detect`` results whose boxes are the ground truth, each passed through ``move``."""
    results = []
    for s in samples:
        detections = []
        for box, cls in zip(s.boxes, s.classes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in (move(box) if move else box))
            label = CLASSES[(int(cls) + 1) % len(CLASSES)] if relabel else CLASSES[int(cls)]
            detections.append(
                {"label": label, "score": 0.9, "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}
            )
        results.append({"detections": detections})
    return results


def _shifted(fraction: float) -> Any:
    def move(box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = box
        dx = fraction * (x2 - x1)
        return np.array([x1 + dx, y1, x2 + dx, y2])

    return move


def test_ground_truth_boxes_score_a_perfect_map(samples: list[Sample]) -> None:
    scores = detection_scores(samples, _detections(samples))
    assert scores["images"] == len(samples)
    assert scores["map50"] == pytest.approx(1.0)
    assert scores["map50_95"] == pytest.approx(1.0)


def test_jittered_boxes_lose_map_at_strict_ious_only(samples: list[Sample]) -> None:
    rng = np.random.default_rng(0)

    def jitter(box: np.ndarray) -> np.ndarray:
        w, h = box[2] - box[0], box[3] - box[1]
        return box + rng.uniform(-0.1, 0.1, 4) * np.array([w, h, w, h])

    scores = detection_scores(samples, _detections(samples, jitter))
    assert scores["map50"] == pytest.approx(1.0)  # every box still overlaps its object by > 0.5
    assert 0.0 < scores["map50_95"] < 0.9


def test_boxes_shifted_by_a_fifth_and_by_half_their_width(samples: list[Sample]) -> None:
    fifth = detection_scores(samples, _detections(samples, _shifted(0.2)))  # IoU 0.67
    assert fifth["map50"] == pytest.approx(1.0)
    assert fifth["map50_95"] < 0.5
    half = detection_scores(samples, _detections(samples, _shifted(0.5)))  # IoU 0.33
    assert half["map50"] == 0.0
    assert half["map50_95"] == 0.0


def test_right_boxes_with_wrong_labels_score_nothing(samples: list[Sample]) -> None:
    scores = detection_scores(samples, _detections(samples, relabel=True))
    assert scores["map50"] == 0.0
    assert scores["map50_95"] == 0.0


def test_no_detections_score_zero(samples: list[Sample]) -> None:
    scores = detection_scores(samples, [{"detections": []} for _ in samples])
    assert scores == {"images": len(samples), "map50": 0.0, "map50_95": 0.0}


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        out = inner
    return out


def _png_result(label_map: np.ndarray) -> dict[str, Any]:
    buf = io.BytesIO()
    Image.fromarray(label_map.astype(np.uint8)).save(buf, format="PNG")
    return {"mask": {"data": base64.b64encode(buf.getvalue()).decode()}}


def test_semantic_truth_scores_one_and_eroded_shapes_less(samples: list[Sample]) -> None:
    perfect = semantic_scores(samples, [_png_result(s.semantic) for s in samples])
    assert perfect["images"] == len(samples)
    assert perfect["miou"] == pytest.approx(1.0)
    assert list(perfect["iou"]) == SEMANTIC_LABELS

    def eroded(s: Sample) -> np.ndarray:
        return np.where(_erode(s.semantic > 0, 2), s.semantic, 0)

    worse = semantic_scores(samples, [_png_result(eroded(s)) for s in samples])
    assert 0.5 < worse["miou"] < perfect["miou"]
    for label in SEMANTIC_LABELS[1:]:
        assert worse["iou"][label] < 1.0


def test_semantic_all_background_scores_zero_on_every_shape(samples: list[Sample]) -> None:
    scores = semantic_scores(samples, [_png_result(np.zeros_like(s.semantic)) for s in samples])
    assert [scores["iou"][label] for label in SEMANTIC_LABELS[1:]] == [0.0, 0.0, 0.0]
    assert scores["miou"] < 0.25


def test_semantic_mask_of_the_wrong_size_is_refused(samples: list[Sample]) -> None:
    with pytest.raises(ValueError, match="mask"):
        semantic_scores(samples[:1], [_png_result(samples[0].semantic[:-1])])


def _instances(samples: list[Sample], erode: int = 0) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    results = []
    for s in samples:
        instances = []
        for mask, cls in zip(s.instance_masks(), s.classes, strict=True):
            rle = mask_utils.encode(np.asfortranarray(_erode(mask, erode).astype(np.uint8)))
            instances.append(
                {
                    "label": CLASSES[int(cls)],
                    "score": 0.9,
                    "mask": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
        results.append({"instances": instances})
    return results


def test_instance_truth_scores_one_and_eroded_masks_less(samples: list[Sample]) -> None:
    perfect = instance_scores(samples, _instances(samples))
    assert perfect["images"] == len(samples)
    assert perfect["mask_map50"] == pytest.approx(1.0)
    assert perfect["mask_map50_95"] == pytest.approx(1.0)
    worse = instance_scores(samples, _instances(samples, erode=3))
    assert worse["mask_map50_95"] < 0.95
    assert worse["mask_map50"] <= perfect["mask_map50"]


def test_instances_of_other_labels_are_ignored_and_none_score_zero(samples: list[Sample]) -> None:
    background = [
        {"instances": [{**inst, "label": "background"} for inst in r["instances"]]}
        for r in _instances(samples)
    ]
    assert instance_scores(samples, background) == {
        "images": len(samples),
        "mask_map50": 0.0,
        "mask_map50_95": 0.0,
    }
    assert instance_scores(samples, [{"instances": []} for _ in samples])["mask_map50"] == 0.0
