"""``make bench``: ONNX Runtime alone (the limit) vs ortserve vs a naive per-request server.

For each scenario (model + request shape), in one run on one machine:
1. the limit: the model's ONNX session in this process, same thread settings as the server,
   pre-made input tensors, items/s at the best batch size; and the same with the raw inputs
   decoded and resized (or tokenized) beside it in the server's number of pool threads, the
   most a server could serve on this machine before any HTTP;
2. ortserve (``python -m service``) under closed-loop HTTP load from a separate load-generator
   process (``benchmarks.loadgen``) at several concurrencies;
3. the naive baseline (``benchmarks.naive``: ``session.run`` per request, no batcher), same load;
4. the pipeline scenario (``benchmarks.pipeline``, when the repository has ``detect-classify``):
   images/s of ``POST /pipelines/detect-classify`` against the client-side alternative (/detect,
   crop here, /classify the crops) at ``--pipeline-concurrency``, in the same rounds.
Then memory: server RSS right after startup (models loaded, no traffic), after the load above,
and after 1,000 and after 20,000 more mixed requests.

    python -m benchmarks.run [--models models] [--duration-s 8] [--concurrency 1,8,32,64]
                             [--repeat 3] [--only embed,classify,pipeline] [--memory-requests 20000]
                             [--check [RESULTS.json]]

``--check`` compares the results with the targets table of docs/benchmarks.md
(``benchmarks.targets``) and exits 1 naming every target missed.

The measurements are interleaved in ``--repeat`` rounds: each round measures every scenario's
limit, then ortserve and the naive server at each concurrency, alternating which goes first. A
ratio is taken within a round, from measurements seconds apart, and the median over rounds is
reported; the throughput and latency shown are those of the median run. A shared host's speed
drifts by tens of percent over minutes, which made ratios of measurements taken minutes apart
meaningless; within a round the drift mostly cancels. Every run is in the JSON.

Prints one table and writes JSON (+ a PNG plot when matplotlib is installed) under results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import overhead, pipeline, targets
from benchmarks.harness import (
    ROOT,
    load_measured,
    median_run,
    ortserve_server,
    save_results,
    server,
)
from benchmarks.limit import Limit
from benchmarks.report import plot, render
from benchmarks.scenarios import Scenario, scenarios
from devtools.server import free_port, rss_mb


# -- servers and load -----------------------------------------------------------------------------
def memory_check(
    url: str, pid: int, all_scenarios: list[Scenario], total: int = 20_000
) -> dict[str, float]:
    """RSS now (after the benchmark's load), then after the first 1,000 requests (or half of
    ``total``, if fewer) of mixed traffic, and after ``total``."""
    first = min(1000, total // 2)
    before = rss_mb(pid)
    mixed = [s for s in all_scenarios if s.name in ("classify", "embed", "detect", "segment")]
    rss_first = float("nan")
    with httpx.Client(base_url=url, timeout=60) as client:
        for done in range(1, total + 1):
            sc = mixed[done % len(mixed)]
            client.post(sc.path, content=sc.bodies[0], headers={"content-type": "application/json"})
            if done == first:
                rss_first = rss_mb(pid)
    rss_total = rss_mb(pid)
    return {
        "rss_after_load_mb": before,
        "requests_first": first,
        "rss_after_first_mb": rss_first,
        "requests_total": total,
        "rss_after_total_mb": rss_total,
        "growth_pct": (rss_total - rss_first) / rss_first * 100.0,
    }


def round_ratios(served: list[float], other: list[float]) -> dict[str, Any]:
    """Each round's ``served / other`` and their median (rounds are minutes apart, see above)."""
    per_round = [a / b if b > 0 else float("nan") for a, b in zip(served, other, strict=True)]
    return {"median": float(np.median(per_round)), "rounds": per_round}


def _overhead(args: argparse.Namespace) -> dict[str, Any]:
    print(f"[overhead] {args.overhead}", flush=True)
    result = overhead.run(args.overhead, args.models, rounds=args.repeat)
    print(result["output"], flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="ortserve benchmark")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument(
        "--limit-s",
        type=float,
        default=3.0,
        help="the limit's measuring time per batch size, split over the rounds",
    )
    parser.add_argument("--memory-requests", type=int, default=20_000)
    parser.add_argument(
        "--pipeline-concurrency",
        type=int,
        default=8,
        help="the pipeline scenario's concurrency (both ways)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="interleaved rounds: each load point's --duration-s is split over them",
    )
    parser.add_argument(
        "--overhead",
        type=Path,
        default=None,
        metavar="SCRIPT",
        help="serving-overhead.sh (ortserve beside Triton and mosec), run after the rest; "
        "its numbers go in the report (benchmarks.overhead). --only overhead: it alone",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument(
        "--check",
        nargs="?",
        const="",
        metavar="RESULTS.json",
        help="compare with the targets of docs/benchmarks.md and exit 1 naming each one missed: "
        "this run's results, or (given a file) a saved report without running anything",
    )
    args = parser.parse_args()
    if args.check:
        raise SystemExit(targets.run_check(targets.load_report(Path(args.check))))
    if args.check is not None:
        targets.load_targets()  # an unreadable table fails now, not after the whole run
    args.models = args.models.resolve()  # the servers run with the repository root as cwd
    levels = [int(c) for c in args.concurrency.split(",")]
    chosen = scenarios(args.models)
    if args.only:
        chosen = [s for s in chosen if s.name in args.only.split(",")]
    piped = (not args.only or "pipeline" in args.only.split(",")) and pipeline.available(
        args.models
    )
    pipeline_rounds: list[dict[str, dict[str, Any]]] = []
    if not chosen and not piped and args.overhead is None:
        raise SystemExit(f"no default models in {args.models}: run `make models` first")
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "scenarios": {},
        "load_generator": "benchmarks.loadgen (asyncio, keep-alive, 1 process)",
        "repeat": args.repeat,
    }
    limits = {sc.name: Limit(args.models, sc) for sc in chosen}
    limit_rounds: dict[str, list[dict[str, Any]]] = {sc.name: [] for sc in chosen}
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {
        (sc.name, kind, c): [] for sc in chosen for kind in ("served", "naive") for c in levels
    }
    if not chosen and not piped:  # --only overhead
        report["overhead"] = _overhead(args)
        saved = save_results(args.out, "bench", report, report["overhead"]["output"])
        if args.check is not None:
            raise SystemExit(targets.run_check(report))
        return
    with ExitStack() as stack:
        ortserve = stack.enter_context(ortserve_server(args.models))
        rss_loaded = rss_mb(ortserve[1].pid)  # every model loaded and warmed up, no traffic yet
        naive: dict[str, tuple[str, Any]] = {}  # one naive server per model, all up at once
        for sc in chosen:
            if sc.model not in naive:
                naive_port = free_port()
                cmd = [sys.executable, "-m", "benchmarks.naive", "--model-dir"]
                cmd += [str(args.models / sc.model), "--port", str(naive_port)]
                naive[sc.model] = stack.enter_context(server(cmd, {}, naive_port, "/docs"))
        for r in range(args.repeat):
            for sc in chosen:
                print(f"[round {r + 1}/{args.repeat}] {sc.name}", flush=True)
                limit_rounds[sc.name].append(limits[sc.name].measure(args.limit_s / args.repeat))
                for i, c in enumerate(levels):
                    order = ("served", "naive") if (r + i) % 2 == 0 else ("naive", "served")
                    for kind in order:
                        url, proc = ortserve if kind == "served" else naive[sc.model]
                        runs[(sc.name, kind, c)].append(
                            load_measured(
                                url + sc.path, sc.bodies, c, args.duration_s / args.repeat, proc.pid
                            )
                        )
            if piped:
                print(f"[round {r + 1}/{args.repeat}] pipeline", flush=True)
                first = "server_side" if r % 2 == 0 else "client_side"
                seconds = args.duration_s / args.repeat
                pipeline_rounds.append(
                    asyncio.run(
                        pipeline.measure(
                            ortserve[0], args.models, args.pipeline_concurrency, seconds, first
                        )
                    )
                )
        if args.memory_requests and chosen:
            print(f"[memory] {args.memory_requests} requests", flush=True)
            url, proc = ortserve
            report["memory"] = {
                "rss_loaded_mb": rss_loaded,
                **memory_check(url, proc.pid, chosen, args.memory_requests),
            }
    for sc in chosen:
        lim = limits[sc.name].summary(limit_rounds[sc.name])
        best = lim["best_batch"]
        round_limits = [r["by_batch"][best] for r in limit_rounds[sc.name]]
        prepared_best = lim["with_preparation"]["best_batch"]
        round_prepared = [r["with_preparation"][prepared_best] for r in limit_rounds[sc.name]]
        entry: dict[str, Any] = {
            "model": sc.model,
            "limit": lim,
            "served": [],
            "naive": [],
            "ratios": [],
        }
        for c in levels:
            served_runs, naive_runs = runs[(sc.name, "served", c)], runs[(sc.name, "naive", c)]
            entry["served"].append(median_run(served_runs))
            entry["naive"].append(median_run(naive_runs))
            served_items = [x["throughput_rps"] * sc.items_per_request for x in served_runs]
            naive_items = [x["throughput_rps"] * sc.items_per_request for x in naive_runs]
            entry["ratios"].append(
                {
                    "concurrency": c,
                    "served_over_limit": round_ratios(served_items, round_limits),
                    "served_over_limit_with_preparation": round_ratios(
                        served_items, round_prepared
                    ),
                    "served_over_naive": round_ratios(served_items, naive_items),
                }
            )
        report["scenarios"][sc.name] = entry
    # every scenario X with an X-int8 beside it: int8 served / fp32 served, per round
    paired = [name for name in limits if f"{name}-int8" in limits]
    if paired:
        report["int8_over_fp32"] = {
            name: [
                {
                    "concurrency": c,
                    **round_ratios(
                        [x["throughput_rps"] for x in runs[(f"{name}-int8", "served", c)]],
                        [x["throughput_rps"] for x in runs[(name, "served", c)]],
                    ),
                }
                for c in levels
            ]
            for name in paired
        }
    table = render(report, chosen) if chosen else ""
    if pipeline_rounds:
        report["pipeline"] = pipeline.summary(pipeline_rounds)
        table = "\n\n".join(t for t in (table, pipeline.render(report["pipeline"])) if t)
    if args.overhead is not None:
        report["overhead"] = _overhead(args)
        table = "\n\n".join(t for t in (table, report["overhead"]["output"]) if t)
    print(table)
    saved = save_results(args.out, "bench", report, table)
    if chosen:
        plot(report, saved.with_suffix(".png"))
    if args.check is not None:
        raise SystemExit(targets.run_check(report))


if __name__ == "__main__":
    main()
