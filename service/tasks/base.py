"""The TaskProcessor contract shared by the four tasks.

``preprocess`` and ``postprocess`` run in the preprocessing pool, ``collate`` and ``split`` on the
model thread. ``Feeds`` map input names to one item's arrays (no batch axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


def stack_feeds(items: Sequence[Feeds]) -> Feeds:
    """Stack same-shaped items along a new batch axis: ``T[...]`` × B → ``T[B,...]``."""
    return {name: np.stack([item[name] for item in items]) for name in items[0]}


def split_outputs(outputs: Outputs, n: int) -> list[Outputs]:
    """Inverse of ``stack_feeds`` for outputs: ``T[B,...]`` → B × ``T[...]``."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != n:
            raise ValueError(f"output {name!r} has shape {value.shape}, expected batch {n}")
    return [{name: value[i] for name, value in outputs.items()} for i in range(n)]


class BatchRunner:
    """Runs a list of items through a session: collate → run → split (on the model thread).

    Models without a batch axis (``max_batch_size: 0``) get one item per run, unchanged.
    """

    def __init__(self, session: Any, *, batched: bool, collate: Any = stack_feeds) -> None:
        self._session = session
        self._batched = batched
        self._collate = collate

    def __call__(self, items: list[Feeds]) -> list[Outputs]:
        if not self._batched:
            return [self._session.run(item) for item in items]
        outputs = self._session.run(self._collate(items))
        return split_outputs(outputs, len(items))
