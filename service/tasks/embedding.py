"""Text embedding: tokenizing with Hugging Face ``tokenizers``, padding to the longest item of a
batch, pooling and L2 normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.errors import ParamError, ValidationFailedError
from service.model_config import ConfigError, ModelConfig, inside
from service.tasks.base import Feeds, Outputs

INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
# a few short texts tokenize in tens of microseconds: cheaper on the event loop than a thread hop
INLINE_TOKENIZE_CHARS = 2_000


@dataclass(frozen=True)
class TextMeta:
    tokens: int  # real tokens, specials included, after truncation


class TextEncoder:
    """Tokenizes texts into per-item feeds ``int64[S]`` for the inputs the graph takes."""

    def __init__(
        self, tokenizer_path: Path, *, max_length: int, input_names: Sequence[str]
    ) -> None:
        base = Tokenizer.from_file(str(tokenizer_path))
        base.no_padding()  # padding happens per batch in ``collate``
        base.enable_truncation(max_length)
        self._tokenizer = base
        self.max_length = max_length
        self.vocab_size = base.get_vocab_size(with_added_tokens=True)
        self.input_names = tuple(input_names)

    @classmethod
    def for_model(cls, folder: Path, config: ModelConfig) -> TextEncoder:
        """The encoder a text model's config describes: its tokenizer file, length and inputs."""
        assert config.text is not None
        return cls(
            folder / config.text.tokenizer,
            max_length=config.text.max_length,
            input_names=[i.name for i in config.inputs],
        )

    def encode(self, texts: Sequence[str], *, truncate: bool) -> list[tuple[Feeds, TextMeta]]:
        encodings = self._tokenizer.encode_batch(list(texts))
        items: list[tuple[Feeds, TextMeta]] = []
        for index, enc in enumerate(encodings):
            if enc.overflowing and not truncate:
                raise ValidationFailedError(
                    f"input {index} is longer than the model's {self.max_length} tokens; "
                    "shorten it or send truncate=true"
                )
            n = len(enc.ids)
            feeds: Feeds = {INPUT_IDS: np.asarray(enc.ids, dtype=np.int64)}
            if ATTENTION_MASK in self.input_names:
                feeds[ATTENTION_MASK] = np.ones(n, dtype=np.int64)
            if TOKEN_TYPE_IDS in self.input_names:
                feeds[TOKEN_TYPE_IDS] = np.asarray(enc.type_ids, dtype=np.int64)
            items.append((feeds, TextMeta(n)))
        return items


def pad_feeds(items: Sequence[Feeds], pad_token_id: int) -> Feeds:
    """Right-pad ``int64[S_i]`` items to the longest: → ``int64[B, max S_i]``."""
    longest = max(item[INPUT_IDS].shape[0] for item in items)
    out: Feeds = {}
    for name in items[0]:
        fill = pad_token_id if name == INPUT_IDS else 0
        batch = np.full((len(items), longest), fill, dtype=np.int64)
        for row, item in enumerate(items):
            values = item[name]
            batch[row, : values.shape[0]] = values
        out[name] = batch
    return out


def pool(token_embeddings: np.ndarray, tokens: int, pooling: str) -> np.ndarray:
    """``float32[S,D]`` (padded) → ``float32[D]`` over the first ``tokens`` rows."""
    pooled: np.ndarray = (
        token_embeddings[0] if pooling == "cls" else token_embeddings[:tokens].mean(axis=0)
    )
    return pooled


def l2_normalise(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    out: np.ndarray = vector / norm if norm > 1e-12 else vector
    return out


@dataclass(frozen=True)
class EmbedParams:
    normalize: bool = True
    dimensions: int | None = None  # keep the first n values (OpenAI's ``dimensions``)


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # float32[D]


class EmbedProcessor:
    """Text → ``{input_ids, attention_mask?, token_type_ids?: int64[S]}``, padded per batch
    (grouped by length first); ``float32[D]`` or ``float32[S,D]`` (pooled here) → a vector."""

    bucket_by: str | None = INPUT_IDS
    finish_inline = True  # pooling and normalising one vector: microseconds

    def __init__(
        self,
        encoder: TextEncoder,
        output_name: str,
        *,
        token_level: bool,
        pooling: str,
        pad_token_id: int,
    ) -> None:
        self.encoder = encoder
        self.output_name = output_name
        self.token_level = token_level
        self.pooling = pooling
        self.pad_token_id = pad_token_id

    def prepare(self, raw: str) -> tuple[Feeds, TextMeta]:
        [item] = self.encoder.encode([raw], truncate=True)
        return item

    def encode(self, texts: Sequence[str], *, truncate: bool) -> list[tuple[Feeds, TextMeta]]:
        """All of a request's texts in one call (the tokenizer's batch path); with
        ``truncate=False`` an over-long text is a 422 naming its index."""
        return self.encoder.encode(texts, truncate=truncate)

    def prepare_inline(self, raws: Sequence[str]) -> bool:
        return sum(len(t) for t in raws) <= INLINE_TOKENIZE_CHARS

    def runs_alone(self, raw: str) -> bool:
        return True

    def collate(self, items: Sequence[Feeds]) -> Feeds:
        return pad_feeds(items, self.pad_token_id)

    def finish(self, outputs: Outputs, meta: TextMeta, params: EmbedParams) -> Embedding:
        vector = outputs[self.output_name]
        if self.token_level:
            vector = pool(vector, meta.tokens, self.pooling)
        vector = vector.astype(np.float32, copy=False)
        if params.dimensions is not None and params.dimensions != vector.shape[0]:
            if params.dimensions > vector.shape[0]:
                raise ParamError(
                    f"dimensions is {params.dimensions} but the model has {vector.shape[0]}",
                    param="dimensions",
                )
            vector = vector[: params.dimensions]
        return Embedding(l2_normalise(vector) if params.normalize else vector)


def build(
    folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int
) -> EmbedProcessor:
    """The task table's builder for ``embed``. A missing or unreadable tokenizer is a
    ``ConfigError`` naming the model and the field."""
    if config.text is None:  # ModelConfig's own validator makes this unreachable
        raise ConfigError(f"model {config.name!r}: task {config.task} needs a text section")
    tokenizer = inside(folder, config.text.tokenizer, model=config.name, field="text.tokenizer")
    if not tokenizer.is_file():
        raise ConfigError(
            f"model {config.name!r}: text.tokenizer {config.text.tokenizer!r} not found"
        )
    try:
        encoder = TextEncoder.for_model(folder, config)
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise ConfigError(f"model {config.name!r}: text.tokenizer cannot be loaded: {exc}") from exc
    return EmbedProcessor(
        encoder,
        config.outputs[0].name,
        token_level=config.format == "token-embeddings",
        pooling=config.text.pooling,
        pad_token_id=config.text.pad_token_id,
    )
