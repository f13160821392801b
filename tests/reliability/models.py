"""Deliberately slow or faulty tiny ONNX models for the reliability tests.

Both are classifiers with the same IO as ``tiny-classifier`` (``float32[B,3,32,32]`` → three
colour logits), so the service treats them like any other model:
- ``slow_classifier``: adds a chain of ``work`` ``size``×``size`` matrix products that depends on the input
  (so ONNX Runtime cannot fold it away) and contributes zero to the logits. One run costs about
  the same whatever the batch size, which makes queueing predictable.
- ``faulty_classifier``: a ``Reshape`` whose target shape depends on the pixels. When any image
  of the batch has a mean red above 0.9 (an almost pure red picture) the run fails inside ONNX
  Runtime; every other input classifies normally.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper

from tests.support.tiny_models import classifier_config, classifier_graph, const, save_model


def _classifier_head() -> list[onnx.NodeProto]:
    return [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),  # [B,3] mean colour
        const("w", np.eye(3, dtype=np.float32) * 20.0),
        helper.make_node("MatMul", ["flat", "w"], ["base_logits"]),
    ]


def _save(
    folder: Path, nodes: list[onnx.NodeProto], name: str, batching: dict[str, object]
) -> None:
    save_model(folder, classifier_graph(nodes, name), classifier_config(batching))


def slow_classifier(
    folder: Path,
    *,
    work: int = 24,
    size: int = 512,
    max_batch_size: int = 4,
    max_queue_size: int = 8,
    max_delay_ms: float = 0,
) -> None:
    """``work`` input-dependent ``size``×``size`` MatMuls per run (≈ 0.1 s on one core at 24×512)."""
    # spectral norm ≈ 1: the chain neither overflows nor vanishes
    a = np.random.default_rng(0).standard_normal((size, size)) / (2.0 * np.sqrt(size))
    a = a.astype(np.float32)
    nodes = [
        *_classifier_head(),
        helper.make_node("ReduceMean", ["input"], ["s"], keepdims=0),  # scalar: not foldable
        const("a", a),
        helper.make_node("Mul", ["a", "s"], ["x0"]),
    ]
    for i in range(work):
        nodes.append(helper.make_node("MatMul", [f"x{i}", "a"], [f"x{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"x{work}"], ["total"], keepdims=0),
        const("zero", np.array(0.0, dtype=np.float32)),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),  # finite, so this is exactly 0
        helper.make_node("Add", ["base_logits", "nothing"], ["logits"]),
    ]
    _save(
        folder,
        nodes,
        "slow-classifier",
        {
            "max_batch_size": max_batch_size,
            "max_delay_ms": max_delay_ms,
            "max_queue_size": max_queue_size,
        },
    )


def faulty_classifier(folder: Path, *, threshold: float = 0.9, max_batch_size: int = 8) -> None:
    """Fails the run when any image's mean red is above ``threshold`` (pixels scaled to 0..1)."""
    nodes = [
        *_classifier_head(),
        const("c0", np.array([0], dtype=np.int64)),
        const("c1", np.array([1], dtype=np.int64)),
        const("ax1", np.array([1], dtype=np.int64)),
        helper.make_node("Slice", ["flat", "c0", "c1", "ax1"], ["red"]),  # [B,1]
        helper.make_node("ReduceMax", ["red"], ["reddest"], keepdims=0),  # scalar
        const("threshold", np.array(threshold, dtype=np.float32)),
        helper.make_node("Greater", ["reddest", "threshold"], ["too_red"]),
        helper.make_node("Cast", ["too_red"], ["extra"], to=TensorProto.INT64),
        const("zero_i", np.array([0], dtype=np.int64)),
        helper.make_node("Unsqueeze", ["extra", "zero_i"], ["extra1"]),  # [1]
        helper.make_node("Concat", ["zero_i", "extra1"], ["grow"], axis=0),  # [0, extra]
        helper.make_node("Shape", ["base_logits"], ["shape"]),  # [B, 3]
        helper.make_node("Add", ["shape", "grow"], ["target"]),  # [B, 3 + extra]
        # B×3 values cannot fill [B, 4]: ONNX Runtime fails the run
        helper.make_node("Reshape", ["base_logits", "target"], ["logits"]),
    ]
    _save(
        folder,
        nodes,
        "faulty-classifier",
        {"max_batch_size": max_batch_size, "max_delay_ms": 20, "max_queue_size": 64},
    )


def unloadable_model(folder: Path) -> None:
    """A model folder whose ``model.onnx`` is not an ONNX graph at all."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"this is not a protobuf")
    (folder / "config.yaml").write_text(yaml.safe_dump(classifier_config(), sort_keys=False))
