from __future__ import annotations

import numpy as np
import pytest

from training.shapes import VARIED_BACKGROUNDS, generate


def test_generation_is_deterministic_per_seed() -> None:
    a, b = generate(42), generate(42)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(generate(43).image, a.image)


def test_ground_truth_is_exact_and_every_object_stays_visible() -> None:
    for seed in range(30):
        s = generate(seed)
        h, w = s.semantic.shape
        assert 320 <= h <= 640
        assert 320 <= w <= 640
        assert 1 <= len(s.classes) <= 8
        masks = s.instance_masks()
        for k, box in enumerate(s.boxes):
            ys, xs = np.nonzero(masks[k])
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert masks[k].sum() >= 100
            # semantic ids are class + 1 wherever the instance is visible
            assert (s.semantic[masks[k]] == s.classes[k] + 1).all()
        assert ((s.semantic > 0) == (s.instance_map > 0)).all()


@pytest.mark.parametrize("kind", VARIED_BACKGROUNDS)
def test_every_background_kind_keeps_the_ground_truth_exact(kind: str) -> None:
    for seed in range(4):
        s = generate(seed, backgrounds=[kind])
        masks = s.instance_masks()
        for k, box in enumerate(s.boxes):
            ys, xs = np.nonzero(masks[k])
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # each shape is one flat colour, whatever lies under it
            assert len(np.unique(s.image[masks[k]], axis=0)) == 1


def test_varied_samples_mix_background_kinds_and_small_images() -> None:
    pytest.importorskip("torch")  # training.common is the trainers' (checkpoints, schedules)
    from training.common import SMALL_EVERY, varied_samples

    pool = list(varied_samples(10, seed=3))
    sides = [max(s.image.shape[:2]) for s in pool]
    assert all(side <= 320 for side in sides[::SMALL_EVERY])
    assert all(min(s.image.shape[:2]) >= 320 for i, s in enumerate(pool) if i % SMALL_EVERY)
    # the background kinds differ: compare the spread of each image's non-shape pixels
    spreads = {round(float(s.image[s.semantic == 0].std()), -1) for s in pool}
    assert len(spreads) >= 3
