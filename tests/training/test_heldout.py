"""The independent held-out shapes generator and its precision/recall scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.heldout import BACKGROUNDS, SHAPES, _coverage, match, scene, scenes


def test_held_out_scenes_are_a_pure_function_of_seed_and_index() -> None:
    a, b = scene(18, 3), scene(18, 3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.labels == b.labels
    assert not np.array_equal(scene(18, 4).image, a.image)
    assert not np.array_equal(scene(19, 3).image, a.image)


def test_held_out_scenes_follow_the_task_definition() -> None:
    data = scenes(24, seed=5)
    kinds = [s.background for s in data]
    assert kinds[::2] == ["uniform-noise"] * 12  # the background that fooled the old model
    assert set(kinds) <= set(BACKGROUNDS)
    assert len(set(kinds[1::2])) >= 3
    for s in data:
        h, w = s.image.shape[:2]
        assert 320 <= h <= 640
        assert 320 <= w <= 640
        assert 1 <= len(s.labels) <= 8
        assert set(s.labels) <= set(SHAPES)
        assert s.boxes.shape == (len(s.labels), 4)
        sides = np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
        assert (sides >= 12).all()
        assert (sides <= 160 * math.sqrt(2) + 2).all()  # a turned square's box
        assert (s.boxes[:, [0, 1]] >= 0).all()
        assert (s.boxes[:, 2] <= w).all()
        assert (s.boxes[:, 3] <= h).all()


@pytest.mark.parametrize(
    ("label", "turn", "area"),
    [
        ("circle", 0.0, math.pi * 20**2),
        ("square", 0.0, 40**2),
        ("square", 0.6, 40**2),
        ("triangle", 1.1, math.sqrt(3) / 4 * 40**2),
    ],
)
def test_the_rasteriser_draws_each_shape_at_its_size(label: str, turn: float, area: float) -> None:
    alpha = _coverage(label, 50.0, 50.0, 40.0, turn, 100, 100)
    assert alpha.min() == 0.0
    assert alpha.max() == 1.0
    assert alpha.sum() == pytest.approx(area, rel=0.01)  # coverage integrates to the area
    if turn == 0.0:  # a circle's box and an axis-aligned square's are the 40 px around the centre
        ys, xs = np.nonzero(alpha >= 0.5)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [30, 30, 70, 70]


def test_matching_counts_hits_wrong_labels_misses_and_duplicates() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32)
    labels = ("circle", "square", "triangle")
    boxes = np.array(
        [
            [0, 0, 10, 10],  # circle hit
            [1, 1, 10, 10],  # duplicate of the circle: a false positive
            [20, 20, 40, 40],  # right place, wrong label: a false positive, the square missed
            [80, 80, 90, 90],  # nothing there
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    counts = match(boxes, scores, ("circle", "circle", "triangle", "square"), truth, labels)
    assert (counts["circle"].tp, counts["circle"].fp, counts["circle"].fn) == (1, 1, 0)
    assert (counts["square"].tp, counts["square"].fp, counts["square"].fn) == (0, 1, 1)
    assert (counts["triangle"].tp, counts["triangle"].fp, counts["triangle"].fn) == (0, 1, 1)


def test_matching_a_perfect_answer_scores_one() -> None:
    s = scene(18, 0)
    counts = match(s.boxes, np.ones(len(s.labels), np.float32), s.labels, s.boxes, s.labels)
    assert sum(c.tp for c in counts.values()) == len(s.labels)
    assert sum(c.fp + c.fn for c in counts.values()) == 0
