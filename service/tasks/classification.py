"""Classification post-processing: softmax (for logits) and top-k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.model_config import ModelConfig
from service.tasks.base import Outputs
from service.tasks.imaging import Geometry, ImageProcessor, ImageTask, image_processor


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32[C] → probabilities, numerically stable."""
    shifted = logits.astype(np.float64) - np.max(logits)
    exp = np.exp(shifted)
    probs: np.ndarray = exp / exp.sum()
    return probs


def top_k(scores: np.ndarray, k: int, labels: list[str], *, logits: bool) -> list[Prediction]:
    """Scores ``float32[C]`` → the ``k`` best classes, descending."""
    probs = softmax(scores) if logits else scores.astype(np.float64)
    k = min(k, probs.shape[0])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [Prediction(int(i), label_for(labels, int(i)), float(probs[i])) for i in idx]


def label_for(labels: list[str], class_id: int) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


@dataclass(frozen=True)
class ClassifyParams:
    top_k: int = 5


@dataclass(frozen=True)
class Classification:
    predictions: tuple[Prediction, ...]  # descending score


class ClassifyProcessor(ImageTask):
    """Image → ``float32[3,H,W]``; ``float32[C]`` scores (logits or probabilities) → top-k."""

    finish_inline = True  # softmax + top-k over one row: tens of microseconds

    def __init__(
        self, image: ImageProcessor, output_name: str, labels: Sequence[str], *, logits: bool
    ) -> None:
        super().__init__(image)
        self.output_name = output_name
        self.labels = list(labels)
        self.logits = logits

    def finish(self, outputs: Outputs, meta: Geometry, params: ClassifyParams) -> Classification:
        scores = outputs[self.output_name].reshape(-1)
        return Classification(tuple(top_k(scores, params.top_k, self.labels, logits=self.logits)))


def build(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> ClassifyProcessor:
    """The task table's builder for ``classify``."""
    return ClassifyProcessor(
        image_processor(config, max_pixels=max_image_pixels),
        config.outputs[0].name,
        labels,
        logits=config.format == "classification-logits",
    )
