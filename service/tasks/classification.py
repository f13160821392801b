"""Classification post-processing: softmax (for logits) and top-k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


class ClassifyPostprocessor:
    def __init__(self, output_name: str, labels: list[str], *, logits: bool) -> None:
        self.output_name = output_name
        self.labels = labels
        self.logits = logits

    def __call__(self, outputs: dict[str, np.ndarray], top: int) -> list[Prediction]:
        scores = outputs[self.output_name].reshape(-1)
        return top_k(scores, top, self.labels, logits=self.logits)
