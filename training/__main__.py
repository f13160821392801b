"""``python -m training <model> --out models/<name>``: train a shapes demo model and export it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from training.train import TRAINERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("model", choices=sorted(TRAINERS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, help="training steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="where the trained weights go (default: artifacts/<model>.pt)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or Path("artifacts") / f"{args.model}.pt"
    kwargs = {"seed": args.seed, "checkpoint": checkpoint}
    if args.steps:
        kwargs["steps"] = args.steps
    started = time.perf_counter()
    parity = TRAINERS[args.model](args.out, **kwargs)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "seconds": round(time.perf_counter() - started, 1),
                "parity_max_abs_diff": parity["max_abs_diff"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
