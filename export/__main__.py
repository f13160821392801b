"""``python -m export <family> ...``: export a model folder; exit 1 on any parity failure."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time

from export.common import ExportError
from export.verify import ParityError

FAMILIES = [
    "export.classifiers",
    "export.text",
    "export.glove",
    "export.detection",
    "export.segmentation",
    "export.nanodet",
    "export.quantize",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    subparsers = parser.add_subparsers(dest="family", required=True)
    for name in FAMILIES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a family not present in this checkout
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    started = time.perf_counter()
    try:
        report = args.run(args)
    except (ParityError, ExportError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    summary = {"out": str(args.out), "seconds": round(time.perf_counter() - started, 1)}
    if isinstance(report, dict):
        summary["max_abs_diff"] = report.get("max_abs_diff")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
