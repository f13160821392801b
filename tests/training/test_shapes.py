from __future__ import annotations

import numpy as np

from training.shapes import generate


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
