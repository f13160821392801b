"""Training data plumbing (augmentation, letterbox, target assignment) and a smoke run of each
trainer down to a model folder the service accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

from service.model_config import load_model_config
from training.common import dihedral
from training.models import vote_classes
from training.shapes import generate
from training.train import (
    LEVEL_RANGES,
    YOLO_SIZE,
    letterbox_pool,
    train_unet,
    train_yolo,
    yolo_targets,
)


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("k", range(8))
def test_every_flip_and_transpose_moves_boxes_with_the_pixels(k: int) -> None:
    sample = generate(7)  # a non-square image
    assert sample.image.shape[0] != sample.image.shape[1]
    image, instance_map, boxes = dihedral(sample.image, sample.instance_map, sample.boxes, k)
    assert instance_map is not None
    assert boxes is not None
    assert image.shape[:2] == instance_map.shape
    for i, box in enumerate(boxes):
        assert box.tolist() == _tight_box(instance_map == i + 1)


def test_letterboxed_pool_keeps_boxes_and_label_maps_aligned() -> None:
    samples = [generate(s) for s in (1, 2, 3)]
    pool = letterbox_pool(samples, 256)
    assert pool.images.shape == (3, 256, 256, 3)
    for i, sample in enumerate(samples):
        boxes = pool.boxes[i]
        union = [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]
        assert _tight_box(pool.semantic[i] > 0) == pytest.approx(union, abs=1.5)
        assert set(np.unique(pool.semantic[i])) <= {0, *(sample.classes + 1).tolist()}
        # the letterbox border is the pad colour and background in the label map
        h, w = sample.semantic.shape
        if w > h:
            assert (pool.images[i, 0] == 114).all()
            assert (pool.semantic[i, 0] == 0).all()


def test_objects_are_assigned_to_the_levels_that_fit_their_size() -> None:
    boxes = np.array(
        [[10, 10, 30, 30], [100, 100, 180, 180], [150, 20, 300, 170]], dtype=np.float32
    )
    classes = np.array([0, 1, 2])
    levels = yolo_targets([boxes], [classes], YOLO_SIZE)
    for level, (low, high) in zip(levels, LEVEL_RANGES, strict=True):
        present = set(np.unique(level.classes[0].numpy())) - {0}
        want = {
            int(c) + 1 for b, c in zip(boxes, classes, strict=True) if low <= b[2] - b[0] <= high
        }
        assert present == want
        for cls_id in present:
            cells = (level.classes[0] == cls_id).numpy()
            assert 1 <= cells.sum() <= 9
            box = boxes[cls_id - 1]
            ys, xs = np.nonzero(cells)
            assert (box == level.boxes[0][:, ys, xs].numpy().T).all()


def test_an_objects_cells_vote_on_its_class_and_keep_their_own_foreground() -> None:
    probs = torch.zeros(1, 3, 5, 5)  # circle, square, triangle over a 5×5 grid
    probs[0, 0, 1:4, 1:4], probs[0, 1, 1:4, 1:4] = 0.8, 0.1  # a circle on 3×3 cells ...
    probs[0, 0, 2, 2], probs[0, 1, 2, 2] = 0.3, 0.6  # ... whose centre cell leans to square
    voted = vote_classes(probs)
    torch.testing.assert_close(voted.sum(1), probs.sum(1))  # each cell keeps its foreground
    assert int(voted[0, :, 2, 2].argmax()) == 0
    assert float(voted[0, 1].max()) < 0.25  # no square above the default confidence
    assert float(voted[0, :, 0].abs().max()) == 0.0  # background stays background


@pytest.mark.export
@pytest.mark.slow
def test_detector_and_unet_trainers_write_servable_model_folders(tmp_path: Path) -> None:
    report = train_yolo(tmp_path / "shapes-yolo", steps=2, batch=2, images=4)
    assert report["passed"]
    config, labels = load_model_config(tmp_path / "shapes-yolo")
    assert labels == ["circle", "square", "triangle"]
    assert config.outputs[0].dims == [7, sum((YOLO_SIZE // s) ** 2 for s in (8, 16, 32))]
    checkpoint = tmp_path / "unet.pt"
    report = train_unet(tmp_path / "shapes-unet", steps=2, batch=2, images=4, checkpoint=checkpoint)
    assert report["passed"]
    assert checkpoint.is_file()
    config, labels = load_model_config(tmp_path / "shapes-unet")
    assert labels == ["background", "circle", "square", "triangle"]


@pytest.mark.export
@pytest.mark.slow
def test_maskrcnn_trainer_writes_a_servable_model_folder(tmp_path: Path) -> None:
    from training.maskrcnn import train_maskrcnn

    report = train_maskrcnn(tmp_path / "shapes-maskrcnn", steps=1, batch=1, images=2)
    assert report["passed"]
    config, labels = load_model_config(tmp_path / "shapes-maskrcnn")
    assert config.batching.max_batch_size == 0
    assert labels == ["background", "circle", "square", "triangle"]
