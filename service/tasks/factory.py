"""The one factory: a model folder + its validated config → the task processor that serves it.

The registry, ``ortserve models --validate`` and the benchmarks (the naive server and the
in-process limit) all build processors here, so a model's pre- and post-processing can never
differ between them. Which builder serves a task is its entry's ``processor`` in
``service.task_table`` (``"module:function"``), imported here when first needed: the table
stays pure data below ``service.model_config`` and nothing imports a task module it does not use.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from service.model_config import ConfigError, ModelConfig
from service.task_table import task_spec
from service.tasks.base import BatchProcessor

Processor = BatchProcessor
Builder = Callable[..., BatchProcessor]


@functools.cache
def builder(reference: str) -> Builder:
    """``"package.module:function"`` → the function (a ``ConfigError`` when it is not there)."""
    module_name, _, attribute = reference.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"processor builder {reference!r} cannot be imported: {exc}") from exc
    if not callable(found):
        raise ConfigError(f"processor builder {reference!r} is not callable")
    return cast(Builder, found)


def processor_for(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> Processor:
    """Build the processor ``config.task``'s table entry names. A missing or unreadable file
    the processor needs (a tokenizer) is a ``ConfigError`` naming the model and the field."""
    build = builder(task_spec(config.task).processor)
    return build(folder, config, labels, max_image_pixels=max_image_pixels)
