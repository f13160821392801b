"""Static int8 quantization of a vision model folder (QDQ, per-channel weights), gated by how
often the int8 model gives clients the same answer as the fp32 one.

    python -m export quantize --model-dir models/mobilenet_v2 --out models/mobilenet_v2-int8

The fp32 folder's own ``config.yaml`` says the task; its processor (``service.tasks.factory.
processor_for``) prepares the calibration and held-out images exactly as the service prepares a
client's, and turns both models' outputs into what a client receives (top-k, detections after
NMS, class maps at the original size). The gates compare int8 with fp32 on held-out images that
calibration never saw:

- classify: top-1 agreement (the int8 top-1 label is the fp32 one), ``--min-top1-agreement``;
- detect: mAP@0.5 of the int8 detections with the fp32 detections as the ground truth (there is
  no labelled data offline, so this measures the loss against fp32, not against COCO: fp32 scores
  1.0 by construction and the drop is ``1 - mAP``), ``--max-map-drop``;
- segment (semantic): mIoU of the int8 class maps against the fp32 ones, ``--max-miou-drop``.

A failed gate writes nothing and raises ``ParityError``. The folder is written atomically with
``export.common.write_model_folder``; ``parity.json`` records the recipe, the gate and its
measurements, and the in-process latency of both graphs.

Calibration: ``--calibration DIR`` (image files; every third by name is held out), or the built-in set — the photos scikit-image, matplotlib and scikit-learn ship, split
by photo into calibration and held-out ones, each expanded into seeded random crops.

The package, one job a module: ``calibration`` (the images), ``selection`` (the QDQ graph: which
nodes stay fp32, ONNX Runtime's static quantization), ``metrics`` (agreement, mAP, mIoU),
``gates`` (held-out images through both graphs and the folder's processor), ``vision`` (the
orchestration: ``quantize_vision``) and ``cli`` (``python -m export quantize`` and the
exporters' ``--quantize int8``).
"""

from __future__ import annotations

from export.quantize.calibration import (
    ImageSets,
    builtin_photos,
    folder_photos,
    image_sets,
    random_crops,
    split_photos,
)
from export.quantize.cli import (
    add_gate_arguments,
    add_parser,
    add_quantize_arguments,
    after_export,
    gates_from,
)
from export.quantize.gates import Gates, evaluate, image_processor, prepare_batches, run_items
from export.quantize.metrics import average_precision, classification_agreement, mean_iou
from export.quantize.selection import Recipe, input_nodes, output_nodes, quantize_graph
from export.quantize.vision import measure_speedup, quantize_vision, write_int8_folder

__all__ = [
    "Gates",
    "ImageSets",
    "Recipe",
    "add_gate_arguments",
    "add_parser",
    "add_quantize_arguments",
    "after_export",
    "average_precision",
    "builtin_photos",
    "classification_agreement",
    "evaluate",
    "folder_photos",
    "gates_from",
    "image_processor",
    "image_sets",
    "input_nodes",
    "mean_iou",
    "measure_speedup",
    "output_nodes",
    "prepare_batches",
    "quantize_graph",
    "quantize_vision",
    "random_crops",
    "run_items",
    "split_photos",
    "write_int8_folder",
]
