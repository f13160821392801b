"""fp16: a float32 graph converted to float16 (weights and compute; IO stays float32) and
checked against the float32 graph, on raw outputs and on what a client is shown (detections,
class maps) through the service's own decoding."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from export.verify import ParityError, cosine

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("export")


Outputs = dict[str, np.ndarray]
# (fp32 outputs, fp16 outputs, item index) → named measurements; "max_*" values are upper
# bounds and "min_*" lower bounds, checked against the limits of the same name
Measure = Callable[[Outputs, Outputs, int], dict[str, float]]


@dataclass(frozen=True)
class Found:
    """What a client is shown for one image: ``boxes float[N,4]`` x1,y1,x2,y2 in pixels of the
    original image, ``scores float[N]``, ``class_ids int[N]`` and, for instance segmentation,
    one ``bool[H,W]`` mask per box."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: Sequence[np.ndarray] | None = None


def compare_found(ref: Found, got: Found, *, confidence: float, margin: float) -> dict[str, float]:
    """Match what fp32 and fp16 show a client: every detection scoring at least
    ``confidence + margin`` in either must have a same-class partner in the other (the one of
    highest IoU, at least 0.5). A detection within ``margin`` of the threshold may appear in one
    only. Returns the worst box corner offset (px), score difference and mask IoU of the
    matched pairs, and the number of unmatched confident detections."""
    from service.tasks.detection import box_iou

    box_px, score, unmatched, mask_iou_min = 0.0, 0.0, 0, 1.0
    for a, b, a_is_ref in ((ref, got, True), (got, ref, False)):
        for i in np.flatnonzero(a.scores >= confidence + margin):
            same = np.flatnonzero(b.class_ids == a.class_ids[i])
            if same.size == 0:
                unmatched += 1
                continue
            ious = box_iou(a.boxes[i], b.boxes[same])
            j = int(same[int(ious.argmax())])
            if ious.max() < 0.5:
                unmatched += 1
                continue
            box_px = max(box_px, float(np.abs(a.boxes[i] - b.boxes[j]).max()))
            score = max(score, abs(float(a.scores[i]) - float(b.scores[j])))
            if a_is_ref and a.masks is not None and b.masks is not None:
                mi, mj = a.masks[int(i)], b.masks[j]
                union = int((mi | mj).sum())
                if union:
                    mask_iou_min = min(mask_iou_min, int((mi & mj).sum()) / union)
    report = {
        "max_box_px": box_px,
        "max_score_diff": score,
        "max_unmatched": float(unmatched),
        "detections": float(int((ref.scores >= confidence).sum())),
    }
    if ref.masks is not None:
        report["min_mask_iou"] = mask_iou_min
    return report


def detections_agree(
    shown: Callable[[Outputs, int], Found], *, confidence: float, margin: float = 0.05
) -> Measure:
    """A :data:`Measure` comparing ``shown(outputs, item)`` (the service's own decoding of one
    item's outputs) of the two graphs with :func:`compare_found`."""

    def measure(ref: Outputs, got: Outputs, item: int) -> dict[str, float]:
        return compare_found(
            shown(ref, item), shown(got, item), confidence=confidence, margin=margin
        )

    return measure


def class_maps_agree(class_map: Callable[[Outputs, int], np.ndarray]) -> Measure:
    """A :data:`Measure`: the fraction of pixels of the class map a client gets
    (``class_map(outputs, item)``) on which the two graphs agree."""

    def measure(ref: Outputs, got: Outputs, item: int) -> dict[str, float]:
        a, b = class_map(ref, item), class_map(got, item)
        return {"min_pixel_agreement": float((a == b).mean())}

    return measure


def _row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row cosine; a row that is zero in both graphs (e.g. a text of unknown words)
    agrees."""
    if not a.size:
        return 1.0
    both_zero = ~a.reshape(a.shape[0], -1).any(1) & ~b.reshape(b.shape[0], -1).any(1)
    return float(np.where(both_zero, 1.0, cosine(a, b)).min())


# control flow keeps its subgraphs in float32: the converter does not follow the values a
# subgraph reads from the enclosing graph (see _feed_subgraphs_fp32)
CONTROL_FLOW = ("If", "Loop", "Scan")


def _subgraph_reads(graph: Any) -> set[str]:
    """Names a subgraph (and the subgraphs nested in it) reads from enclosing graphs."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    read: set[str] = set()
    for node in graph.node:
        read.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                read |= _subgraph_reads(sub)
        defined.update(node.output)
    return read - defined


def _feed_subgraphs_fp32(model: Any) -> None:
    """After conversion: every float16 value of the main graph that a (float32) control-flow
    subgraph reads implicitly goes through a Cast to float32 first, and the subgraph reads that.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    fp16_names = {
        v.name
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16
    } | {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT16}

    def rename(sub: Any, mapping: dict[str, str]) -> None:
        for node in sub.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
            for attr in node.attribute:
                for inner in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    rename(inner, mapping)

    nodes = list(graph.node)
    rebuilt: list[onnx.NodeProto] = []
    casts: dict[str, str] = {}
    for node in nodes:
        if node.op_type in CONTROL_FLOW:
            subs = [a.g for a in node.attribute if a.HasField("g")]
            subs += [g for a in node.attribute for g in a.graphs]
            reads = set().union(*(_subgraph_reads(g) for g in subs)) if subs else set()
            mapping = {}
            for name in sorted(reads & fp16_names):
                if name not in casts:
                    casts[name] = f"{name}_fp32_for_subgraph"
                    rebuilt.append(
                        helper.make_node(
                            "Cast",
                            [name],
                            [casts[name]],
                            to=TensorProto.FLOAT,
                            name=f"{name}_fp32_for_subgraph_cast",
                        )
                    )
                mapping[name] = casts[name]
            for sub in subs:
                rename(sub, mapping)
        rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)


def to_fp16(
    fp32_path: Path,
    samples: Sequence[dict[str, np.ndarray]],
    *,
    name: str,
    rel_tol: float = 2e-2,
    min_cosine: float = 0.999,
    raw_outputs: Sequence[str] | None = None,
    measure: Measure | None = None,
    limits: dict[str, float] | None = None,
    batch_axis: bool = True,
    keep_fp32_ops: Sequence[str] = (),
    keep_fp32_nodes: Sequence[str] = (),
) -> tuple[dict[str, Any], onnx.ModelProto]:
    """Write ``fp32_path`` converted to float16 (weights and compute; inputs and outputs stay
    float32 for clients) to ``model-fp16.onnx`` beside it, and check it against the fp32 graph
    on ``samples``.

    Raw check: each of ``raw_outputs`` (default: every float output) within ``rel_tol``·max|fp32|
    (``max_rel_diff``) and each row's cosine ≥ ``min_cosine``. Task check: ``measure`` (per
    batch item, or per sample without ``batch_axis``). Everything measured is checked against
    ``limits`` (which may also override ``max_rel_diff`` and ``min_cosine``): a ``max_*``
    measurement may not exceed its limit, a ``min_*`` one may not fall below it.
    ``keep_fp32_ops`` (op types) and ``keep_fp32_nodes`` (node names) stay float32, beside
    ONNX Runtime's default block list (NonMaxSuppression, TopK, RoiAlign, Range, CumSum, Min,
    Max, Upsample, ...). ONNX Runtime runs fp16 graphs on CPU too (slowly: it casts around the
    ops that have no fp16 CPU kernel), so the check runs anywhere. Returns the report and the
    fp16 graph (loaded from the file it wrote); raises ParityError naming the measurement that
    failed."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    fp16_path = fp32_path.parent / "model-fp16.onnx"
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(CONTROL_FLOW) | set(keep_fp32_ops))
    source = onnx.load(str(fp32_path))
    converted = convert_float_to_float16(
        source,
        keep_io_types=True,
        op_block_list=blocked,
        node_block_list=list(keep_fp32_nodes),
    )
    _feed_subgraphs_fp32(converted)
    onnx.save(converted, str(fp16_path))
    present = {n.op_type for n in source.graph.node}
    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    fp16 = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in fp32.get_outputs()]
    float_outputs = {o.name for o in fp32.get_outputs() if o.type == "tensor(float)"}
    compared = [n for n in names if n in (float_outputs if raw_outputs is None else raw_outputs)]
    limits = {"max_rel_diff": rel_tol, "min_cosine": min_cosine, **(limits or {})}
    worst: dict[str, float] = {"max_rel_diff": 0.0, "min_cosine": 1.0}
    for sample in samples:
        ref = dict(zip(names, fp32.run(names, sample), strict=True))
        got = dict(zip(names, fp16.run(names, sample), strict=True))
        for out in compared:
            a, b = np.asarray(ref[out], np.float64), np.asarray(got[out], np.float64)
            if a.shape != b.shape:
                raise ParityError(f"{name}: fp16 output {out} shape {b.shape} != fp32 {a.shape}")
            scale = max(float(np.abs(a).max(initial=0.0)), 1e-12)
            rel = float(np.abs(a - b).max(initial=0.0) / scale)
            rows_a, rows_b = (a, b) if batch_axis else (a.reshape(1, -1), b.reshape(1, -1))
            cos = _row_cosine(rows_a, rows_b)
            # NaN is the worst of all
            worst["max_rel_diff"] = max(worst["max_rel_diff"], rel if rel == rel else np.inf)
            worst["min_cosine"] = min(worst["min_cosine"], cos if cos == cos else -np.inf)
        if measure is None:
            continue
        items = next(iter(sample.values())).shape[0] if batch_axis else 1
        for item in range(items):
            one_ref = {k: v[item] for k, v in ref.items()} if batch_axis else ref
            one_got = {k: v[item] for k, v in got.items()} if batch_axis else got
            for key, value in measure(one_ref, one_got, item).items():
                if key.startswith("max_"):
                    worst[key] = max(worst.get(key, value), value)
                elif key.startswith("min_"):
                    worst[key] = min(worst.get(key, value), value)
                else:  # a count reported alongside (e.g. detections)
                    worst[key] = worst.get(key, 0.0) + value
    for key, limit in limits.items():
        if key not in worst:
            raise ParityError(f"{name}: fp16 check {key} was not measured")
        value = worst[key]
        bad = not value <= limit if key.startswith("max_") else not value >= limit
        if bad:
            bound = "at most" if key.startswith("max_") else "at least"
            raise ParityError(
                f"{name}: fp16 {key} is {value:.4g} against fp32 ({bound} {limit}); "
                f"outputs {compared}, measured {worst}"
            )
    log.info("fp16 %s: %s", name, ", ".join(f"{k} {v:.4g}" for k, v in worst.items()))
    report: dict[str, Any] = {
        "max_rel_diff": worst["max_rel_diff"],
        "min_cosine": worst["min_cosine"],
        "outputs_compared": compared,
        "checks": {k: {"measured": v, "limit": limits.get(k)} for k, v in worst.items()},
        "kept_fp32_ops": [op for op in blocked if op in present],
        "kept_fp32_nodes": list(keep_fp32_nodes),
        "size_ratio": fp16_path.stat().st_size / fp32_path.stat().st_size,
    }
    return report, onnx.load(str(fp16_path))
