"""``make bench-openvino`` / ``python -m benchmarks.openvino``: the vision models served with ONNX
Runtime's OpenVINO provider (FP32, on this CPU) against its default CPU provider (issue 19).

    python -m benchmarks.openvino --models models --openvino-python .venv-openvino/bin/python \
        [--cpu-python .venv/bin/python] [--rounds 3] [--concurrency 32] [--duration-s 8]

Two arms, each an interpreter and a ``runtime:`` block: ``cpu`` (``--cpu-python``, default this
one, the plain onnxruntime build; ``providers: [cpu]``) and ``openvino`` (``--openvino-python``,
onnxruntime-openvino; ``providers: [{name: openvino, device_type: CPU, precision: FP32}, cpu]``).
Each gets a temporary repository whose folders link the models' files, with that block in their
config.yaml (replacing any the model has). A round runs, per arm in alternated order, one server
(`python -m service`, one at a time: they never share the CPU) loaded with every scenario in turn
(warm-up, then a measured run at ``--concurrency``: items/s, p50/p99, CPU ms per request), then
ONNX Runtime alone in that arm's interpreter on the same models: the latency of one run at batch
1 and 8 on the server's own preprocessed inputs. Ratios openvino / cpu are taken within each
round; the report gives their median and every round's. An arm whose provider is not active in
its server or session fails the run: a silent fall back to CPU would look like a result.

The scenarios (``--scenarios task=model,...``): /classify mobilenet_v2 with a 640×480 JPEG photo,
/detect nanodet-coco with the same photo, /segment shapes-unet with 640×480 shapes PNGs, one image
per request (models missing from ``--models`` are left out, saying so).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
ARMS = ("cpu", "openvino")
RUNTIME = {
    "cpu": {"providers": [{"name": "cpu"}]},
    "openvino": {
        "providers": [
            {"name": "openvino", "device_type": "CPU", "precision": "FP32"},
            {"name": "cpu"},
        ]
    },
}
WANTED = {"cpu": CPU, "openvino": OPENVINO}
DEFAULT_SCENARIOS = "classify=mobilenet_v2,detect=nanodet-coco,segment=shapes-unet"
LATENCY_BATCHES = (1, 8)


# -- in-process: runs in the arm's own interpreter (no httpx, no skimage there) --------------------
def latency(repository: Path, samples: dict[str, list[Path]], seconds: float) -> dict[str, Any]:
    """ONNX Runtime alone on each model of ``repository`` (``samples``: model → raw input files),
    with the session the server would open (its runtime block) and its processor's inputs: the
    median and p90 ms of one run at each of LATENCY_BATCHES, and items/s."""
    import onnxruntime

    from service.model_config import load_model_config
    from service.runtime.model import open_session
    from service.settings import Settings
    from service.tasks.factory import processor_for

    settings = Settings()
    out: dict[str, Any] = {"onnxruntime": onnxruntime.__version__, "models": {}}
    for model, files in samples.items():
        folder = repository / model
        config, labels = load_model_config(folder)
        session = open_session(folder / config.model_file, config, settings, [CPU])
        processor = processor_for(folder, config, labels, max_image_pixels=10**9)
        raws: list[Any] = [f.read_bytes() for f in files]  # images: the tasks here are vision
        items = [processor.prepare(raw)[0] for raw in raws]
        by_batch: dict[str, Any] = {}
        for batch in LATENCY_BATCHES:
            if batch > config.batching.max_batch_size:
                continue
            feeds = processor.collate([items[i % len(items)] for i in range(batch)])
            for _ in range(3):  # warm: OpenVINO compiles a new shape on its first run
                session.run(feeds)
            times: list[float] = []
            started = time.perf_counter()
            while len(times) < 5 or time.perf_counter() - started < seconds:
                t = time.perf_counter()
                session.run(feeds)
                times.append(time.perf_counter() - t)
            by_batch[str(batch)] = {
                "runs": len(times),
                "median_ms": float(np.median(times) * 1000.0),
                "p90_ms": float(np.percentile(times, 90) * 1000.0),
                "items_per_s": batch * len(times) / sum(times),
            }
        out["models"][model] = {
            "providers": session.providers,
            "provider_options": session.provider_options,
            "by_batch": by_batch,
        }
    return out


# -- the driver ------------------------------------------------------------------------------------
def make_repository(models: Path, names: list[str], root: Path, runtime: dict[str, Any]) -> None:
    # here, not at the top: this module also runs in the OpenVINO venv, which has no httpx
    from devtools.server import place

    for name in names:
        source, folder = models / name, root / name
        folder.mkdir(parents=True)
        for item in source.iterdir():
            if item.name != "config.yaml":
                place(item, folder / item.name)
        config = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
        config.pop("name", None)
        config["runtime"] = runtime
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def bodies_for(task: str, model: str) -> tuple[list[str], list[bytes]]:
    from benchmarks.scenarios import photo_jpeg, shapes_png

    raws = [shapes_png(seed=s) for s in range(4)] if task == "segment" else [photo_jpeg()]
    bodies = [json.dumps({"images": [base64.b64encode(r).decode()], "model": model}) for r in raws]
    return bodies, raws


def check_provider(arm: str, where: str, providers: list[str]) -> None:
    if not providers or providers[0] != WANTED[arm]:
        raise SystemExit(f"{arm}: {where} runs on {providers}, not {WANTED[arm]}")


def serve_round(
    arm: str, python: str, repository: Path, scenarios: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    import httpx

    from benchmarks.harness import READY_TIMEOUT_S, load, load_measured
    from devtools.server import running_server

    env = {"ORTSERVE_PROVIDERS": "cpu", "ORTSERVE_LOG_LEVEL": "warning"}
    env |= {f"ORTSERVE_DEFAULT_{task.upper()}_MODEL": model for task, model in scenarios.items()}
    out: dict[str, Any] = {}
    log = repository.parent / f"{arm}-server.log"
    with running_server(
        repository, READY_TIMEOUT_S, python=python, log_path=log, extra_env=env
    ) as s:
        listed = {
            m["name"]: m for m in httpx.get(s.url + "/v1/models", timeout=30).json()["models"]
        }
        for task, model in scenarios.items():
            check_provider(arm, f"the server's {model}", listed[model]["providers"])
            bodies, _ = bodies_for(task, model)
            load(s.url + f"/{task}", bodies, args.concurrency, args.warmup_s)
            run = load_measured(
                s.url + f"/{task}", bodies, args.concurrency, args.duration_s, s.process.pid
            )
            run["provider_options"] = listed[model]["provider_options"]
            out[model] = run
            print(
                f"  {arm:8} {task:8} {model:14} {run['throughput_rps']:7.1f} items/s "
                f"p50 {run['p50_ms']:6.1f} ms  errors {sum(run['errors'].values())}",
                flush=True,
            )
    return out


def latency_round(
    arm: str, python: str, repository: Path, samples: dict[str, list[Path]], seconds: float
) -> dict[str, Any]:
    code = (
        "import json, sys; from pathlib import Path; from benchmarks.openvino import latency; "
        "a = json.loads(sys.argv[1]); "
        "print(json.dumps(latency(Path(a['repo']), "
        "{m: [Path(f) for f in fs] for m, fs in a['samples'].items()}, a['seconds'])))"
    )
    arg = json.dumps(
        {
            "repo": str(repository),
            "samples": {m: [str(f) for f in fs] for m, fs in samples.items()},
            "seconds": seconds,
        }
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [python, "-c", code, arg], cwd=root, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise SystemExit(f"{arm}: the in-process run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for model, info in result["models"].items():
        check_provider(arm, f"the in-process session of {model}", info["providers"])
        for batch, run in info["by_batch"].items():
            print(f"  {arm:8} in-process {model:14} batch {batch}: {run['median_ms']:.2f} ms/run")
    return result


def ratios(rounds: list[dict[str, float]]) -> dict[str, Any]:
    per_round = [r["openvino"] / r["cpu"] if r["cpu"] > 0 else float("nan") for r in rounds]
    return {"median": statistics.median(per_round), "rounds": per_round}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    served: dict[str, Any] = {}
    in_process: dict[str, Any] = {}
    rounds = report["rounds"]
    for model in report["scenarios"].values():
        rps = [{arm: r["served"][arm][model]["throughput_rps"] for arm in ARMS} for r in rounds]
        served[model] = {
            **{arm: statistics.median(x[arm] for x in rps) for arm in ARMS},
            "cpu_ms_per_request": {
                arm: statistics.median(
                    r["served"][arm][model]["cpu_ms_per_request"] for r in rounds
                )
                for arm in ARMS
            },
            "openvino_over_cpu": ratios(rps),
        }
        for batch in rounds[0]["latency"]["cpu"]["models"][model]["by_batch"]:
            ms = [
                {
                    arm: r["latency"][arm]["models"][model]["by_batch"][batch]["median_ms"]
                    for arm in ARMS
                }
                for r in rounds
            ]
            # a speed-up: cpu ms / openvino ms, so > 1 means OpenVINO is faster, as for items/s
            speedups = [{"openvino": m["cpu"], "cpu": m["openvino"]} for m in ms]
            in_process[f"{model}@{batch}"] = {
                **{f"{arm}_ms": statistics.median(x[arm] for x in ms) for arm in ARMS},
                "openvino_speedup": ratios(speedups),
            }
    return {"served": served, "in_process": in_process}


def render(report: dict[str, Any]) -> str:
    summary, c = report["summary"], report["concurrency"]
    lines = [
        f"Served, concurrency {c}, one image per request, median of {len(report['rounds'])} rounds:",
        "",
        "| model | task | CPU items/s | OpenVINO items/s | OpenVINO / CPU (rounds) | "
        "server CPU ms/req: CPU, OpenVINO |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, model in report["scenarios"].items():
        s = summary["served"][model]
        r = s["openvino_over_cpu"]
        lines.append(
            f"| {model} | /{task} | {s['cpu']:.1f} | {s['openvino']:.1f} | **{r['median']:.2f}** "
            f"({', '.join(f'{x:.2f}' for x in r['rounds'])}) | "
            f"{s['cpu_ms_per_request']['cpu']:.1f}, {s['cpu_ms_per_request']['openvino']:.1f} |"
        )
    lines += [
        "",
        "ONNX Runtime alone, one run on the server's preprocessed inputs (median ms):",
        "",
        "| model | batch | CPU ms/run | OpenVINO ms/run | speed-up CPU ms / OpenVINO ms (rounds) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, s in summary["in_process"].items():
        model, batch = key.rsplit("@", 1)
        r = s["openvino_speedup"]
        lines.append(
            f"| {model} | {batch} | {s['cpu_ms']:.2f} | {s['openvino_ms']:.2f} | "
            f"**{r['median']:.2f}** ({', '.join(f'{x:.2f}' for x in r['rounds'])}) |"
        )
    versions = report["rounds"][0]["latency"]
    lines.append(
        f"\ncpu: onnxruntime {versions['cpu']['onnxruntime']} ({report['python']['cpu']}); "
        f"openvino: onnxruntime-openvino {versions['openvino']['onnxruntime']} "
        f"({report['python']['openvino']}); {os.cpu_count()} CPUs"
    )
    return "\n".join(lines)


def main() -> int:
    from benchmarks.harness import ROOT, save_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--openvino-python", default=str(ROOT / ".venv-openvino/bin/python"))
    parser.add_argument("--cpu-python", default=sys.executable)
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help="task=model,...")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=8.0, help="per arm, model and round")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="per arm, model and round")
    parser.add_argument("--latency-s", type=float, default=2.0, help="per model and batch size")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    models = args.models.resolve()
    pythons = {"cpu": args.cpu_python, "openvino": args.openvino_python}
    if not Path(pythons["openvino"]).is_file():
        raise SystemExit(f"{pythons['openvino']} not found: `make openvino` builds .venv-openvino")
    scenarios: dict[str, str] = {}
    for pair in args.scenarios.split(","):
        task, model = pair.split("=")
        if (models / model / "model.onnx").is_file():
            scenarios[task] = model
        else:
            print(f"{model} is not in {models}: /{task} left out", flush=True)
    if not scenarios:
        raise SystemExit("none of the scenarios' models is built (make models)")
    report: dict[str, Any] = {
        "scenarios": scenarios,
        "concurrency": args.concurrency,
        "duration_s": args.duration_s,
        "python": pythons,
        "cpus": os.cpu_count(),
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="ortserve-openvino-") as tmp:
        repos = {arm: Path(tmp) / arm / "models" for arm in ARMS}
        for arm in ARMS:
            make_repository(models, list(scenarios.values()), repos[arm], RUNTIME[arm])
        samples: dict[str, list[Path]] = {}
        for task, model in scenarios.items():
            _, raws = bodies_for(task, model)
            samples[model] = []
            for i, raw in enumerate(raws):
                path = Path(tmp) / f"{model}-{i}.bin"
                path.write_bytes(raw)
                samples[model].append(path)
        try:
            for r in range(args.rounds):
                order = ARMS if r % 2 == 0 else ARMS[::-1]
                print(f"[round {r + 1}/{args.rounds}: {' then '.join(order)}]", flush=True)
                one: dict[str, Any] = {"order": list(order), "served": {}, "latency": {}}
                for arm in order:
                    one["served"][arm] = serve_round(arm, pythons[arm], repos[arm], scenarios, args)
                    one["latency"][arm] = latency_round(
                        arm, pythons[arm], repos[arm], samples, args.latency_s
                    )
                report["rounds"].append(one)
        except RuntimeError as exc:  # a server that did not start: its log's end is in it
            print(f"a server did not start: {exc}", file=sys.stderr)
            return 1
        finally:
            for arm in ARMS:  # keep the servers' logs beside the results
                log = Path(tmp) / arm / f"{arm}-server.log"
                if log.is_file():
                    args.out.mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, args.out / f"openvino-bench-{arm}-server.log")
    report["summary"] = summarise(report)
    table = render(report)
    print(table)
    save_results(args.out, "openvino", report, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
