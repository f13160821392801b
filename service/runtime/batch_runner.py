"""BatchRunner: what a model thread does with one batch — collate, run the session, split.

The ``run_batch`` a ``DynamicBatcher`` calls on its model thread (``service.runtime.model``
builds one per session). Pure of asyncio: it sees a list of items and returns one output each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from service.tasks.base import Feeds, Outputs, length_buckets, split_outputs


class BatchRunner:
    """Runs a list of items through a session on the model thread: collate → run → split.

    Models without a batch axis (``max_batch_size: 0``) get one item per run, unchanged. With a
    ``bucket_by`` input (text), items are grouped by its length first so each run pads little.
    """

    def __init__(
        self,
        run: Callable[[Feeds], Outputs],
        *,
        batched: bool,
        collate: Callable[[Sequence[Feeds]], Feeds],
        bucket_by: str | None = None,
    ) -> None:
        self._run = run
        self._batched = batched
        self._collate = collate
        self._bucket_by = bucket_by

    def __call__(self, items: list[Feeds]) -> list[Outputs]:
        if not self._batched:
            return [self._run(item) for item in items]
        if self._bucket_by is None or len(items) < 2:
            return split_outputs(self._run(self._collate(items)), len(items))
        results: list[Outputs | None] = [None] * len(items)
        lengths = [item[self._bucket_by].shape[0] for item in items]
        for group in length_buckets(lengths):
            outputs = self._run(self._collate([items[i] for i in group]))
            for i, out in zip(group, split_outputs(outputs, len(group)), strict=True):
                results[i] = out
        return [r for r in results if r is not None]
