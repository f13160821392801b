"""Before/after: the same ``make bench`` scenarios against this checkout's server and another
checkout's (or this one with other settings), in alternated rounds, reported as per-round ratios
(after / before) of throughput and of the server's CPU time per request.

    python -m benchmarks.ab --before /tmp/before --models models --only classify,embed \
        [--rounds 3] [--concurrency 32] [--duration-s 6]
    python -m benchmarks.ab --before . --before-env ORTSERVE_ORT_ALLOW_SPINNING=true \
        --after-env ORTSERVE_ORT_ALLOW_SPINNING=false --only classify

Each round starts one server, loads every scenario in turn, stops it, then the other (which goes
first alternates): one server at a time, so the two never share the CPU. The other checkout runs
on this venv (its code only). CPU ms per request counts every thread of the server process; on a
busy machine it moves less than throughput does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import load, load_measured
from benchmarks.scenarios import scenarios
from devtools.server import REPO_ROOT, free_port, launched


def serve_from(root: Path, models: Path, port: int) -> list[str]:
    code = (
        f"import sys, runpy; sys.path.insert(0, {str(root)!r}); "
        "runpy.run_module('service', run_name='__main__')"
    )
    return [sys.executable, "-c", code]


def one_round(
    root: Path, models: Path, chosen: list[Any], args: argparse.Namespace, extra: dict[str, str]
) -> dict[str, dict[str, float]]:
    port = free_port()
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(models),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_PORT": str(port),
        "ORTSERVE_GRPC_PORT": "0",
        "ORTSERVE_STRICT_STARTUP": "false",  # an older checkout may not know every model
        **extra,
    }
    url = f"http://127.0.0.1:{port}"
    out: dict[str, dict[str, float]] = {}
    cmd = serve_from(root, models, port)
    with launched(cmd, url, ready_path="/health/ready", env=env) as server:
        for s in chosen:
            load(url + s.path, s.bodies, args.concurrency, 1.0)  # warm
            r = load_measured(
                url + s.path, s.bodies, args.concurrency, args.duration_s, server.process.pid
            )
            out[s.name] = {"rps": r["throughput_rps"], "cpu_ms": r["cpu_ms_per_request"]}
    return out


def env_pairs(pairs: list[str]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--only", default="classify,embed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--before-env", action="append", default=[], metavar="K=V")
    parser.add_argument("--after-env", action="append", default=[], metavar="K=V")
    args = parser.parse_args()
    models = args.models.resolve()
    names = args.only.split(",")
    chosen = [s for s in scenarios(models) if s.name in names]
    sides = {
        "before": (args.before.resolve(), env_pairs(args.before_env)),
        "after": (REPO_ROOT, env_pairs(args.after_env)),
    }
    ratios: dict[str, dict[str, list[float]]] = {s.name: {"rps": [], "cpu_ms": []} for s in chosen}
    for i in range(args.rounds):
        order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
        got = {}
        for side in order:
            root, extra = sides[side]
            got[side] = one_round(root, models, chosen, args, extra)
        for name, per in ratios.items():
            for key, values in per.items():
                values.append(got["after"][name][key] / got["before"][name][key])
        print(json.dumps({"round": i + 1, "first": order[0], **got}), flush=True)
    summary = {
        name: {f"{key}_ratios": [round(r, 3) for r in rs] for key, rs in per.items()}
        | {f"{key}_median": round(statistics.median(rs), 3) for key, rs in per.items()}
        for name, per in ratios.items()
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
