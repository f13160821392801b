"""Tiny ONNX graphs for the ``tensor`` task, built with ``onnx.helper`` (no export, no torch).

Each builder writes ``model.onnx`` (and, unless told otherwise, a ``config.yaml`` of
``task: tensor`` alone) into a folder and returns the graph's weights, so a test can compute the
expected outputs or compare with in-process ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(folder: Path, graph: onnx.GraphProto, config: dict[str, object] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    (folder / "config.yaml").write_text(yaml.safe_dump(config or {"task": "tensor"}))
    return folder / "model.onnx"


def regressor(
    folder: Path, features: int = 4, seed: int = 0, config: dict[str, object] | None = None
) -> Path:
    """A linear regression: ``x: float32[B,F]`` → ``y: float32[B,1] = x @ W + b``."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(features, 1)).astype(np.float32)
    bias = rng.normal(size=(1,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "regressor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _save(folder, graph, config)


def mixed_tabular(folder: Path, seed: int = 1) -> Path:
    """Tabular features of two dtypes: ``num: float64[B,3]`` and ``cat: int64[B,1]`` →
    ``score: float64[B,1] = num @ W + cat · c``."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, 1))
    scale = np.array([0.5])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["num", "W"], ["linear"]),
            helper.make_node("Cast", ["cat"], ["cat_f"], to=TensorProto.DOUBLE),
            helper.make_node("Mul", ["cat_f", "c"], ["scaled"]),
            helper.make_node("Add", ["linear", "scaled"], ["score"]),
        ],
        "mixed_tabular",
        [
            helper.make_tensor_value_info("num", TensorProto.DOUBLE, ["batch", 3]),
            helper.make_tensor_value_info("cat", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.DOUBLE, ["batch", 1])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(scale, "c")],
    )
    return _save(folder, graph, None)


TAGGER_VOCAB = 50
TAGGER_CLASSES = 5


def token_tagger(folder: Path, seed: int = 2, hidden: int = 8) -> Path:
    """A token-classification head over a random embedding table: ``input_ids,
    attention_mask: int64[B,S]`` → ``logits: float32[B,S,C]`` (masked tokens get the bias
    only), S dynamic."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(TAGGER_VOCAB, hidden)).astype(np.float32)
    head = rng.normal(size=(hidden, TAGGER_CLASSES)).astype(np.float32)
    bias = rng.normal(size=(TAGGER_CLASSES,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "input_ids"], ["embedded"]),
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),
            helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
            helper.make_node("Tanh", ["masked"], ["hidden"]),
            helper.make_node("MatMul", ["hidden", "H"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
        ],
        "token_tagger",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", "sequence", TAGGER_CLASSES]
            )
        ],
        initializer=[
            numpy_helper.from_array(table, "E"),
            numpy_helper.from_array(head, "H"),
            numpy_helper.from_array(bias, "bias"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
        ],
    )
    return _save(folder, graph, None)


def unbatched(folder: Path, config: dict[str, object] | None = None) -> Path:
    """No batch axis: ``v: float32[3]`` → ``doubled: float32[3]``."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["v", "v"], ["doubled"])],
        "unbatched",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [3])],
    )
    return _save(folder, graph, config)


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's outputs from in-process ONNX Runtime (the ground truth of the tests)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))
