"""What every shapes trainer shares: the sample pools, the flips/transposes augmentation, the
learning-rate schedule, progress logging and checkpoints.

Its own module so that the trainers (``training.train``, ``training.maskrcnn``) can all import it
without importing one another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.shapes import VARIED_BACKGROUNDS, Sample, generate

log = logging.getLogger("training")


class Progress:
    """Logs the loss (averaged since the last line), elapsed time and an ETA."""

    def __init__(self, name: str, steps: int, every: int = 25) -> None:
        self.name, self.steps, self.every = name, steps, every
        self.started = time.perf_counter()
        self.losses: list[float] = []

    def step(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if step % self.every == 0 or step == self.steps:
            elapsed = time.perf_counter() - self.started
            log.info(
                "%s step %d/%d loss %.4f (%.0f s, eta %.0f s)",
                self.name,
                step,
                self.steps,
                float(np.mean(self.losses)),
                elapsed,
                elapsed / step * (self.steps - step),
            )
            self.losses.clear()


def samples(count: int, seed: int) -> list[Sample]:
    """``count`` generated images; training pools use seeds far below the held-out ones."""
    return [generate(seed * 7919 + i) for i in range(count)]


SMALL_EVERY = 5


def varied_samples(count: int, seed: int, scale: float = 1.0) -> Iterator[Sample]:
    """``count`` generated images on ``VARIED_BACKGROUNDS``, one at a time (a pool of them is
    letterboxed as it is drawn, not held at full resolution). Every ``SMALL_EVERY``-th image is
    96–320 px a side instead of 320–640, its shapes up to 0.8 of its shorter side: the letterbox
    enlarges it, so they reach 1.3× the largest shapes otherwise (a small picture of one big
    shape is a common request).

    ``scale`` scales those side lengths but not the shapes' sizes: letterboxed to ``scale`` times
    the model input, the shapes come out at the sizes they have in the full-size input."""
    for i in range(count):
        small = i % SMALL_EVERY == 0
        yield generate(
            seed * 7919 + i,
            min_size=round((96 if small else 320) * scale),
            max_size=round((320 if small else 640) * scale),
            backgrounds=VARIED_BACKGROUNDS,
            max_fill=0.8 if small else 0.6,
        )


def dihedral(
    image: np.ndarray, other: np.ndarray | None, boxes: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One of the 8 flips/transposes (``k`` in 0..7) of an ``[H,W,C]`` image, an aligned
    ``[H,W]`` map and ``[n,4]`` x1,y1,x2,y2 boxes (views where possible)."""
    h, w = image.shape[:2]
    b = None if boxes is None else boxes.copy()
    if k & 1:  # horizontal flip
        image = image[:, ::-1]
        other = None if other is None else other[:, ::-1]
        if b is not None:
            b[:, [0, 2]] = w - b[:, [2, 0]]
    if k & 2:  # vertical flip
        image = image[::-1]
        other = None if other is None else other[::-1]
        if b is not None:
            b[:, [1, 3]] = h - b[:, [3, 1]]
    if k & 4:  # transpose
        image = image.swapaxes(0, 1)
        other = None if other is None else other.T
        if b is not None:
            b = b[:, [1, 0, 3, 2]]
    return image, other, b


def one_cycle(
    opt: torch.optim.Optimizer, max_lr: float, steps: int, warmup: float = 0.1
) -> torch.optim.lr_scheduler.OneCycleLR:
    """Warm up for ``warmup`` of the steps (at least two), then anneal: works for any step count."""
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=max(steps, 3), pct_start=max(warmup, 2.0 / max(steps, 3))
    )


def save_checkpoint(path: Path | None, model: torch.nn.Module, **info: Any) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), **info}, str(path))
    log.info("checkpoint %s", path)
