from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from service.tasks.imaging import Geometry
from service.tasks.segmentation import (
    class_areas,
    instances_from_maskrcnn,
    png_base64,
    rle_decode,
    rle_encode,
    semantic_class_map,
)


@pytest.mark.parametrize("seed", range(6))
def test_rle_matches_pycocotools_both_ways(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, size=2)
    mask = rng.random((h, w)) > rng.random()
    if seed == 0:
        mask[:] = True  # starts with a foreground run
    if seed == 1:
        mask[:] = False
    ours = rle_encode(mask)
    theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode()
    assert ours["size"] == [int(h), int(w)]
    decoded = mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    np.testing.assert_array_equal(rle_decode(ours), mask)


def _geo(w: int, h: int, in_w: int, in_h: int) -> Geometry:
    return Geometry(in_w / w, in_h / h, 0, 0, w, h, in_w, in_h)


def test_semantic_class_map_is_at_original_size_and_follows_the_logits() -> None:
    logits = np.zeros((3, 8, 8), np.float32)
    logits[1, :, 4:] = 5.0  # right half: class 1
    logits[2, :4, :4] = 5.0  # top-left: class 2
    class_map = semantic_class_map(logits, _geo(40, 20, 8, 8))
    assert class_map.shape == (20, 40)
    assert class_map[2, 35] == 1
    assert class_map[2, 5] == 2
    assert class_map[18, 5] == 0
    areas = {a.class_id: a for a in class_areas(class_map)}
    assert areas[1].fraction == pytest.approx(0.5, abs=0.05)
    png = Image.open(io.BytesIO(base64.b64decode(png_base64(class_map))))
    np.testing.assert_array_equal(np.asarray(png), class_map)


def test_semantic_class_map_ignores_letterbox_padding() -> None:
    logits = np.zeros((2, 16, 16), np.float32)
    logits[1, 4:12, :] = 1.0  # the content band of a 2:1 image letterboxed into 16×16
    geo = Geometry(16 / 64, 16 / 64, 0, 4, 64, 32, 16, 16)
    class_map = semantic_class_map(logits, geo)
    assert class_map.shape == (32, 64)
    assert (class_map == 1).mean() > 0.95


def test_instances_are_thresholded_scaled_and_rle_encoded() -> None:
    masks = np.zeros((2, 1, 10, 20), np.float32)
    masks[0, 0, 2:8, 5:15] = 0.9
    boxes = np.array([[5, 2, 15, 8], [0, 0, 1, 1]], np.float32)
    out = instances_from_maskrcnn(
        boxes, np.array([1, 2]), np.array([0.9, 0.2], np.float32), masks, _geo(40, 20, 20, 10), 0.5
    )
    assert len(out) == 1
    assert out[0].box == pytest.approx((10, 4, 30, 16))
    decoded = rle_decode(out[0].rle)
    assert decoded.shape == (20, 40)
    assert decoded[10, 20]
    assert not decoded[1, 1]
