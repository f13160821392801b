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
    instances_from_yolo_seg,
    png_base64,
    rle_decode,
    rle_encode,
    rle_encode_region,
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


def _shape_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    stripes = np.zeros((300, 200), bool)
    stripes[:, ::3] = True  # long runs and short ones: multi-character deltas of both signs
    long_runs = np.zeros((1000, 700), bool)  # runs past 2^19: five characters each
    long_runs[:, 300:650] = True
    return [
        ("all zero", np.zeros((17, 23), bool)),
        ("all one", np.ones((17, 23), bool)),
        ("1×N", rng.random((1, 257)) > 0.5),
        ("N×1", rng.random((257, 1)) > 0.5),
        ("1×N ones", np.ones((1, 40), bool)),
        ("N×1 zeros", np.zeros((40, 1), bool)),
        ("1×1 one", np.ones((1, 1), bool)),
        ("1×1 zero", np.zeros((1, 1), bool)),
        ("noise", rng.random((97, 131)) > 0.5),
        ("sparse", rng.random((120, 90)) > 0.995),
        ("stripes", stripes),
        ("long runs", long_runs),
    ]


@pytest.mark.parametrize(
    ("name", "mask"), _shape_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_rle_matches_pycocotools_on_odd_shapes(name: str, mask: np.ndarray) -> None:
    ours = rle_encode(mask)
    theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode(), name
    assert ours["size"] == list(mask.shape)
    np.testing.assert_array_equal(rle_decode(ours), mask)
    theirs_str = {"size": ours["size"], "counts": theirs["counts"].decode()}
    np.testing.assert_array_equal(rle_decode(theirs_str), mask)


@pytest.mark.parametrize("seed", range(12))
def test_region_rle_equals_the_rle_of_the_full_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 40, size=2))
    ph, pw = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    if seed == 0:
        ph, pw, top, left = h, w, 0, 0  # the whole image
    if seed == 1:
        ph, pw, top, left = 1, 1, 0, 0  # one pixel in the first column
    if seed == 2:
        ph, pw, top, left = 1, 1, h - 1, w - 1  # one pixel in the last column
    patch = rng.random((ph, pw)) > rng.random()
    if seed in (1, 2):
        patch[:] = True
    full = np.zeros((h, w), bool)
    full[top : top + ph, left : left + pw] = patch
    assert rle_encode_region(patch, top, left, h, w) == rle_encode(full)


def test_region_rle_refuses_a_patch_outside_the_mask() -> None:
    with pytest.raises(ValueError, match="outside"):
        rle_encode_region(np.ones((3, 3), bool), 8, 0, 10, 10)


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


@pytest.mark.parametrize(
    ("orig", "model"),
    [((400, 300), (80, 60)), ((50, 30), (100, 60)), ((100, 60), (100, 60)), ((333, 47), (64, 13))],
)
def test_maskrcnn_instances_equal_resizing_the_whole_mask(
    orig: tuple[int, int], model: tuple[int, int]
) -> None:
    """Resampling only around each mask's pixels gives exactly the whole-image result."""
    rng = np.random.default_rng(sum(orig))
    (w, h), (in_w, in_h) = orig, model
    n = 6
    masks = np.zeros((n, 1, in_h + 3, in_w + 5), np.float32)  # the graph pads; the crop drops it
    yy, xx = np.mgrid[: in_h + 3, : in_w + 5]
    for k in range(n):
        cx, cy = rng.uniform(0, in_w), rng.uniform(0, in_h)
        rx, ry = rng.uniform(1, in_w / 3), rng.uniform(1, in_h / 3)
        masks[k, 0] = np.clip(1.2 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2, 0, 1)
    masks[-1] = 0.4  # never reaches 0.5: an empty mask
    boxes = np.tile(np.array([[0, 0, in_w, in_h]], np.float32), (n, 1))
    geo = _geo(w, h, in_w, in_h)
    out = instances_from_maskrcnn(boxes, np.arange(n), np.full(n, 0.9, np.float32), masks, geo, 0.5)
    for k, instance in enumerate(out):
        plane = Image.fromarray(masks[k, 0, :in_h, :in_w], mode="F")
        whole = np.asarray(plane.resize((w, h), Image.Resampling.BILINEAR)) >= 0.5
        np.testing.assert_array_equal(rle_decode(instance.rle), whole)
    assert not rle_decode(out[-1].rle).any()
    assert any(rle_decode(i.rle).any() for i in out)


def _yolo_seg_output(boxes_cxcywh: list[list[float]], scores: list[float]) -> np.ndarray:
    """``[4 + 1 class + 1 coefficient, N]`` with every coefficient 1."""
    n = len(scores)
    return np.concatenate(
        [np.array(boxes_cxcywh, np.float32).T, np.array([scores], np.float32), np.ones((1, n))]
    ).astype(np.float32)


def test_yolo_seg_masks_are_prototypes_cut_to_the_box_at_original_size() -> None:
    # input 64×64 shows a 128×64 image (scale 0.5, 16 px padding above and below)
    geo = Geometry(0.5, 0.5, 0.0, 16.0, 128, 64, 64, 64)
    protos = -np.ones((1, 16, 16), np.float32)
    protos[0, 4:12, :] = 1.0  # the whole image's rows; the padding rows are -1
    output = _yolo_seg_output([[16, 32, 32, 32], [48, 8, 8, 8]], [0.9, 0.8])
    [inst] = instances_from_yolo_seg(output, protos, geo, confidence=0.5, iou=0.45)
    assert inst.box == pytest.approx((0.0, 0.0, 64.0, 64.0))
    mask = rle_decode(inst.rle)
    assert mask.shape == (64, 128)
    # all of the box, nothing outside it, and the padding's -1 does not bleed into the edges
    assert mask[:, :64].all()
    assert not mask[:, 64:].any()
    # the second candidate lies in the padding: its box is clipped away and it is dropped
    assert len(instances_from_yolo_seg(output, protos, geo, confidence=0.1, iou=0.45)) == 1


def test_yolo_seg_rejects_prototypes_of_the_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"prototypes must be \[M, h, w\]"):
        instances_from_yolo_seg(
            _yolo_seg_output([[8, 8, 4, 4]], [0.9]),
            np.zeros((16, 16), np.float32),
            Geometry(1, 1, 0, 0, 16, 16, 16, 16),
            0.5,
            0.45,
        )
