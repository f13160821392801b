"""NanoDet's graph after tf2onnx → the served layout: input ``images float32[B,3,416,416]``,
one output ``output0 float32[B, 3549, 80 + 4·11]`` (per stride 8, 16, 32: sigmoid class
scores, then the side distributions; points row-major), the batch axis free."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.common import ExportError
from export.labels import COCO_LABELS

SIZE = 416
STRIDES = (8, 16, 32)
BINS = 11  # reg_max 10: distances 0..10 strides


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        v.name: [
            d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
        ]
        for v in values
    }


def rewrite_graph(model: onnx.ModelProto, num_classes: int = len(COCO_LABELS)) -> onnx.ModelProto:
    """The converted graph → input ``images``, one output ``output0 [B, N, C+4·bins]``."""
    graph = model.graph
    shapes = _shapes(model)
    for node in graph.node:
        if node.op_type == "Reshape":  # [B, C, H, W] → [B, C, H·W], batch copied
            channels = shapes[node.input[0]][1]
            if channels <= 0:
                raise ExportError(f"reshape {node.name}: unknown channel count")
            target = f"{node.name}/shape"
            graph.initializer.append(
                numpy_helper.from_array(np.array([0, channels, -1], np.int64), target)
            )
            node.input[1] = target
    shapes = _shapes(model)
    by_shape = {tuple(shapes[o.name][1:]): o.name for o in graph.output}
    old_input = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["images" if name == old_input else name for name in node.input]
    graph.input[0].name = "images"
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    levels = []
    for stride in STRIDES:
        points = (SIZE // stride) ** 2
        try:
            parts = [by_shape[(points, num_classes)], by_shape[(points, 4 * BINS)]]
        except KeyError:
            raise ExportError(
                f"no [{points}, {num_classes}] / [{points}, {4 * BINS}] outputs for stride "
                f"{stride}; the graph has {sorted(by_shape)}"
            ) from None
        levels.append(f"stride{stride}")
        graph.node.append(helper.make_node("Concat", parts, [levels[-1]], axis=2))
    graph.node.append(helper.make_node("Concat", levels, ["output0"], axis=1))
    points = sum((SIZE // s) ** 2 for s in STRIDES)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            "output0", TensorProto.FLOAT, ["batch", points, num_classes + 4 * BINS]
        )
    )
    # drops what only fed the old outputs and the batch-1 shape arithmetic
    rewritten: onnx.ModelProto = onnx.utils.Extractor(model).extract_model(["images"], ["output0"])
    onnx.checker.check_model(rewritten)
    return rewritten
