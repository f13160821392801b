"""The ``tensor`` task: any ONNX graph served over v2, with no pre- or post-processing.

A v2 request's rows already are the graph's feeds, so ``prepare`` and ``finish`` pass them
through; ``collate`` stacks rows into ``T[B,...]``. Nothing pads: rows of one batch must have
the same shapes in every variable axis, which the runtime ensures by running a batch as one run
per distinct set of shapes (``TaskSpec.group_by_shape``); rows of one request always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.model_config import ModelConfig
from service.tasks.base import Feeds, Outputs, same_shapes, stack_feeds


class TensorProcessor:
    """Feeds in, outputs out: ``{name: T[...]}`` per row, stacked along a new batch axis."""

    bucket_by: str | None = None
    finish_inline = True  # nothing to do

    def prepare(self, raw: Feeds) -> tuple[Feeds, None]:
        return raw, None

    def prepare_inline(self, raws: Sequence[Feeds]) -> bool:
        return True

    def runs_alone(self, raw: Feeds) -> bool:
        return True

    def collate(self, items: Sequence[Feeds]) -> Feeds:
        if not same_shapes(items):
            shapes = sorted({str({n: v.shape for n, v in item.items()}) for item in items})
            raise ValueError(f"rows of different shapes cannot be stacked: {', '.join(shapes)}")
        return stack_feeds(items)

    def finish(self, outputs: Outputs, meta: None, params: None) -> Outputs:
        return outputs


def build(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> TensorProcessor:
    """The task table's builder for ``tensor``."""
    return TensorProcessor()
