"""Checks a model's config against its ONNX graph, and the warm-up inputs it is run with."""

from __future__ import annotations

from typing import cast

import numpy as np

from service.model_config import CONFIG_DTYPES, ConfigError, Dtype, ModelConfig, TensorSpec
from service.runtime.session import IOSpec, Session
from service.tasks.base import Feeds
from service.tasks.detection import NANODET_STRIDES, nanodet_centers

_NP_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}
DEFAULT_GRAPH_BATCH = 8  # max_batch_size of a graph-completed config whose graph has a batch axis


def _has_batch_axis(spec: IOSpec) -> bool:
    """A first axis that is not fixed (symbolic, unknown or -1): the graph takes any batch."""
    return bool(spec.shape) and spec.dims()[0] == -1


def _spec_from_graph(model: str, kind: str, graph: IOSpec, batched: bool) -> TensorSpec:
    if graph.dtype not in CONFIG_DTYPES:
        raise ConfigError(
            f"model {model!r}: {kind}s: {graph.name!r} is {graph.dtype} in the graph, which "
            f"the server cannot serve (it serves {', '.join(CONFIG_DTYPES)})"
        )
    dims = graph.dims()
    dtype = cast(Dtype, graph.dtype)  # one of CONFIG_DTYPES (checked above)
    return TensorSpec(name=graph.name, dtype=dtype, dims=dims[1:] if batched else dims)


def _narrowed(spec: TensorSpec, graph: list[IOSpec], batched: bool) -> TensorSpec:
    """A stated tensor whose variable axes (-1) the graph fixes, at the graph's sizes (so the
    warm-up and the request checks use them); anything else as stated, for the graph check."""
    match = next((t for t in graph if t.name == spec.name), None)
    if match is None:
        return spec
    dims = match.dims()[1:] if batched else match.dims()
    if len(dims) != len(spec.dims):
        return spec
    narrowed = [have if want == -1 else want for want, have in zip(spec.dims, dims, strict=True)]
    return spec if narrowed == spec.dims else spec.model_copy(update={"dims": narrowed})


def complete_from_graph(config: ModelConfig, session: Session) -> ModelConfig:
    """Triton's auto-complete for a task whose entry says ``graph_io`` (tensor): the inputs,
    outputs and batch axis the config leaves out, from the graph. The graph is batched when the
    first axis of every input and output is variable; then ``batching.max_batch_size`` defaults
    to ``DEFAULT_GRAPH_BATCH``, else to 0. What the config does state is kept, for
    ``validate_against_graph`` to check against the graph."""
    name = config.name
    graph = [*session.inputs, *session.outputs]
    batching = config.batching
    axis = all(_has_batch_axis(t) for t in graph)
    if "max_batch_size" not in batching.model_fields_set:
        batching = batching.model_copy(
            update={"max_batch_size": DEFAULT_GRAPH_BATCH if axis else 0}
        )
    elif batching.max_batch_size > 0 and not axis:
        fixed = [t.name for t in graph if not _has_batch_axis(t)]
        raise ConfigError(
            f"model {name!r}: field batching.max_batch_size: {batching.max_batch_size} > 0 but "
            f"the graph has no batch axis (a variable first axis on every input and output; "
            f"not on {fixed}); leave it out or set it to 0"
        )
    batched = batching.max_batch_size > 0
    inputs = [_narrowed(s, session.inputs, batched) for s in config.inputs] or [
        _spec_from_graph(name, "input", t, batched) for t in session.inputs
    ]
    outputs = [_narrowed(s, session.outputs, batched) for s in config.outputs] or [
        _spec_from_graph(name, "output", t, batched) for t in session.outputs
    ]
    return config.model_copy(update={"inputs": inputs, "outputs": outputs, "batching": batching})


def _check_tensor(model: str, kind: str, spec: TensorSpec, graph: IOSpec, batched: bool) -> None:
    where = f"model {model!r}: {kind} {spec.name!r}"
    if spec.dtype != graph.dtype:
        raise ConfigError(f"{where}: dtype is {graph.dtype} in the graph, {spec.dtype} in config")
    dims = graph.dims()
    if batched:
        if not dims:
            raise ConfigError(
                f"{where}: the graph tensor has no batch axis but max_batch_size > 0 "
                "(field batching.max_batch_size)"
            )
        dims = dims[1:]
    if len(dims) != len(spec.dims):
        raise ConfigError(
            f"{where}: dims {spec.dims} have rank {len(spec.dims)}, the graph's "
            f"{graph.dims()} (batch axis {'included' if batched else 'absent'}) rank {len(dims)}"
        )
    for axis, (want, have) in enumerate(zip(spec.dims, dims, strict=True)):
        if want != -1 and have != -1 and want != have:
            raise ConfigError(f"{where}: dims[{axis}] is {want} in config but {have} in the graph")


def validate_against_graph(config: ModelConfig, labels: list[str], session: Session) -> None:
    """Every mismatch between config.yaml and the ONNX graph is a ConfigError naming the field."""
    name = config.name
    graph_inputs = {i.name: i for i in session.inputs}
    graph_outputs = {o.name: o for o in session.outputs}
    for spec in config.inputs:
        if spec.name not in graph_inputs:
            raise ConfigError(
                f"model {name!r}: inputs: {spec.name!r} is not a graph input "
                f"(graph has {sorted(graph_inputs)})"
            )
        _check_tensor(name, "input", spec, graph_inputs[spec.name], config.batched)
    missing = set(graph_inputs) - {s.name for s in config.inputs}
    if missing:
        raise ConfigError(f"model {name!r}: inputs: the graph also needs {sorted(missing)}")
    for spec in config.outputs:
        if spec.name not in graph_outputs:
            raise ConfigError(
                f"model {name!r}: outputs: {spec.name!r} is not a graph output "
                f"(graph has {sorted(graph_outputs)})"
            )
        _check_tensor(name, "output", spec, graph_outputs[spec.name], config.batched)
    if config.image is not None:
        dims = config.inputs[0].dims
        if len(dims) != 3 or dims[0] not in (3, -1):
            raise ConfigError(f"model {name!r}: inputs[0].dims must be [3, H, W] for images")
        for axis, size, field_name in (
            (1, config.image.height, "height"),
            (2, config.image.width, "width"),
        ):
            if dims[axis] != -1 and dims[axis] != size:
                raise ConfigError(
                    f"model {name!r}: image.{field_name} is {size} but the input is {dims[axis]}"
                )
    classes = _class_count(config)
    if labels and classes is not None and classes != len(labels):
        raise ConfigError(
            f"model {name!r}: labels: {len(labels)} labels for {classes} output classes"
        )
    if config.format == "nanodet":
        _check_nanodet(config, labels)
    meta = session.metadata
    for key in ("task", "format"):
        if key in meta and meta[key] != getattr(config, key):
            raise ConfigError(
                f"model {name!r}: {key}: config says {getattr(config, key)!r}, "
                f"the ONNX metadata says {meta[key]!r}"
            )


def _check_nanodet(config: ModelConfig, labels: list[str]) -> None:
    """``[N, C + 4·bins]``: C comes from the labels, N from the input size and the strides."""
    name, dims, image = config.name, config.outputs[0].dims, config.image
    if not labels:
        raise ConfigError(f"model {name!r}: labels: format nanodet needs one label per class")
    if len(dims) != 2 or image is None:
        raise ConfigError(f"model {name!r}: outputs[0].dims must be [N, C+4·bins] for nanodet")
    points = len(nanodet_centers(image.width, image.height))
    if dims[0] not in (-1, points):
        raise ConfigError(
            f"model {name!r}: outputs[0].dims[0] is {dims[0]}; a {image.width}×{image.height} "
            f"input at strides {NANODET_STRIDES} has {points} points"
        )
    sides = dims[1] - len(labels)
    if dims[1] != -1 and (sides <= 0 or sides % 4):
        raise ConfigError(
            f"model {name!r}: labels: {len(labels)} labels leave {sides} of the output's "
            f"{dims[1]} values per point, not 4 side distributions"
        )


def _class_count(config: ModelConfig) -> int | None:
    dims = config.outputs[0].dims
    if config.format in ("classification-logits", "classification-probs", "semantic-logits"):
        size = dims[0] if dims else -1
    elif config.format == "yolov8":
        size = dims[0] - 4 if dims and dims[0] != -1 else -1
    elif config.format == "yolov8-seg":  # output0 [4+nc+nm, N], output1 (prototypes) [nm, h, w]
        masks = config.outputs[1].dims[0] if config.outputs[1].dims else -1
        size = dims[0] - 4 - masks if dims and -1 not in (dims[0], masks) else -1
    elif config.format == "yolov5":
        size = dims[-1] - 5 if dims and dims[-1] != -1 else -1
    else:
        return None
    return size if size > 0 else None


WARMUP_TEXT_LENGTH = 16  # tokens per warm-up text: short, so a text model's load stays quick


def warmup_shapes(
    config: ModelConfig, text_length: int = WARMUP_TEXT_LENGTH
) -> dict[str, tuple[list[int], str]]:
    """``{input name: (shape of one item, dtype)}`` of the warm-up inputs (no batch axis):
    images at the configured size (``fit``: at most 256×256), variable text axes
    ``text_length`` tokens long."""
    shapes: dict[str, tuple[list[int], str]] = {}
    for spec in config.inputs:
        if config.image is not None:
            shape = [3, config.image.height, config.image.width]
            if config.image.resize == "fit":
                shape = [3, min(config.image.height, 256), min(config.image.width, 256)]
        else:  # text: variable axes are tokens; a plain graph's (tensor) are 1
            variable = text_length if config.text is not None else 1
            shape = [d if d != -1 else variable for d in spec.dims]
        shapes[spec.name] = (shape, spec.dtype)
    return shapes


def dtype_size(dtype: str) -> int:
    """Bytes per element of a config dtype."""
    return int(np.dtype(_NP_DTYPES[dtype]).itemsize)


def warmup_feeds(config: ModelConfig, text_length: int = WARMUP_TEXT_LENGTH) -> Feeds:
    feeds: Feeds = {}
    for name, (shape, dtype_name) in warmup_shapes(config, text_length).items():
        dtype = _NP_DTYPES[dtype_name]
        feeds[name] = (
            np.ones(shape, dtype=dtype)
            if name == "attention_mask"
            else np.zeros(shape, dtype=dtype)
        )
    return feeds
