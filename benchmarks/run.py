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
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

from service.runtime.model_config import load_model_config
from service.runtime.session import CPU, OrtSession
from service.tasks.base import stack_feeds
from service.tasks.embedding import TextEncoder, pad_feeds
from service.tasks.imaging import ImageProcessor

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "small",
    "children",
    "watch",
    "from",
    "the",
    "old",
    "stone",
    "bridge",
    "near",
    "the",
    "river",
    "and",
    "a",
    "man",
    "sells",
    "fresh",
    "bread",
    "to",
    "tourists",
    "in",
    "the",
    "market",
    "square",
]


@dataclass
class Scenario:
    name: str
    model: str
    path: str
    bodies: list[str]
    items_per_request: int
    samples: list[Any]  # raw inputs for the limit measurement (image bytes or texts)


def photo_jpeg(w: int = 640, h: int = 480) -> bytes:
    from skimage import data  # test images shipped with scikit-image

    img = Image.fromarray(data.coffee()).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def shapes_png(w: int = 640, h: int = 480, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x, y, s = (
            int(rng.integers(0, w - 120)),
            int(rng.integers(0, h - 120)),
            int(rng.integers(30, 110)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x, y, x + s, y + s), fill=colour)
        elif kind == 1:
            draw.rectangle((x, y, x + s, y + s), fill=colour)
        else:
            draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 25)))) for _ in range(n)]


def scenarios(models: Path) -> list[Scenario]:
    out: list[Scenario] = []

    def have(name: str) -> bool:
        return (models / name / "model.onnx").is_file()

    if have("mobilenet_v2"):
        jpeg = photo_jpeg()
        body = json.dumps({"images": [base64.b64encode(jpeg).decode()], "model": "mobilenet_v2"})
        out.append(Scenario("classify", "mobilenet_v2", "/classify", [body], 1, [jpeg]))
    for task, model in (("detect", "shapes-yolo"), ("segment", "shapes-unet")):
        if have(model):
            pngs = [shapes_png(seed=s) for s in range(4)]
            bodies = [
                json.dumps({"images": [base64.b64encode(p).decode()], "model": model}) for p in pngs
            ]
            out.append(Scenario(task, model, f"/{task}", bodies, 1, pngs))
    for model in ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"):
        if have(model):
            texts = sentences(256)
            singles = [json.dumps({"inputs": t, "model": model}) for t in texts]
            suffix = "" if model == "all-MiniLM-L6-v2" else "-int8"
            out.append(Scenario(f"embed{suffix}", model, "/embed", singles, 1, texts))
            batches = [
                json.dumps({"inputs": texts[i : i + 32], "model": model}) for i in range(0, 256, 32)
            ]
            out.append(Scenario(f"embed{suffix}-batch32", model, "/embed", batches, 32, texts))
    return out


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
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, ready_path: str):
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code in (200, 405):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_measured(
    url: str, bodies: list[str], concurrency: int, duration_s: float, pid: int
) -> dict[str, Any]:
    """One load run, plus the server's CPU time per request: all threads, and the event loop
    (the main thread) alone."""
    before, loop_before = cpu_s(pid), cpu_s(pid, pid)
    result = load(url, bodies, concurrency, duration_s)
    done = max(result["requests"], 1)
    result["cpu_ms_per_request"] = (cpu_s(pid) - before) * 1000.0 / done
    result["loop_cpu_ms_per_request"] = (cpu_s(pid, pid) - loop_before) * 1000.0 / done
    return result


def load_median(
    url: str, bodies: list[str], concurrency: int, duration_s: float, repeat: int, pid: int
) -> dict[str, Any]:
    """``repeat`` runs of ``duration_s / repeat``; the run with the median throughput, plus
    every run's throughput (``runs_rps``), so one slow moment of the host is visible, not
    decisive."""
    runs = [
        load_measured(url, bodies, concurrency, duration_s / repeat, pid) for _ in range(repeat)
    ]
    runs.sort(key=lambda r: r["throughput_rps"])
    chosen = dict(runs[len(runs) // 2])
    chosen["runs_rps"] = [r["throughput_rps"] for r in runs]
    return chosen


def load(url: str, bodies: list[str], concurrency: int, duration_s: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(bodies, f)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        "--url",
        url,
        "--bodies",
        f.name,
        "--concurrency",
        str(concurrency),
        "--duration-s",
        str(duration_s),
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    os.unlink(f.name)
    return json.loads(out.stdout)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


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


def render(report: dict[str, Any], chosen: list[Scenario]) -> str:
    lines = [
        "| scenario | limit items/s (batch) | conc | ortserve items/s | p50 ms | p95 ms | p99 ms | errors | mean batch | CPU ms/req (loop) | naive items/s | naive p50 ms | naive CPU ms/req | served/limit | served/naive |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sc in chosen:
        entry = report["scenarios"][sc.name]
        lim = entry["limit"]
        for served, naive in zip(entry["served"], entry["naive"], strict=True):
            s_items = served["throughput_rps"] * sc.items_per_request
            n_items = naive["throughput_rps"] * sc.items_per_request
            lines.append(
                f"| {sc.name} | {lim['items_per_s']:.0f} ({lim['best_batch']}) | {served['concurrency']} | "
                f"{s_items:.0f} | {served['p50_ms']:.1f} | {served['p95_ms']:.1f} | {served['p99_ms']:.1f} | "
                f"{sum(served['errors'].values())} | {served['mean_batch_size'] or 0:.1f} | "
                f"{served['cpu_ms_per_request']:.1f} ({served['loop_cpu_ms_per_request']:.1f}) | "
                f"{n_items:.0f} | {naive['p50_ms']:.1f} | {naive['cpu_ms_per_request']:.1f} | "
                f"{s_items / lim['items_per_s']:.2f} | {s_items / max(n_items, 1e-9):.2f} |"
            )
        lines.append(
            f"|  | single-item model latency {lim['single_item_ms']:.2f} ms; the limit's CPU "
            f"{lim['cpu_ms_per_item']:.2f} ms/item; decode or tokenize "
            f"{lim['prepare_cpu_ms_per_item']:.2f} ms/item |  |  |  |  |  |  |  |  |  |  |  |  |  |"
        )
    if "memory" in report:
        m = report["memory"]
        lines.append("")
        lines.append("memory: " + ", ".join(f"{k} = {v:.1f}" for k, v in m.items()))
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(report["scenarios"])
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 6), squeeze=False)
    for col, name in enumerate(names):
        entry = report["scenarios"][name]
        for kind in ("served", "naive"):
            conc = [r["concurrency"] for r in entry[kind]]
            axes[0][col].plot(
                conc, [r["throughput_rps"] for r in entry[kind]], marker="o", label=kind
            )
            axes[1][col].plot(conc, [r["p99_ms"] for r in entry[kind]], marker="o", label=kind)
        axes[0][col].set_title(name)
        axes[0][col].set_ylabel("requests/s")
        axes[1][col].set_ylabel("p99 ms")
        axes[1][col].set_xlabel("concurrency")
        axes[0][col].legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
