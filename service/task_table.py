"""The task table: every task the server knows, as one ``TaskSpec`` entry each.

The config validator (``service.model_config``), the processor factory
(``service.tasks.factory``), graph completion and warm-up (``service.runtime``), default models
(``service.settings``) and readiness and listing (``service.core``) all read this table; adding a
task is one module (its processor and a builder function) plus one entry here.

This module is pure data at the bottom of the layers and imports nothing of the service, so
everything may read it without a cycle: an entry names its processor builder as a
``"module:function"`` string (as MLServer's ``implementation`` setting does), which only the
factory resolves, with ``importlib``, when it builds a processor. The builder's signature is::

    build(folder: Path, config: ModelConfig, labels: Sequence[str], *, max_image_pixels: int)
        -> a processor (``service.tasks.base.BatchProcessor``)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Section = Literal["image", "text"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: what its config must hold and what serves it."""

    name: str
    formats: tuple[str, ...]  # the config's ``format`` values this task accepts
    processor: str  # "module:function" of the processor builder (see the module docstring)
    section: Section | None = None  # the preprocessing section its config must have
    # formats whose decoding reads more than the first output (in this order): outputs needed
    output_counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # the built-in default model of its typed route (``/classify`` ...; ``ORTSERVE_DEFAULT_<TASK>_
    # MODEL`` overrides it); None: no typed route, the task serves over v2 only
    default_model: str | None = None
    # inputs, outputs and the batch axis come from the graph where the config leaves them out
    graph_io: bool = False
    # rows of a batch may differ in every variable axis and nothing pads them: a batch runs as
    # one ONNX Runtime run per distinct set of shapes
    group_by_shape: bool = False

    def outputs_needed(self, fmt: str) -> int:
        return self.output_counts.get(fmt, 1)

    @property
    def typed_route(self) -> bool:
        return self.default_model is not None


def _counts(**counts: int) -> Mapping[str, int]:
    return MappingProxyType({name.replace("_", "-"): n for name, n in counts.items()})


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "classify",
            (
                "classification-logits",  # [B, C] raw scores: the service applies softmax
                "classification-probs",  # [B, C] probabilities already
            ),
            "service.tasks.classification:build",
            section="image",
            default_model="mobilenet_v2",
        ),
        TaskSpec(
            "detect",
            (
                "yolov8",  # Ultralytics v8/v11: [B, 4+nc, N] with cx,cy,w,h in input pixels
                "yolov5",  # Ultralytics v5: [B, N, 5+nc] with cx,cy,w,h,objectness
                "torchvision-detection",  # boxes [N,4] x1y1x2y2, labels [N], scores [N]; no batch
                "nanodet",  # NanoDet (GFL head): [B, N, C+4·bins], sigmoid scores, side bins
            ),
            "service.tasks.detection:build",
            section="image",
            output_counts=_counts(torchvision_detection=3),
            default_model="nanodet-coco",
        ),
        TaskSpec(
            "segment",
            (
                "semantic-logits",  # [B, C, h, w]
                "maskrcnn",  # boxes [N,4], labels [N], scores [N], masks [N,1,H,W]; no batch dim
                "yolov8-seg",  # Ultralytics -seg: [B, 4+nc+nm, N] then prototypes [B, nm, h, w]
            ),
            "service.tasks.segmentation:build",
            section="image",
            output_counts=_counts(maskrcnn=4, yolov8_seg=2),
            default_model="shapes-unet",
        ),
        TaskSpec(
            "embed",
            (
                "sentence-embedding",  # [B, D] pooled inside the graph
                "token-embeddings",  # [B, S, D]: the service pools with text.pooling
            ),
            "service.tasks.embedding:build",
            section="text",
            default_model="all-MiniLM-L6-v2",
        ),
        TaskSpec(
            "tensor",
            ("tensor",),  # any graph: tensors in, tensors out, over v2 only
            "service.tasks.tensor:build",
            graph_io=True,
            group_by_shape=True,
        ),
    )
}


def task_spec(task: str) -> TaskSpec:
    """The entry of ``task``; ``KeyError`` naming the known tasks when there is none."""
    try:
        return TASKS[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(TASKS)}") from None


def typed_tasks() -> list[str]:
    """The tasks with a typed route and a default model, in table order."""
    return [name for name, spec in TASKS.items() if spec.typed_route]


@contextmanager
def registered(spec: TaskSpec) -> Iterator[TaskSpec]:
    """``spec`` in the table for the block (tests, plug-ins loaded for one run)."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already in the table")
    TASKS[spec.name] = spec
    try:
        yield spec
    finally:
        TASKS.pop(spec.name, None)
