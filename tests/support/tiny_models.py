"""Tiny but real ONNX models for every task and output format, built with ``onnx.helper``.

Each model computes something simple from its input, so tests can predict the right answer:
- ``tiny-classifier``: mean colour → class (red, green, blue).
- ``tiny-yolo``: four fixed candidate boxes (the quadrants of a 64×64 input); class scores are the
  mean red / green of each quadrant. YOLOv8 layout ``[B, 4+2, 4]``.
- ``tiny-yolov5``: the same in the YOLOv5 layout ``[B, 4, 5+2]`` with objectness 1.
- ``tiny-seg``: semantic logits = the RGB channels themselves, so class = dominant channel.
- ``tiny-maskrcnn``: one instance covering the image, score = mean red, mask = red channel.
- ``tiny-yolo-seg``: ``tiny-yolo`` plus one mask coefficient (1) per candidate and one
  prototype, the red channel − 0.5 at 16×16: each instance's mask = red pixels in its box.
- ``tiny-nanodet``: NanoDet's layout ``[B, 84, 2+4·2]`` for a 64×64 input (strides 8, 16, 32);
  one point (centre 24, 24) scores the mean red / green, its sides say one stride (16 px) each:
  a box 8,8–40,40 in input pixels.
- ``tiny-embedder``: an embedding table + masked mean pooling, with a WordLevel tokenizer.
- ``tiny-pipeline``: not a model but a pipeline: ``tiny-yolo`` → crop → ``tiny-classifier``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

COLOURS = ["red", "green", "blue"]
WORDS = ["cat", "dog", "car", "truck", "apple", "pear", "sky", "sea", "red", "blue"]


def save_model(
    folder: Path, graph: onnx.GraphProto, config: dict[str, object], opset: int = 17
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def classifier_graph(nodes: list[onnx.NodeProto], name: str) -> onnx.GraphProto:
    """``input float32[B,3,32,32]`` → ``logits float32[B,3]`` (the colour classifiers' IO)."""
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )


def classifier_config(batching: dict[str, object] | None = None) -> dict[str, object]:
    """config.yaml of a colour classifier (``batching`` left out: the service's defaults)."""
    config: dict[str, object] = {
        "task": "classify",
        "format": "classification-logits",
        "inputs": [{"name": "input", "dtype": "float32", "dims": [3, 32, 32]}],
        "outputs": [{"name": "logits", "dtype": "float32", "dims": [3]}],
        "image": {"resize": "stretch", "width": 32, "height": 32},
        "labels": COLOURS,
    }
    if batching is not None:
        config["batching"] = batching
    return config


def classifier(folder: Path, max_batch_size: int = 8) -> None:
    weights = np.eye(3, dtype=np.float32) * 20.0
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        const("w", weights),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    batching = {"max_batch_size": max_batch_size, "max_delay_ms": 5, "max_queue_size": 64}
    save_model(folder, classifier_graph(nodes, "tiny-classifier"), classifier_config(batching))


def _quadrant_scores_nodes() -> list[onnx.NodeProto]:
    """input float[B,3,64,64] → 'cls' float[B,2,4]: mean red/green per quadrant."""
    return [
        helper.make_node(
            "AveragePool", ["images"], ["quad"], kernel_shape=[32, 32], strides=[32, 32]
        ),
        const("starts", np.array([0], dtype=np.int64)),
        const("ends", np.array([2], dtype=np.int64)),
        const("axes", np.array([1], dtype=np.int64)),
        helper.make_node("Slice", ["quad", "starts", "ends", "axes"], ["rg"]),
        const("cls_shape", np.array([0, 2, 4], dtype=np.int64)),
        helper.make_node("Reshape", ["rg", "cls_shape"], ["cls"]),
    ]


def _batch_boxes_nodes(boxes: np.ndarray) -> list[onnx.NodeProto]:
    """Constant boxes float[4,4] broadcast to 'boxes_b' float[B,4,4] (axes: coord, candidate)."""
    return [
        helper.make_node("Shape", ["images"], ["in_shape"]),
        const("zero_idx", np.array([0], dtype=np.int64)),
        helper.make_node("Gather", ["in_shape", "zero_idx"], ["batch"], axis=0),
        const("box_tail", np.array([4, 4], dtype=np.int64)),
        helper.make_node("Concat", ["batch", "box_tail"], ["box_shape"], axis=0),
        const("box_const", boxes[None]),
        helper.make_node("Expand", ["box_const", "box_shape"], ["boxes_b"]),
    ]


# quadrant centres and sizes in input pixels: cx, cy, w, h per candidate (columns)
_QUAD_BOXES = np.array(
    [[16, 48, 16, 48], [16, 16, 48, 48], [32, 32, 32, 32], [32, 32, 32, 32]], dtype=np.float32
)


def yolo(folder: Path, layout: str = "yolov8") -> None:
    nodes = _quadrant_scores_nodes() + _batch_boxes_nodes(_QUAD_BOXES)
    if layout == "yolov8":
        nodes.append(helper.make_node("Concat", ["boxes_b", "cls"], ["output0"], axis=1))
        out_dims: list[object] = ["batch", 6, 4]
        cfg_dims = [6, 4]
    else:
        nodes += [
            const("obj_tail", np.array([1, 4], dtype=np.int64)),
            helper.make_node("Concat", ["batch", "obj_tail"], ["obj_shape"], axis=0),
            const("one", np.ones((1, 1, 1), dtype=np.float32)),
            helper.make_node("Expand", ["one", "obj_shape"], ["obj"]),
            helper.make_node("Concat", ["boxes_b", "obj", "cls"], ["stacked"], axis=1),
            helper.make_node("Transpose", ["stacked"], ["output0"], perm=[0, 2, 1]),
        ]
        out_dims = ["batch", 4, 7]
        cfg_dims = [4, 7]
    graph = helper.make_graph(
        nodes,
        f"tiny-{layout}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_dims)],
    )
    save_model(
        folder,
        graph,
        {
            "task": "detect",
            "format": layout,
            "inputs": [{"name": "images", "dtype": "float32", "dims": [3, 64, 64]}],
            "outputs": [{"name": "output0", "dtype": "float32", "dims": cfg_dims}],
            "image": {"resize": "letterbox", "width": 64, "height": 64, "pad_value": 0},
            "labels": ["red", "green"],
            "batching": {"max_batch_size": 8, "max_delay_ms": 5, "max_queue_size": 64},
        },
    )


def nanodet(folder: Path) -> None:
    points, point = 64 + 16 + 4, 64 + 4 + 1  # stride 16, row 1, column 1
    mask = np.zeros((1, points, 1), dtype=np.float32)
    mask[0, point] = 1.0
    sides = np.full((1, points, 4, 2), -50.0, dtype=np.float32)
    sides[0, point, :, 1] = 50.0  # every side: bin 1 = one stride
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[2, 3], keepdims=0),
        const("rg_start", np.array([0], dtype=np.int64)),
        const("rg_end", np.array([2], dtype=np.int64)),
        const("rg_axis", np.array([1], dtype=np.int64)),
        helper.make_node("Slice", ["mean", "rg_start", "rg_end", "rg_axis"], ["rg"]),
        helper.make_node("Unsqueeze", ["rg", "rg_axis"], ["rg_1"]),
        const("point_mask", mask),
        helper.make_node("Mul", ["rg_1", "point_mask"], ["scores"]),
        helper.make_node("Shape", ["images"], ["in_shape"]),
        const("zero_idx", np.array([0], dtype=np.int64)),
        helper.make_node("Gather", ["in_shape", "zero_idx"], ["batch"], axis=0),
        const("side_tail", np.array([points, 8], dtype=np.int64)),
        helper.make_node("Concat", ["batch", "side_tail"], ["side_shape"], axis=0),
        const("sides", sides.reshape(1, points, 8)),
        helper.make_node("Expand", ["sides", "side_shape"], ["sides_b"]),
        helper.make_node("Concat", ["scores", "sides_b"], ["output0"], axis=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-nanodet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", points, 10])],
    )
    save_model(
        folder,
        graph,
        {
            "task": "detect",
            "format": "nanodet",
            "inputs": [{"name": "images", "dtype": "float32", "dims": [3, 64, 64]}],
            "outputs": [{"name": "output0", "dtype": "float32", "dims": [points, 10]}],
            "image": {"resize": "letterbox", "width": 64, "height": 64, "pad_value": 0},
            "labels": ["red", "green"],
            "batching": {"max_batch_size": 8, "max_delay_ms": 5, "max_queue_size": 64},
        },
    )


def yolo_seg(folder: Path) -> None:
    """Ultralytics -seg layout: ``output0 [B, 4+2+1, 4]``, prototypes ``output1 [B, 1, 16, 16]``."""
    nodes = _quadrant_scores_nodes() + _batch_boxes_nodes(_QUAD_BOXES)
    nodes += [
        const("coef_tail", np.array([1, 4], dtype=np.int64)),
        helper.make_node("Concat", ["batch", "coef_tail"], ["coef_shape"], axis=0),
        const("coef_one", np.ones((1, 1, 1), dtype=np.float32)),
        helper.make_node("Expand", ["coef_one", "coef_shape"], ["coef"]),
        helper.make_node("Concat", ["boxes_b", "cls", "coef"], ["output0"], axis=1),
        const("red_start", np.array([0], dtype=np.int64)),
        const("red_end", np.array([1], dtype=np.int64)),
        helper.make_node("Slice", ["images", "red_start", "red_end", "axes"], ["red"]),
        helper.make_node("AveragePool", ["red"], ["red16"], kernel_shape=[4, 4], strides=[4, 4]),
        const("half", np.array(0.5, dtype=np.float32)),
        helper.make_node("Sub", ["red16", "half"], ["output1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-yolo-seg",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [
            helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 7, 4]),
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["batch", 1, 16, 16]),
        ],
    )
    save_model(
        folder,
        graph,
        {
            "task": "segment",
            "format": "yolov8-seg",
            "inputs": [{"name": "images", "dtype": "float32", "dims": [3, 64, 64]}],
            "outputs": [
                {"name": "output0", "dtype": "float32", "dims": [7, 4]},
                {"name": "output1", "dtype": "float32", "dims": [1, 16, 16]},
            ],
            "image": {"resize": "letterbox", "width": 64, "height": 64, "pad_value": 0},
            "labels": ["red", "green"],
            "batching": {"max_batch_size": 8, "max_delay_ms": 5, "max_queue_size": 64},
        },
    )


def semantic(folder: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "tiny-seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 32, 32])],
    )
    save_model(
        folder,
        graph,
        {
            "task": "segment",
            "format": "semantic-logits",
            "inputs": [{"name": "input", "dtype": "float32", "dims": [3, 32, 32]}],
            "outputs": [{"name": "logits", "dtype": "float32", "dims": [3, 32, 32]}],
            "image": {"resize": "stretch", "width": 32, "height": 32},
            "labels": COLOURS,
            "batching": {"max_batch_size": 4, "max_delay_ms": 5, "max_queue_size": 64},
        },
    )


def maskrcnn(folder: Path) -> None:
    nodes = [
        const("c0", np.array([0], dtype=np.int64)),
        const("c1", np.array([1], dtype=np.int64)),
        const("ax0", np.array([0], dtype=np.int64)),
        helper.make_node("Slice", ["image", "c0", "c1", "ax0"], ["red"]),  # [1,H,W]
        helper.make_node("Unsqueeze", ["red", "ax0"], ["masks"]),  # [1,1,H,W]
        helper.make_node("ReduceMean", ["red"], ["mean_red"], keepdims=0),  # scalar
        helper.make_node("Unsqueeze", ["mean_red", "ax0"], ["scores"]),  # [1]
        const("labels", np.array([1], dtype=np.int64)),
        helper.make_node("Shape", ["image"], ["shape"]),
        const("hw_idx", np.array([2, 1], dtype=np.int64)),
        helper.make_node("Gather", ["shape", "hw_idx"], ["wh_i"], axis=0),
        helper.make_node("Cast", ["wh_i"], ["wh"], to=TensorProto.FLOAT),
        const("origin", np.zeros(2, dtype=np.float32)),
        helper.make_node("Concat", ["origin", "wh"], ["box"], axis=0),
        helper.make_node("Unsqueeze", ["box", "ax0"], ["boxes"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-maskrcnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "height", "width"])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["n", 1, "height", "width"]),
        ],
    )
    save_model(
        folder,
        graph,
        {
            "task": "segment",
            "format": "maskrcnn",
            "inputs": [{"name": "image", "dtype": "float32", "dims": [3, -1, -1]}],
            "outputs": [
                {"name": "boxes", "dtype": "float32", "dims": [-1, 4]},
                {"name": "labels", "dtype": "int64", "dims": [-1]},
                {"name": "scores", "dtype": "float32", "dims": [-1]},
                {"name": "masks", "dtype": "float32", "dims": [-1, 1, -1, -1]},
            ],
            "image": {"resize": "fit", "width": 48, "height": 48},
            "labels": ["background", "red-thing"],
            "batching": {"max_batch_size": 0, "max_queue_size": 64},
        },
    )


def torchvision_detector(folder: Path) -> None:
    """torchvision-style outputs, no batch axis: one box covering the image's red half (left),
    label 1, score = mean red of that half."""
    nodes = [
        const("c0", np.array([0], dtype=np.int64)),
        const("c1", np.array([1], dtype=np.int64)),
        const("ax0", np.array([0], dtype=np.int64)),
        helper.make_node("Slice", ["image", "c0", "c1", "ax0"], ["red"]),
        helper.make_node("Shape", ["image"], ["shape"]),
        const("hw_idx", np.array([2, 1], dtype=np.int64)),
        helper.make_node("Gather", ["shape", "hw_idx"], ["wh_i"], axis=0),
        helper.make_node("Cast", ["wh_i"], ["wh"], to=TensorProto.FLOAT),
        const("half_w", np.array([0.5, 1.0], dtype=np.float32)),
        helper.make_node("Mul", ["wh", "half_w"], ["corner"]),
        const("origin", np.zeros(2, dtype=np.float32)),
        helper.make_node("Concat", ["origin", "corner"], ["box"], axis=0),
        helper.make_node("Unsqueeze", ["box", "ax0"], ["boxes"]),
        helper.make_node("ReduceMean", ["red"], ["mean_red"], keepdims=0),
        const("two", np.array(2.0, dtype=np.float32)),
        helper.make_node("Mul", ["mean_red", "two"], ["score"]),  # red covers half the image
        helper.make_node("Unsqueeze", ["score", "ax0"], ["scores"]),
        const("labels", np.array([1], dtype=np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-torchvision-detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "height", "width"])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"]),
        ],
    )
    save_model(
        folder,
        graph,
        {
            "task": "detect",
            "format": "torchvision-detection",
            "inputs": [{"name": "image", "dtype": "float32", "dims": [3, -1, -1]}],
            "outputs": [
                {"name": "boxes", "dtype": "float32", "dims": [-1, 4]},
                {"name": "labels", "dtype": "int64", "dims": [-1]},
                {"name": "scores", "dtype": "float32", "dims": [-1]},
            ],
            "image": {"resize": "fit", "width": 64, "height": 64},
            "labels": ["background", "red-half"],
            "batching": {"max_batch_size": 0, "max_queue_size": 64},
        },
    )


def embedder(folder: Path, dims: int = 8, seed: int = 0) -> None:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for word in WORDS:
        vocab[word] = len(vocab)
    table = np.random.default_rng(seed).standard_normal((len(vocab), dims)).astype(np.float32)
    nodes = [
        const("table", table),
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"], axis=0),  # [B,S,D]
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        const("last", np.array([-1], dtype=np.int64)),
        helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),  # [B,S,1]
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        const("seq_axis", np.array([1], dtype=np.int64)),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], keepdims=0),
        const("eps", np.array([1e-9], dtype=np.float32)),
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["sentence_embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-embedder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", dims])],
    )
    save_model(
        folder,
        graph,
        {
            "task": "embed",
            "format": "sentence-embedding",
            "inputs": [
                {"name": "input_ids", "dtype": "int64", "dims": [-1]},
                {"name": "attention_mask", "dtype": "int64", "dims": [-1]},
            ],
            "outputs": [{"name": "sentence_embedding", "dtype": "float32", "dims": [dims]}],
            "text": {"tokenizer": "tokenizer.json", "max_length": 16, "pad_token_id": 0},
            "batching": {"max_batch_size": 16, "max_delay_ms": 5, "max_queue_size": 64},
        },
    )
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))


def pipeline(
    folder: Path,
    detect: str = "tiny-yolo",
    classify: str = "tiny-classifier",
    *,
    detect_options: dict[str, object] | None = None,
    crop: dict[str, object] | None = None,
    top_k: int = 2,
) -> None:
    """A detect → crop → classify pipeline folder (``task: pipeline``, no graph of its own).
    With the defaults, ``tiny-yolo`` finds red and green quadrants and ``tiny-classifier`` names
    each crop's mean colour: a red quadrant is detected "red" and classified "red"."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "task": "pipeline",
        "description": "tiny detect → crop → classify",
        "steps": [
            {"step": "detect", "model": detect, **(detect_options or {})},
            {"step": "crop", **(crop or {"padding": 0.0, "min_size": 4, "max_crops": 8})},
            {"step": "classify", "model": classify, "top_k": top_k},
        ],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def embedding_table(folder: Path) -> np.ndarray:
    """The embedder's table, for computing expected embeddings in tests."""
    model = onnx.load(str(folder / "model.onnx"))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == "table":
            return numpy_helper.to_array(node.attribute[0].t)
    raise LookupError("no table in the embedder")


def build_repository(root: Path) -> Path:
    """Every tiny model in one repository; returns ``root``."""
    classifier(root / "tiny-classifier")
    yolo(root / "tiny-yolo", "yolov8")
    yolo(root / "tiny-yolov5", "yolov5")
    nanodet(root / "tiny-nanodet")
    semantic(root / "tiny-seg")
    maskrcnn(root / "tiny-maskrcnn")
    yolo_seg(root / "tiny-yolo-seg")
    torchvision_detector(root / "tiny-tv-detector")
    embedder(root / "tiny-embedder")
    pipeline(root / "tiny-pipeline")
    return root


TINY_DEFAULTS = {
    "default_classify_model": "tiny-classifier",
    "default_detect_model": "tiny-yolo",
    "default_segment_model": "tiny-seg",
    "default_embed_model": "tiny-embedder",
}


def versioned_classifier(folder: Path, version: int, max_batch_size: int = 8) -> None:
    """A colour classifier whose answer says which version produced it: logits are the mean
    colour × (20 + ``version``) (a pure red image: red logit = 20 + version) and its labels are
    ``v<version>-red`` etc. Written into ``folder`` by rename, as an export writes."""
    staging = folder.with_name(f".{folder.name}.tmp")
    weights = np.eye(3, dtype=np.float32) * (20.0 + version)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        const("w", weights),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    config = classifier_config({"max_batch_size": max_batch_size, "max_delay_ms": 5})
    config["labels"] = [f"v{version}-{c}" for c in COLOURS]
    save_model(staging, classifier_graph(nodes, "versioned-classifier"), config)
    staging.rename(folder)
