"""The TaskProcessor contract shared by the four tasks.

``preprocess`` and ``postprocess`` run in the preprocessing pool (or, for a lone request on an
idle model, on the model thread with its run), ``collate`` and ``split`` on the model thread.
``Feeds`` map input names to one item's arrays (no batch axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


def stack_feeds(items: Sequence[Feeds]) -> Feeds:
    """Stack same-shaped items along a new batch axis: ``T[...]`` × B → ``T[B,...]``. One item
    gets a view with the new axis instead of a copy (an image input is megabytes)."""
    if len(items) == 1:
        return {name: value[np.newaxis] for name, value in items[0].items()}
    return {name: np.stack([item[name] for item in items]) for name in items[0]}


def split_outputs(outputs: Outputs, n: int) -> list[Outputs]:
    """Inverse of ``stack_feeds`` for outputs: ``T[B,...]`` → B × ``T[...]``."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != n:
            raise ValueError(f"output {name!r} has shape {value.shape}, expected batch {n}")
    return [{name: value[i] for name, value in outputs.items()} for i in range(n)]


def length_buckets(
    lengths: Sequence[int], *, min_size: int = 8, max_ratio: float = 1.25
) -> list[list[int]]:
    """Group item indices by similar length so each group pads little.

    Items are sorted by length; a new group starts once the current one holds ``min_size`` items
    and the next item is more than ``max_ratio`` times longer than the group's shortest. Cost on
    CPU grows with batch × longest sequence, so this trades a few more (smaller) runs for less
    padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if len(current) >= min_size and lengths[i] > lengths[current[0]] * max_ratio:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


class BatchRunner:
    """Runs a list of items through a session: collate → run → split (on the model thread).

    Models without a batch axis (``max_batch_size: 0``) get one item per run, unchanged.
    """

    def __init__(
        self,
        session: Any,
        *,
        batched: bool,
        collate: Any = stack_feeds,
        bucket_by: str | None = None,
    ) -> None:
        self._session = session
        self._batched = batched
        self._collate = collate
        self._bucket_by = bucket_by  # variable-length input to group by (text: input_ids)

    def __call__(self, items: list[Feeds]) -> list[Outputs]:
        if not self._batched:
            return [self._session.run(item) for item in items]
        if self._bucket_by is None or len(items) < 2:
            return split_outputs(self._session.run(self._collate(items)), len(items))
        results: list[Outputs | None] = [None] * len(items)
        lengths = [item[self._bucket_by].shape[0] for item in items]
        for group in length_buckets(lengths):
            outputs = self._session.run(self._collate([items[i] for i in group]))
            for i, out in zip(group, split_outputs(outputs, len(group)), strict=True):
                results[i] = out
        return [r for r in results if r is not None]
