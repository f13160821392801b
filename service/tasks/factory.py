"""The one factory: a model folder + its validated config → the task processor that serves it.

The registry, ``ortserve models --validate`` and the benchmarks (the naive server and the
in-process limit) all build processors here, so a model's pre- and post-processing can never
differ between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.model_config import ConfigError, ModelConfig, inside
from service.tasks.classification import ClassifyProcessor
from service.tasks.detection import DetectProcessor
from service.tasks.embedding import EmbedProcessor, TextEncoder
from service.tasks.imaging import ImageProcessor
from service.tasks.segmentation import SegmentProcessor

Processor = ClassifyProcessor | DetectProcessor | SegmentProcessor | EmbedProcessor


def processor_for(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> Processor:
    """Build the processor ``config.task`` names. A missing or unreadable tokenizer is a
    ``ConfigError`` naming the model and the field."""
    outputs = [o.name for o in config.outputs]
    if config.text is not None:
        tokenizer = inside(folder, config.text.tokenizer, model=config.name, field="text.tokenizer")
        if not tokenizer.is_file():
            raise ConfigError(
                f"model {config.name!r}: text.tokenizer {config.text.tokenizer!r} not found"
            )
        try:
            encoder = TextEncoder.for_model(folder, config)
        except Exception as exc:  # tokenizers raises plain Exception on a bad file
            raise ConfigError(
                f"model {config.name!r}: text.tokenizer cannot be loaded: {exc}"
            ) from exc
        return EmbedProcessor(
            encoder,
            outputs[0],
            token_level=config.format == "token-embeddings",
            pooling=config.text.pooling,
            pad_token_id=config.text.pad_token_id,
        )
    if config.image is None:  # ModelConfig's own validator makes this unreachable
        raise ConfigError(f"model {config.name!r}: task {config.task} needs an image section")
    image = ImageProcessor(config.image, config.inputs[0].name, max_pixels=max_image_pixels)
    if config.task == "classify":
        return ClassifyProcessor(
            image, outputs[0], labels, logits=config.format == "classification-logits"
        )
    if config.task == "detect":
        return DetectProcessor(image, config.format, outputs, labels)
    return SegmentProcessor(image, config.format, outputs, labels)
