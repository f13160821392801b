"""``quantize_vision``: an fp32 vision model folder → its int8 copy, written only when the
accuracy gate passes, with the recipe, the gate and the latency of both graphs in
``parity.json``."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx

from export.common import ExportError, read_metadata, set_metadata, write_model_folder
from export.quantize.calibration import image_sets
from export.quantize.gates import Gates, evaluate, prepare_batches
from export.quantize.selection import Recipe, quantize_graph
from export.verify import ParityError, compare_latency_ms

log = logging.getLogger("export")

INSTANCE_FORMATS = ("maskrcnn", "yolov8-seg")


def quantize_vision(
    model_dir: Path,
    out: Path,
    *,
    calibration: Path | None = None,
    gates: Gates | None = None,
    recipe: Recipe | None = None,
    calibration_count: int = 128,
    heldout_count: int = 200,
    seed: int = 0,
    latency: bool = True,
) -> dict[str, Any]:
    """Build ``out`` (an int8 copy of the fp32 folder ``model_dir``) if the accuracy gate
    passes; returns the report written to ``parity.json``. Raises ``ParityError`` (nothing
    written) when the gate fails, ``ExportError`` when the folder cannot be quantized."""
    from service.model_config import ConfigError, load_model_config

    gates = gates or Gates()
    recipe = recipe or Recipe()
    try:
        config, _ = load_model_config(model_dir)
    except ConfigError as exc:
        raise ExportError(str(exc)) from exc
    if config.task not in ("classify", "detect", "segment") or config.image is None:
        raise ExportError(f"{config.name}: --quantize int8 is for vision models, not {config.task}")
    if config.format in INSTANCE_FORMATS:
        raise ExportError(
            f"{config.name}: int8 for instance segmentation ({config.format}) has no accuracy "
            "gate yet; only classifiers, detectors and semantic segmenters are quantized"
        )
    if config.batching.max_batch_size == 0:
        raise ExportError(f"{config.name}: the graph has no batch axis; int8 needs one")
    fp32_path = model_dir / "model.onnx"
    sets = image_sets(
        calibration, calibration_count=calibration_count, heldout_count=heldout_count, seed=seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        int8_path = work / "model.onnx"
        log.info("%s: calibrating on %d images, %s", config.name, len(sets.calibration), recipe)
        kept = quantize_graph(
            fp32_path, int8_path, prepare_batches(model_dir, sets.calibration), recipe, work
        )
        gate = evaluate(model_dir, fp32_path, int8_path, sets.heldout, gates)
        log.info("%s int8 gate: %s", config.name, {k: gate[k] for k in ("gate", "value", "passed")})
        report: dict[str, Any] = {
            "model": out.name,
            "fp32_model": config.name,
            "precision": "int8",
            "recipe": {**asdict(recipe), **kept},
            "images": sets.source,
            "gate": gate,
            "passed": gate["passed"],
        }
        if not gate["passed"]:
            bound = gate.get("min", gate.get("max"))
            raise ParityError(
                f"{config.name}: int8 fails its accuracy gate: {gate['gate']} = "
                f"{gate['value']:.4f} (limit {bound}); nothing written"
            )
        if latency:
            report["latency_ms"] = measure_speedup(fp32_path, int8_path, model_dir, sets.heldout)
        write_int8_folder(model_dir, out, int8_path, report)
    return report


def measure_speedup(
    fp32_path: Path, int8_path: Path, folder: Path, images: Sequence[bytes]
) -> dict[str, Any]:
    """Median in-process latency of both graphs, interleaved, one thread, batch 1 and 8
    (provisional: a shared machine's numbers are ratios within one run)."""
    result: dict[str, Any] = {"threads": 1}
    for batch in (1, 8):
        feeds = prepare_batches(folder, images[:batch], batch)[0]
        fp32_ms, int8_ms = compare_latency_ms([fp32_path, int8_path], feeds, runs=10)
        result[f"batch{batch}"] = {
            "fp32": round(fp32_ms, 2),
            "int8": round(int8_ms, 2),
            "speedup": round(fp32_ms / int8_ms, 2),
        }
    return result


def write_int8_folder(model_dir: Path, out: Path, int8_path: Path, report: dict[str, Any]) -> None:
    import yaml

    raw = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    if "name" in raw:
        raw["name"] = out.name
    description = raw.get("description") or raw.get("name") or model_dir.name
    raw["description"] = f"{description}, int8 (static QDQ, per-channel)"
    model = onnx.load(str(int8_path))
    meta = read_metadata(onnx.load(str(model_dir / "model.onnx")))
    meta.pop("versions", None)
    meta.update(
        {"precision": "int8", "quantization": {"fp32_model": model_dir.name, **report["recipe"]}}
    )
    set_metadata(model, meta)
    skip = {"model.onnx", "config.yaml", "parity.json"}
    extra = {p.name: p for p in model_dir.iterdir() if p.is_file() and p.name not in skip}
    write_model_folder(out, model, raw, extra_files=extra, parity=report)
