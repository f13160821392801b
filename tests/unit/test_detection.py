from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from service.model_config import ImagePreprocessing
from service.tasks.detection import (
    MAX_NMS_CANDIDATES,
    MIN_CONFIDENCE,
    DetectParams,
    batched_nms,
    box_iou,
    decode_nanodet,
    decode_torchvision,
    decode_yolov5,
    decode_yolov8,
    nanodet_centers,
    nms,
    to_original,
)
from service.tasks.imaging import DecodedImage, input_tensor


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_ones() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32
    )
    scores = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)
    # IoU(0,1) = 81/119 = 0.68; IoU(3,0) = 0.9; box 2 overlaps nothing
    assert nms(boxes, scores, 0.5, 100).tolist() == [3, 2]
    assert nms(boxes, scores, 0.95, 100).tolist() == [3, 0, 1, 2]
    assert nms(boxes, scores, 0.5, 1).tolist() == [3]


def test_nms_is_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert batched_nms(boxes, scores, np.array([0, 1]), 0.5, 10).tolist() == [0, 1]
    assert batched_nms(boxes, scores, np.array([1, 1]), 0.5, 10).tolist() == [0]


def _greedy_one_at_a_time(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float, max_keep: int
) -> list[int]:
    """The textbook loop: keep the best, drop its class's boxes over ``iou``, repeat."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        same = class_ids[rest] == class_ids[best]
        overlap = np.zeros(rest.size)
        overlap[same] = box_iou(boxes[best], boxes[rest[same]])
        order = rest[overlap <= iou]
    return keep


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("iou", [0.1, 0.45, 0.8])
def test_blocked_nms_keeps_what_the_one_at_a_time_loop_keeps(seed: int, iou: float) -> None:
    rng = np.random.default_rng(seed)
    n = 1500  # several blocks, crowded enough that most boxes overlap others
    xy = rng.random((n, 2)) * 200
    boxes = np.concatenate([xy, xy + rng.random((n, 2)) * 40 + 2], 1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    scores[rng.integers(0, n, 200)] = 0.5  # ties: the lower index goes first
    class_ids = rng.integers(0, 3, n)
    for max_keep in (n, 300, 7):
        expected = _greedy_one_at_a_time(boxes, scores, class_ids, iou, max_keep)
        assert batched_nms(boxes, scores, class_ids, iou, max_keep).tolist() == expected


def test_nms_candidate_cap_bounds_the_work_and_keeps_the_best_scores() -> None:
    n = 100_000
    rng = np.random.default_rng(0)
    out = np.zeros((5, n), dtype=np.float32)  # yolov8 layout, one class, all at score 1.0
    out[:2] = rng.random((2, n)) * 640
    out[2:4] = 20
    out[4] = 1.0
    params = DetectParams(confidence=0.0, iou=0.99, max_detections=10_000)
    started = time.process_time()
    det = decode_yolov8(out, params)
    # the uncapped greedy loop took ~30 s of CPU here; the cap, ~1 s
    assert time.process_time() - started < 10
    assert len(det) == 10_000
    assert n > MAX_NMS_CANDIDATES
    # only the best-scored candidates take part: a low-scored box overlapping nothing is never
    # kept when max_candidates better ones come before it
    xy = rng.random((1000, 2)) * 10_000
    boxes = np.concatenate([xy, xy + 1], 1).astype(np.float32)  # 1×1 boxes: no overlaps
    scores = rng.random(1000).astype(np.float32)
    kept = nms(boxes, scores, 0.5, 1000, max_candidates=50)
    assert sorted(kept.tolist()) == sorted(np.argsort(-scores)[:50].tolist())
    assert scores[kept].tolist() == sorted(scores[kept].tolist(), reverse=True)


def test_iou_one_suppresses_nothing_and_returns_the_best_first() -> None:
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (5, 1))
    scores = np.array([0.1, 0.5, 0.3, 0.5, 0.9], np.float32)
    assert nms(boxes, scores, 1.0, 10).tolist() == [4, 1, 3, 2, 0]
    assert nms(boxes, scores, 1.0, 2).tolist() == [4, 1]
    assert nms(boxes, scores, 0.99, 10).tolist() == [4]


def test_confidence_has_a_floor_whatever_the_request_asks() -> None:
    out = np.array(
        [[10, 30], [10, 30], [4, 4], [4, 4], [MIN_CONFIDENCE / 2, MIN_CONFIDENCE]], np.float32
    )
    det = decode_yolov8(out, DetectParams(confidence=0.0))
    assert det.scores.tolist() == [pytest.approx(MIN_CONFIDENCE)]


def test_decode_yolov8_converts_centres_and_applies_thresholds_and_class_filter() -> None:
    # 3 candidates, 2 classes: columns are candidates
    out = np.array(
        [
            [50, 52, 200],  # cx
            [50, 50, 100],  # cy
            [20, 20, 40],  # w
            [10, 10, 40],  # h
            [0.9, 0.85, 0.1],  # class 0
            [0.1, 0.2, 0.6],  # class 1
        ],
        dtype=np.float32,
    )
    det = decode_yolov8(out, DetectParams(confidence=0.25, iou=0.45))
    assert det.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(det.boxes[0], [40, 45, 60, 55])
    np.testing.assert_allclose(det.scores, [0.9, 0.6], rtol=1e-6)
    only_1 = decode_yolov8(out, DetectParams(class_ids=frozenset({1})))
    assert only_1.class_ids.tolist() == [1]
    assert len(decode_yolov8(out, DetectParams(confidence=0.95))) == 0


def test_decode_yolov5_multiplies_objectness_into_class_scores() -> None:
    out = np.array([[50, 50, 20, 10, 0.5, 0.9, 0.1], [10, 10, 4, 4, 0.1, 1.0, 0.0]], np.float32)
    det = decode_yolov5(out, DetectParams(confidence=0.25))
    assert det.class_ids.tolist() == [0]
    np.testing.assert_allclose(det.scores, [0.45], rtol=1e-6)


def test_nanodet_points_sit_mid_cell_per_stride_in_row_major_order() -> None:
    centers = nanodet_centers(64, 32)
    assert centers.shape == (8 * 4 + 4 * 2 + 2 * 1, 3)  # strides 8, 16, 32
    assert centers[0].tolist() == [4, 4, 8]
    assert centers[1].tolist() == [12, 4, 8]  # then along the row
    assert centers[8].tolist() == [4, 12, 8]
    assert centers[32].tolist() == [8, 8, 16]  # the first stride-16 point
    assert centers[-1].tolist() == [48, 16, 32]


def test_decode_nanodet_takes_the_expected_distance_of_each_side() -> None:
    classes, bins = 3, 5
    centers = nanodet_centers(64, 64)
    out = np.zeros((len(centers), classes + 4 * bins), dtype=np.float32)
    point = 64 + 4 + 1  # stride 16, row 1, column 1: centre (24, 24)
    assert centers[point].tolist() == [24, 24, 16]
    out[point, 2] = 0.9
    sides = out[point, classes:].reshape(4, bins)
    sides[:] = -50.0
    sides[0, 1] = sides[1, 0] = sides[3, 4] = 50.0  # left 1, top 0, bottom 4 strides
    sides[2, 2] = sides[2, 3] = 50.0  # right: half at 2, half at 3 → 2.5 strides
    out[3, 1] = 0.2  # a point under the threshold
    det = decode_nanodet(out, centers, classes, DetectParams(confidence=0.25))
    assert det.class_ids.tolist() == [2]
    np.testing.assert_allclose(det.scores, [0.9])
    np.testing.assert_allclose(det.boxes, [[24 - 16, 24 - 0, 24 + 40, 24 + 64]], atol=1e-4)
    with pytest.raises(ValueError, match="nanodet output"):
        decode_nanodet(out[:-1], centers, classes, DetectParams())


def test_decode_torchvision_filters_and_sorts() -> None:
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], np.float32)
    det = decode_torchvision(
        boxes, np.array([1, 2, 1]), np.array([0.3, 0.9, 0.1], np.float32), DetectParams()
    )
    assert det.class_ids.tolist() == [2, 1]
    assert det.boxes[0].tolist() == [2, 2, 3, 3]


@pytest.mark.parametrize(("w", "h"), [(640, 480), (480, 640), (1000, 100), (7, 9), (64, 64)])
def test_letterbox_round_trip_maps_input_boxes_back_to_the_original(w: int, h: int) -> None:
    spec = ImagePreprocessing(resize="letterbox", width=64, height=64)
    decoded = DecodedImage(Image.new("RGB", (w, h)), w, h)
    tensor, geo = input_tensor(decoded, spec)
    assert tensor.shape == (3, 64, 64)
    box = np.array([[0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]], np.float32)
    in_input = np.empty_like(box)
    in_input[:, [0, 2]] = box[:, [0, 2]] * geo.scale_x + geo.pad_x
    in_input[:, [1, 3]] = box[:, [1, 3]] * geo.scale_y + geo.pad_y
    assert (in_input >= 0).all()
    assert (in_input <= 64).all()
    np.testing.assert_allclose(to_original(in_input, geo), box, atol=1e-3)


def test_letterbox_pads_symmetrically_with_the_pad_value() -> None:
    spec = ImagePreprocessing(resize="letterbox", width=64, height=64, pad_value=114)
    white = DecodedImage(Image.new("RGB", (128, 64), (255, 255, 255)), 128, 64)
    tensor, geo = input_tensor(white, spec)
    assert (geo.pad_x, geo.pad_y) == (0, 16)
    np.testing.assert_allclose(tensor[:, :16], 114 / 255, atol=1e-6)
    np.testing.assert_allclose(tensor[:, 16:48], 1.0, atol=1e-6)
    np.testing.assert_allclose(tensor[:, 48:], 114 / 255, atol=1e-6)
