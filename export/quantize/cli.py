"""``python -m export quantize`` and the exporters' ``--quantize int8``: the flags, and the
runs that call ``quantize_vision``."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from export.common import ExportError, add_out_argument
from export.quantize.gates import (
    DEFAULT_MAX_MAP_DROP,
    DEFAULT_MAX_MIOU_DROP,
    DEFAULT_MIN_TOP1_AGREEMENT,
    Gates,
)
from export.quantize.vision import quantize_vision

DESCRIPTION = """Static int8 quantization of a vision model folder (QDQ, per-channel weights), gated by how
often the int8 model gives clients the same answer as the fp32 one."""


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """The flags shared by ``quantize`` and the exporters' ``--quantize int8``."""
    p.add_argument(
        "--calibration",
        type=Path,
        help="folder of calibration images (every third, by name, held out for the gate); default: the "
        "sample photos scikit-image, matplotlib and scikit-learn ship",
    )
    p.add_argument(
        "--min-top1-agreement",
        type=float,
        default=DEFAULT_MIN_TOP1_AGREEMENT,
        help=f"classifiers: int8 top-1 = fp32 top-1 on at least this share of the held-out "
        f"images fp32 is sure of (top-1 > 0.5) (default {DEFAULT_MIN_TOP1_AGREEMENT})",
    )
    p.add_argument(
        "--max-map-drop",
        type=float,
        default=DEFAULT_MAX_MAP_DROP,
        help=f"detectors: largest mAP@0.5 drop against the fp32 detections "
        f"(default {DEFAULT_MAX_MAP_DROP})",
    )
    p.add_argument(
        "--max-miou-drop",
        type=float,
        default=DEFAULT_MAX_MIOU_DROP,
        help=f"semantic segmenters: largest mIoU drop against the fp32 class maps "
        f"(default {DEFAULT_MAX_MIOU_DROP})",
    )
    p.add_argument("--calibration-count", type=int, default=128, help="calibration images")
    p.add_argument("--heldout-count", type=int, default=200, help="held-out images")
    p.add_argument(
        "--no-latency", action="store_true", help="skip timing fp32 against int8 (tests)"
    )


def gates_from(args: argparse.Namespace) -> Gates:
    return Gates(args.min_top1_agreement, args.max_map_drop, args.max_miou_drop)


def add_parser(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "quantize",
        help="int8 copy of a vision model folder (static QDQ), gated on agreement with fp32",
        description=DESCRIPTION,
    )
    p.add_argument("--model-dir", type=Path, required=True, help="the fp32 model folder")
    add_out_argument(p, help="e.g. models/mobilenet_v2-int8")
    add_gate_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="crops of the calibration photos")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return quantize_vision(
        args.model_dir,
        args.out,
        calibration=args.calibration,
        gates=gates_from(args),
        seed=args.seed,
        calibration_count=args.calibration_count,
        heldout_count=args.heldout_count,
        latency=not args.no_latency,
    )


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    """``--quantize int8`` (and the gate flags) on a vision exporter's parser: its ``run`` then
    exports fp32 and quantizes that folder into ``--out`` in place. Call after ``set_defaults``."""
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: static QDQ quantization after the export, gated on agreement with fp32 "
        "(writes nothing when the gate fails)",
    )
    add_gate_arguments(p)
    export_run = p.get_default("run")

    def run(args: argparse.Namespace) -> Any:
        if args.quantize and getattr(args, "precision", "fp32") != "fp32":
            raise ExportError("--quantize int8 starts from fp32: leave out --precision")
        report = export_run(args)
        return after_export(args.out, args) or report

    p.set_defaults(run=run)


def after_export(out: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """``--quantize int8`` on an exporter: quantize the folder it just wrote into ``out`` itself
    (the fp32 folder moves to a temporary place first). None without the flag."""
    if getattr(args, "quantize", None) != "int8":
        return None
    with tempfile.TemporaryDirectory(dir=out.resolve().parent, prefix=".fp32-") as tmp:
        fp32 = Path(tmp) / out.name
        out.rename(fp32)
        try:
            return quantize_vision(
                fp32,
                out,
                calibration=args.calibration,
                gates=gates_from(args),
                calibration_count=args.calibration_count,
                heldout_count=args.heldout_count,
                latency=not args.no_latency,
            )
        except BaseException:
            # nothing written: the fp32 export is not left behind as if it were the int8 one
            shutil.rmtree(fp32, ignore_errors=True)
            raise
