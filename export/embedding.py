"""The ``embed`` task's model folder as the sentence exporters write it: its config, and sample
texts tokenized and padded by the processor the service builds for that config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.common import serving_processor


def encode_samples(
    config: dict[str, Any], tokenizer: Path, texts: list[str], *, name: str
) -> list[dict[str, np.ndarray]]:
    """``texts`` tokenized and padded by the processor the service builds for ``config`` (with
    ``tokenizer`` as its ``tokenizer.json``), at batch 1 and as one padded batch."""
    from service.tasks.embedding import EmbedProcessor

    processor = serving_processor(
        config, EmbedProcessor, name=name, extra_files={"tokenizer.json": tokenizer}
    )
    items = [feeds for feeds, _ in processor.encode(texts, truncate=True)]
    return [processor.collate(items[:1]), processor.collate(items)]


def text_config(
    *,
    description: str,
    input_names: list[str],
    dims: int,
    max_length: int,
    pad_token_id: int,
    pooling: str,
    max_batch_size: int,
    max_delay_ms: float,
) -> dict[str, Any]:
    """The ``config.yaml`` of a sentence encoder whose tokenizer is ``tokenizer.json``."""
    return {
        "task": "embed",
        "format": "sentence-embedding",
        "description": description,
        "inputs": [{"name": n, "dtype": "int64", "dims": [-1]} for n in input_names],
        "outputs": [{"name": "sentence_embedding", "dtype": "float32", "dims": [dims]}],
        "text": {
            "tokenizer": "tokenizer.json",
            "max_length": max_length,
            "pad_token_id": pad_token_id,
            "pooling": pooling,
        },
        "batching": {
            "max_batch_size": max_batch_size,
            "max_delay_ms": max_delay_ms,
            "max_queue_size": 4096,
        },
    }
