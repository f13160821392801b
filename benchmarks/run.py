"""``make bench``: ONNX Runtime alone (the limit) vs ortserve vs a naive per-request server.

For each scenario (model + request shape), in one run on one machine:
1. the limit: the model's ONNX session in this process, same thread settings as the server,
   pre-made input tensors, items/s at the best batch size;
2. ortserve (``python -m service``) under closed-loop HTTP load from a separate load-generator
   process (``benchmarks.loadgen``) at several concurrencies;
3. the naive baseline (``benchmarks.naive``: ``session.run`` per request, no batcher), same load.
Then memory: server RSS with all models loaded, after 1,000 and after 20,000 requests.

    python -m benchmarks.run [--models models] [--duration-s 8] [--concurrency 1,8,32,64]
                             [--repeat 3]

Each measurement is split into ``--repeat`` runs and the median is reported (all runs are in the
JSON): on a shared host a slow moment then spoils one run, not the table.

Prints one table and writes JSON (+ a PNG plot when matplotlib is installed) under results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import ROOT, free_port, load_median, rss_mb, server
from benchmarks.report import plot, render
from benchmarks.scenarios import Scenario, scenarios
from service.runtime.model_config import load_model_config
from service.runtime.session import CPU, OrtSession
from service.tasks.base import stack_feeds
from service.tasks.embedding import TextEncoder, pad_feeds
from service.tasks.imaging import ImageProcessor


# -- the limit ------------------------------------------------------------------------------------
def limit(
    models: Path, scenario: Scenario, seconds: float = 3.0, repeat: int = 1
) -> dict[str, Any]:
    folder = models / scenario.model
    config, _ = load_model_config(folder)
    session = OrtSession(folder / config.model_file, providers=[CPU])
    prepare: Any
    if config.image is not None:
        proc = ImageProcessor(config.image, config.inputs[0].name, max_pixels=10**9)
        prepare = lambda sample: [proc.preprocess(sample)[0]]  # noqa: E731
        collate = stack_feeds
    else:
        assert config.text is not None
        enc = TextEncoder(
            folder / config.text.tokenizer,
            max_length=config.text.max_length,
            input_names=[i.name for i in config.inputs],
        )
        prepare = lambda sample: [f for f, _ in enc.encode([sample], truncate=True)]  # noqa: E731
        pad = config.text.pad_token_id
        collate = lambda xs: pad_feeds(xs, pad)  # noqa: E731
    items = [feeds for sample in scenario.samples for feeds in prepare(sample)]
    # the server's own per-item work that the limit skips: decode + resize, or tokenize
    n, started = 0, time.process_time()
    while n < len(items) or time.process_time() - started < 0.5:
        prepare(scenario.samples[n % len(scenario.samples)])
        n += 1
    prepare_ms = (time.process_time() - started) * 1000.0 / n
    sizes = (
        [1]
        if not config.batched
        else [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= config.batching.max_batch_size]
    )
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    cpu_ms: dict[int, list[float]] = {size: [] for size in sizes}
    single: list[float] = []
    # rounds over all batch sizes, medians per size: a slow moment of a shared host then
    # spoils one sample, not one batch size
    for _ in range(repeat):
        for size in sizes:
            batches = [
                collate([items[(i + k) % len(items)] for k in range(size)]) for i in range(8)
            ]
            session.run(batches[0])
            n, started, cpu_started = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds / repeat:
                session.run(batches[n % len(batches)])
                n += 1
            elapsed = time.perf_counter() - started
            rates[size].append(n * size / elapsed)
            cpu_ms[size].append((time.process_time() - cpu_started) * 1000.0 / (n * size))
            if size == 1:
                single.append(elapsed / n * 1000.0)
    by_size = {size: float(np.median(r)) for size, r in rates.items()}
    single_ms = float(np.median(single)) if single else 0.0
    best = max(by_size, key=lambda k: by_size[k])
    return {
        "items_per_s": by_size[best],
        "best_batch": best,
        "by_batch": by_size,
        "single_item_ms": single_ms,
        # CPU time of all ORT threads per item at the best batch: what an item costs the cores
        "cpu_ms_per_item": float(np.median(cpu_ms[best])),
        "prepare_cpu_ms_per_item": prepare_ms,
    }


# -- servers and load -----------------------------------------------------------------------------
def memory_check(
    url: str, pid: int, all_scenarios: list[Scenario], total: int = 20_000
) -> dict[str, float]:
    loaded = rss_mb(pid)
    bodies = [
        s.bodies[0] for s in all_scenarios if s.name in ("classify", "embed", "detect", "segment")
    ]
    paths = [s.path for s in all_scenarios if s.name in ("classify", "embed", "detect", "segment")]
    done, after_1k = 0, float("nan")
    with httpx.Client(base_url=url, timeout=60) as client:
        while done < total:
            i = done % len(bodies)
            client.post(paths[i], content=bodies[i], headers={"content-type": "application/json"})
            done += 1
            if done == 1000:
                after_1k = rss_mb(pid)
    after_all = rss_mb(pid)
    return {
        "rss_loaded_mb": loaded,
        "rss_after_1k_mb": after_1k,
        f"rss_after_{total // 1000}k_mb": after_all,
        "growth_pct": (after_all - after_1k) / after_1k * 100.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="ortserve benchmark")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--memory-requests", type=int, default=20_000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="split each measurement into this many runs and report the median",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    chosen = scenarios(args.models)
    if args.only:
        chosen = [s for s in chosen if s.name in args.only.split(",")]
    if not chosen:
        raise SystemExit(f"no default models in {args.models}: run `make models` first")
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "scenarios": {},
        "load_generator": "benchmarks.loadgen (asyncio, keep-alive, 1 process)",
        "repeat": args.repeat,
    }
    for sc in chosen:
        print(f"[limit] {sc.name} ({sc.model})", flush=True)
        report["scenarios"][sc.name] = {
            "model": sc.model,
            "limit": limit(args.models, sc, repeat=args.repeat),
            "served": [],
            "naive": [],
        }
    port = free_port()
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(args.models),
        "ORTSERVE_PORT": str(port),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_LOG_LEVEL": "warning",
    }
    with server([sys.executable, "-m", "service"], env, port, "/health/ready") as (url, proc):
        for sc in chosen:
            for c in levels:
                print(f"[ortserve] {sc.name} c={c}", flush=True)
                report["scenarios"][sc.name]["served"].append(
                    load_median(url + sc.path, sc.bodies, c, args.duration_s, args.repeat, proc.pid)
                )
        if args.memory_requests:
            print(f"[memory] {args.memory_requests} requests", flush=True)
            report["memory"] = memory_check(url, proc.pid, chosen, args.memory_requests)
    for sc in chosen:
        naive_port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.naive",
            "--model-dir",
            str(args.models / sc.model),
            "--port",
            str(naive_port),
        ]
        with server(cmd, {}, naive_port, "/docs") as (url, naive_proc):
            for c in levels:
                print(f"[naive] {sc.name} c={c}", flush=True)
                report["scenarios"][sc.name]["naive"].append(
                    load_median(
                        url + sc.path, sc.bodies, c, args.duration_s, args.repeat, naive_proc.pid
                    )
                )
    table = render(report, chosen)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"bench-{stamp}.md").write_text(table + "\n")
    plot(report, args.out / f"bench-{stamp}.png")
    print(f"saved {args.out}/bench-{stamp}.json")


if __name__ == "__main__":
    main()
