"""The TaskProcessor contract: what a model's task code does around the ONNX Runtime run.

One processor per loaded model, built by ``service.tasks.factory.processor_for`` with the builder
its task's entry of ``service.task_table`` names::

    prepare(raw) -> (feeds, meta)           decode / tokenize one input     (worker pool)
    collate([feeds, ...]) -> feeds          one batch tensor per input      (model thread)
    finish(outputs, meta, params) -> Result NMS, top-k, masks, pooling      (worker pool or loop)

``Feeds`` map input names to one item's arrays (no batch axis); ``meta`` (what ``finish`` needs
to know about the input, e.g. its geometry) and results are frozen dataclasses. Processors are
immutable and thread-safe: the same one serves every request of its model concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

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


def same_shapes(items: Sequence[Feeds]) -> bool:
    """Whether every item's arrays have the first item's shapes (so they stack)."""
    first = {name: value.shape for name, value in items[0].items()}
    return all({name: value.shape for name, value in item.items()} == first for item in items)


class BatchProcessor(Protocol):
    """Any task's processor, as the factory returns it: what the runtime needs to batch its
    items, with the task-specific ends untyped; front ends narrow it to the concrete processor
    they call (``LoadedModel.processor_as``)."""

    @property
    def bucket_by(self) -> str | None: ...

    def prepare(self, raw: Any) -> tuple[Feeds, Any]: ...

    def collate(self, items: Sequence[Feeds]) -> Feeds: ...

    def finish(self, outputs: Outputs, meta: Any, params: Any) -> Any: ...


RawT = TypeVar("RawT", contravariant=True)
MetaT = TypeVar("MetaT")
ParamsT = TypeVar("ParamsT", contravariant=True)
ResultT = TypeVar("ResultT", covariant=True)


class TaskProcessor(Protocol[RawT, MetaT, ParamsT, ResultT]):
    """The contract every task's processor fulfils (see the module docstring)."""

    @property
    def bucket_by(self) -> str | None:
        """A variable-length input to group a batch by before collating (text: ``input_ids``),
        or None: the batch runs as one."""

    @property
    def finish_inline(self) -> bool:
        """``finish`` takes microseconds (top-k, pooling): run it on the event loop, where a
        thread hop would cost more than the work."""

    def prepare(self, raw: RawT) -> tuple[Feeds, MetaT]: ...

    def prepare_inline(self, raws: Sequence[RawT]) -> bool:
        """Whether preparing these inputs is cheap enough for the event loop."""

    def runs_alone(self, raw: RawT) -> bool:
        """Whether a lone input may be prepared on an idle model's thread, with its run: one
        thread hop instead of three, unless preparing it would hold the thread long."""

    def collate(self, items: Sequence[Feeds]) -> Feeds: ...

    def finish(self, outputs: Outputs, meta: MetaT, params: ParamsT) -> ResultT: ...
