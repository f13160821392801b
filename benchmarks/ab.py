"""Before/after: the same ``make bench`` scenarios against this checkout's server and another
checkout's, in alternated rounds, reported as per-round ratios (after / before).

    python -m benchmarks.ab --before /tmp/before --models models --only classify,embed \
        [--rounds 3] [--concurrency 32] [--duration-s 6]

Each round starts one server, loads every scenario in turn, stops it, then the other: one server
at a time, so the two never share the CPU. The other checkout runs on this venv (its code only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import load
from benchmarks.scenarios import scenarios
from devtools.server import REPO_ROOT, free_port, launched


def serve_from(root: Path, models: Path, port: int) -> list[str]:
    code = (
        f"import sys, runpy; sys.path.insert(0, {str(root)!r}); "
        "runpy.run_module('service', run_name='__main__')"
    )
    return [sys.executable, "-c", code]


def one_round(
    root: Path, models: Path, chosen: list[Any], args: argparse.Namespace
) -> dict[str, float]:
    port = free_port()
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(models),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_PORT": str(port),
        "ORTSERVE_STRICT_STARTUP": "false",  # an older checkout may not know every model
    }
    url = f"http://127.0.0.1:{port}"
    out: dict[str, float] = {}
    with launched(serve_from(root, models, port), url, ready_path="/health/ready", env=env):
        for s in chosen:
            load(url + s.path, s.bodies, args.concurrency, 1.0)  # warm
            result = load(url + s.path, s.bodies, args.concurrency, args.duration_s)
            out[s.name] = result["throughput_rps"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--only", default="classify,embed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=6.0)
    args = parser.parse_args()
    models = args.models.resolve()
    names = args.only.split(",")
    chosen = [s for s in scenarios(models) if s.name in names]
    ratios: dict[str, list[float]] = {s.name: [] for s in chosen}
    for i in range(args.rounds):
        before = one_round(args.before.resolve(), models, chosen, args)
        after = one_round(REPO_ROOT, models, chosen, args)
        for name in ratios:
            ratios[name].append(after[name] / before[name])
        print(json.dumps({"round": i + 1, "before_rps": before, "after_rps": after}), flush=True)
    print(
        json.dumps(
            {
                name: {
                    "ratios": [round(r, 3) for r in rs],
                    "median": round(statistics.median(rs), 3),
                }
                for name, rs in ratios.items()
            }
        )
    )


if __name__ == "__main__":
    main()
