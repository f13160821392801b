"""Reload time and peak RSS: each model of a repository reloaded through the repository API.

    python -m benchmarks.reload --models models [--repeat 2]

Starts ortserve in explicit mode on the repository, then for each model: POST its load call
(a forced reload: the old and the new version are resident side by side until the old one
drains) while sampling the server's RSS every 20 ms. Prints, per model, the load call's time and
the RSS before, at peak and after the old version is released.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from pathlib import Path

import httpx

from devtools.server import rss_mb, running_server
from service.runtime.registry import repository_folders


def measure(url: str, pid: int, name: str) -> dict[str, float]:
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.02)

    before = rss_mb(pid)
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    response = httpx.post(f"{url}/v2/repository/models/{name}/load", timeout=600)
    seconds = time.perf_counter() - started
    time.sleep(1.0)  # the old version drains and is released after the call returns
    stop.set()
    sampler.join()
    response.raise_for_status()
    peak = max((s for s in samples if not math.isnan(s)), default=math.nan)
    return {"seconds": seconds, "before_mb": before, "peak_mb": peak, "after_mb": rss_mb(pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    names = sorted(repository_folders(args.models))
    with running_server(args.models, model_control="explicit", log_level="warning") as server:
        pid = server.process.pid
        print(f"startup RSS {rss_mb(pid):.0f} MiB, {len(names)} models")
        print("| model | reload s | RSS before MiB | peak MiB | after MiB |")
        print("| --- | --- | --- | --- | --- |")
        for name in names:
            for _ in range(args.repeat):
                m = measure(server.url, pid, name)
                print(
                    f"| {name} | {m['seconds']:.2f} | {m['before_mb']:.0f} | "
                    f"{m['peak_mb']:.0f} | {m['after_mb']:.0f} |"
                )


if __name__ == "__main__":
    main()
