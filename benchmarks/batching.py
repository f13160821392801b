"""``make bench-gpu`` / ``python -m benchmarks.batching``: dynamic batching against batch-1 serving
for one image classifier, on the execution provider the server gets (the GPU check of issue 5).

    python -m benchmarks.batching --model-dir models-gpu/resnet50 --providers cuda --concurrency 64

One ortserve process serves the model twice, from a temporary repository whose two folders link
the model's files: ``<name>`` with the config's batching (or ``--max-batch-size``) and
``<name>-batch1`` with ``max_batch_size: 1``, so every request is its own run. The same /classify
load (one 640×480 JPEG photo per request, ``benchmarks.loadgen``) alternates between the two in
``--repeat`` rounds after a warm-up (which also lets cuDNN pick its kernels for the batch shapes
the load forms); a ratio is taken within each round and the median reported. ONNX Runtime alone,
in this process with the same providers, at batch 1 and at its best batch, gives the model's own
limit. With ``--providers cuda`` the server and the limit require the CUDA provider: this exits 1,
saying why, unless it is really active.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.harness import ROOT, load, load_measured, median_run, ortserve_server, save_results
from benchmarks.limit import Limit
from benchmarks.run import round_ratios
from benchmarks.scenarios import Scenario, photo_jpeg
from devtools.server import place
from service.model_config import load_model_config
from service.runtime.session import CUDA, SessionError, resolve_providers

MODES = ("dynamic", "batch-1")


def make_repository(model_dir: Path, root: Path, max_batch_size: int) -> dict[str, str]:
    """Two folders under ``root`` linking ``model_dir``'s files, one per mode: the dynamic one
    batching up to ``max_batch_size``, the other one item per run. Returns their names."""
    name = model_dir.name
    names = {"dynamic": name, "batch-1": f"{name}-batch1"}
    raw = yaml.safe_load((model_dir / "config.yaml").read_text(encoding="utf-8"))
    raw.pop("name", None)  # each folder is named after itself
    raw.setdefault("batching", {})
    sizes = {"dynamic": max_batch_size, "batch-1": 1}
    for mode, folder_name in names.items():
        folder = root / folder_name
        folder.mkdir()
        for item in model_dir.iterdir():
            if item.name != "config.yaml":
                place(item, folder / item.name)
        config = {**raw, "batching": {**raw["batching"], "max_batch_size": sizes[mode]}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return names


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def render(report: dict[str, Any]) -> str:
    lines = [
        "| mode | model | max batch | conc | img/s | p50 ms | p95 ms | p99 ms | errors | mean batch | CPU ms/req (loop) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for point in report["points"]:
        for mode in MODES:
            run, info = point[mode], report["modes"][mode]
            lines.append(
                f"| {mode} | {info['model']} | {info['max_batch_size']} | {point['concurrency']} | "
                f"{run['throughput_rps']:.1f} | {run['p50_ms']:.1f} | {run['p95_ms']:.1f} | "
                f"{run['p99_ms']:.1f} | {sum(run['errors'].values())} | "
                f"{run['mean_batch_size'] or 0:.1f} | {run['cpu_ms_per_request']:.2f} "
                f"({run['loop_cpu_ms_per_request']:.2f}) |"
            )
    lines.append("")
    for point in report["points"]:
        ratio = point["dynamic_over_batch1"]
        rounds = ", ".join(f"{r:.2f}" for r in ratio["rounds"])
        lines.append(
            f"dynamic / batch-1 at concurrency {point['concurrency']}: {ratio['median']:.2f} "
            f"(rounds: {rounds})"
        )
    limit = report["limit"]
    lines.append(
        f"ONNX Runtime alone ({', '.join(limit['providers'])}): batch 1 "
        f"{limit['by_batch'][1]:.1f} img/s ({limit['single_item_ms']:.2f} ms a run), best batch "
        f"{limit['best_batch']} {limit['items_per_s']:.1f} img/s; JPEG decode + resize "
        f"{limit['prepare_cpu_ms_per_item']:.2f} CPU ms/img; with decoding beside the model "
        f"{limit['with_preparation']['items_per_s']:.1f} img/s (batch "
        f"{limit['with_preparation']['best_batch']})"
    )
    providers = ", ".join(report["modes"]["dynamic"]["providers"])
    machine = report["machine"]
    lines.append(f"server providers: {providers}; {machine['cpus']} CPUs, GPU: {machine['gpu']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="an image classifier")
    parser.add_argument("--providers", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--concurrency", default="64", help="comma-separated, e.g. 1,64")
    parser.add_argument(
        "--max-batch-size", type=int, help="the dynamic mode's (default: the config's)"
    )
    parser.add_argument("--duration-s", type=float, default=15.0, help="per mode and level")
    parser.add_argument("--repeat", type=int, default=3, help="rounds the duration is split over")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="per mode, before the rounds")
    parser.add_argument("--limit-s", type=float, default=3.0, help="ORT alone, per batch size")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    model_dir = args.model_dir.resolve()
    config, _ = load_model_config(model_dir)
    if config.task != "classify" or config.image is None or not config.batched:
        raise SystemExit(f"{model_dir} is not a batched image classifier")
    levels = [int(c) for c in args.concurrency.split(",")]
    jpeg = photo_jpeg()
    try:
        providers = resolve_providers(args.providers, require_cuda=args.providers == "cuda")
        scenario = Scenario("classify", model_dir.name, "/classify", [], 1, [jpeg])
        limit = Limit(model_dir.parent, scenario, providers, max_batch_size=args.max_batch_size)
        if args.providers == "cuda" and CUDA not in limit.providers:
            raise SessionError(f"{CUDA} did not activate (ONNX Runtime's warning above says why)")
    except SessionError as exc:
        print(f"cannot run on --providers {args.providers}: {exc}", file=sys.stderr)
        return 1

    image = base64.b64encode(jpeg).decode()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "gpu": gpu_name()},
        "model_dir": str(model_dir),
        "load_generator": "benchmarks.loadgen (asyncio, keep-alive, 1 process)",
        "image": "640x480 JPEG, one per request",
        "repeat": args.repeat,
        "modes": {},
        "points": [],
    }
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(m, c): [] for m in MODES for c in levels}
    limit_rounds = []
    with tempfile.TemporaryDirectory(prefix="ortserve-batching-") as tmp:
        root = Path(tmp) / "models"
        root.mkdir()
        names = make_repository(
            model_dir, root, args.max_batch_size or config.batching.max_batch_size
        )
        bodies = {m: [json.dumps({"images": [image], "model": names[m]})] for m in MODES}
        env = {
            "ORTSERVE_PROVIDERS": args.providers,
            "ORTSERVE_REQUIRE_CUDA": str(args.providers == "cuda").lower(),
            "ORTSERVE_DEFAULT_CLASSIFY_MODEL": names["dynamic"],
        }
        try:
            with ortserve_server(root, env, log=Path(tmp) / "server.log") as (url, proc):
                listed = httpx.get(url + "/v1/models", timeout=10).json()["models"]
                for mode in MODES:
                    [info] = [m for m in listed if m["name"] == names[mode]]
                    report["modes"][mode] = {
                        "model": names[mode],
                        "providers": info["providers"],
                        "max_batch_size": info["batching"]["max_batch_size"],
                    }
                    print(f"[warm-up] {mode}: {info['providers']}", flush=True)
                    load(url + "/classify", bodies[mode], max(levels), args.warmup_s)
                for r in range(args.repeat):
                    print(f"[round {r + 1}/{args.repeat}]", flush=True)
                    limit_rounds.append(limit.measure(args.limit_s / args.repeat))
                    for i, c in enumerate(levels):
                        order = MODES if (r + i) % 2 == 0 else MODES[::-1]
                        for mode in order:
                            runs[(mode, c)].append(
                                load_measured(
                                    url + "/classify",
                                    bodies[mode],
                                    c,
                                    args.duration_s / args.repeat,
                                    proc.pid,
                                )
                            )
        except RuntimeError as exc:
            print(f"the server did not start: {exc}", file=sys.stderr)
            return 1
    report["limit"] = {**limit.summary(limit_rounds), "providers": limit.providers}
    for c in levels:
        rps = {m: [run["throughput_rps"] for run in runs[(m, c)]] for m in MODES}
        point: dict[str, Any] = {m: median_run(runs[(m, c)]) for m in MODES}
        point["concurrency"] = c
        point["dynamic_over_batch1"] = round_ratios(rps["dynamic"], rps["batch-1"])
        report["points"].append(point)
    table = render(report)
    print(table)
    save_results(args.out, "batching", report, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
