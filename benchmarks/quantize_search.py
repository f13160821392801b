"""Measure int8 quantization recipes on one vision model folder: the gate's measurement against
fp32 on the held-out images and the in-process speed-up, one row per recipe.

    python -m benchmarks.quantize_search --model-dir models/mobilenet_v2 [--variants a,b] [--json F]

Every recipe is calibrated on the same images (``export.quantize.image_sets``) and judged on
the same held-out ones, through the folder's own processor, so the rows compare recipes only.
Speed: fp32 and int8 run interleaved in this process (one thread, batch 1 and 8); on a shared
machine only the ratio means something. The table is docs/export.md's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from export.quantize import (
    Gates,
    Recipe,
    evaluate,
    image_sets,
    measure_speedup,
    prepare_batches,
    quantize_graph,
)

BASE = Recipe()
# the trial of issue 19: every op quantized, the graph outputs too
PLAIN = replace(BASE, keep_output_nodes_fp32=False, keep_input_nodes_fp32=False, op_types=())
OUTPUTS = replace(BASE, keep_input_nodes_fp32=False)


def variants() -> dict[str, Recipe]:
    return {
        "plain (all ops, outputs quantized)": PLAIN,
        "plain, Percentile 99.999": replace(PLAIN, calibrate_method="Percentile"),
        "plain, Entropy": replace(PLAIN, calibrate_method="Entropy"),
        "outputs fp32": OUTPUTS,
        "outputs fp32, Percentile 99.999": replace(OUTPUTS, calibrate_method="Percentile"),
        "outputs fp32, Conv/Gemm only": replace(OUTPUTS, op_types=("Conv", "Gemm", "MatMul")),
        "outputs fp32, per-tensor": replace(OUTPUTS, per_channel=False),
        "outputs fp32, S8S8": replace(OUTPUTS, activation_type="QInt8"),
        "default (outputs + first conv fp32)": BASE,
        "default, reduce_range": replace(BASE, reduce_range=True),
        "default, Percentile 99.999": replace(BASE, calibrate_method="Percentile"),
        "default, U8U8": replace(BASE, weight_type="QUInt8"),
        "default, LeakyRelu not quantized": replace(
            BASE, op_types=tuple(t for t in BASE.op_types if t != "LeakyRelu")
        ),
    }


def run(model_dir: Path, names: list[str] | None, seed: int) -> list[dict[str, Any]]:
    sets = image_sets(None, seed=seed)
    calib = prepare_batches(model_dir, sets.calibration)
    rows: list[dict[str, Any]] = []
    table = variants()
    for name, recipe in table.items():
        if names and name not in names:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            started = time.perf_counter()
            quantize_graph(model_dir / "model.onnx", work / "int8.onnx", calib, recipe, work)
            took = time.perf_counter() - started
            gate = evaluate(
                model_dir, model_dir / "model.onnx", work / "int8.onnx", sets.heldout, Gates()
            )
            speed = measure_speedup(
                model_dir / "model.onnx", work / "int8.onnx", model_dir, sets.heldout
            )
        row = {"variant": name, "quantize_s": round(took, 1), **gate, "latency_ms": speed}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quantize_search", description=__doc__
    )
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--variants", help="variant names separated by semicolons (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = run(args.model_dir, args.variants.split(";") if args.variants else None, args.seed)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
