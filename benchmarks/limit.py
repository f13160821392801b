"""The limit: ONNX Runtime alone on a scenario's model, in this process, in every arrangement
the server may run it in (one session on all cores, or ``instances`` sessions side by side), on
pre-made tensors and with the raw inputs prepared beside it. ``benchmarks.run`` and
``benchmarks.ceiling`` measure against it."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scenarios import Scenario
from service.model_config import load_model_config
from service.runtime.session import CPU, OrtSession, cores_per_session
from service.settings import Settings
from service.tasks.base import Feeds
from service.tasks.factory import processor_for


def run_side_by_side(
    sessions: list[OrtSession], feeds: Callable[[int], Feeds], size: int, seconds: float
) -> tuple[float, int]:
    """items/s and runs of ``sessions`` each running batches of ``size`` (``feeds(i)``, the
    i-th run's) back to back for ``seconds``, each on a thread of its own (one: this thread)."""
    counts = [0] * len(sessions)
    started = time.perf_counter()
    until = started + seconds

    def loop(index: int) -> None:
        n = 0
        while time.perf_counter() < until:
            sessions[index].run(feeds(n))
            n += 1
        counts[index] = n

    if len(sessions) == 1:
        loop(0)
    else:
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    runs = sum(counts)
    return runs * size / (time.perf_counter() - started), runs


class Limit:
    """ONNX Runtime alone on one scenario's model: set up once, measured once per round."""

    def __init__(
        self,
        models: Path,
        scenario: Scenario,
        providers: list[str] | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        folder = models / scenario.model
        config, labels = load_model_config(folder)
        path = folder / config.model_file
        # the arrangements ORT alone can run the model in here: one session on all cores, and,
        # where the config asks for instances, as many sessions side by side sharing the cores
        # (as the server runs it); each round measures both and the limit is the better one
        instances = config.batching.instances
        self.arrangements: dict[int, list[OrtSession]] = {
            n: [
                OrtSession(
                    path, providers=providers or [CPU], intra_op_threads=cores_per_session(0, n)
                )
                for _ in range(n)
            ]
            for n in sorted({1, instances})
        }
        self.providers = self.arrangements[1][0].providers
        self.samples = scenario.samples
        # the server's own processor (the one factory), so the limit prepares exactly as it does
        processor = processor_for(folder, config, labels, max_image_pixels=10**9)

        def prepare(sample: Any) -> list[Feeds]:
            return [processor.prepare(sample)[0]]

        collate = processor.collate
        self.prepare: Callable[[Any], list[Feeds]] = prepare
        self.collate: Callable[[list[Feeds]], Feeds] = collate
        items: list[Feeds] = [feeds for sample in scenario.samples for feeds in prepare(sample)]
        # the server's own per-item work that the limit skips: decode + resize, or tokenize
        n, started = 0, time.process_time()
        while n < len(items) or time.process_time() - started < 0.5:
            prepare(scenario.samples[n % len(scenario.samples)])
            n += 1
        self.prepare_ms = (time.process_time() - started) * 1000.0 / n
        sizes = (
            [1]
            if not config.batched
            else [
                b
                for b in (1, 2, 4, 8, 16, 32, 64)
                if b <= (max_batch_size or config.batching.max_batch_size)
            ]
        )
        self.batches = {
            size: [collate([items[(i + k) % len(items)] for k in range(size)]) for i in range(8)]
            for size in sizes
        }

    def measure(self, seconds: float) -> dict[str, Any]:
        """One round, ``seconds`` per measurement: items/s and ORT CPU ms per item at each batch
        size on pre-made tensors, then items/s at each batch size with preparation beside it;
        each the better of the arrangements (``sessions``: which one it was)."""
        rates: dict[int, float] = {}
        cpu_ms: dict[int, float] = {}
        sessions: dict[int, int] = {}
        single_ms = 0.0
        for size, batches in self.batches.items():

            def premade(i: int, batches: list[Feeds] = batches) -> Feeds:
                return batches[i % len(batches)]

            for n, arrangement in self.arrangements.items():
                for session in arrangement:
                    session.run(batches[0])
                cpu_started = time.process_time()
                rate, runs = run_side_by_side(arrangement, premade, size, seconds)
                if rate > rates.get(size, 0.0):
                    rates[size], sessions[size] = rate, n
                    cpu_ms[size] = (time.process_time() - cpu_started) * 1000.0 / (runs * size)
                if size == 1 and n == 1:
                    single_ms = 1000.0 / rate
        return {
            "by_batch": rates,
            "cpu_ms": cpu_ms,
            "sessions": sessions,
            "single_item_ms": single_ms,
            "with_preparation": {
                size: max(
                    self.with_preparation(size, seconds, a) for a in self.arrangements.values()
                )
                for size in self.batches
            },
        }

    def with_preparation(self, size: int, seconds: float, sessions: list[OrtSession]) -> float:
        """items/s of the model at batch ``size`` while the raw samples are decoded and resized (or
        tokenized) beside it, in as many threads as the server's pool: what a server on this
        machine could reach before any HTTP, with every batch full."""
        ready: queue.Queue[Feeds] = queue.Queue(maxsize=4 * size)
        stop = threading.Event()
        workers = Settings().preprocess_workers  # the servers get the same environment

        def produce(first: int) -> None:
            for i in itertools.count(first, workers):
                for feeds in self.prepare(self.samples[i % len(self.samples)]):
                    while not stop.is_set():
                        try:
                            ready.put(feeds, timeout=0.05)
                            break
                        except queue.Full:
                            continue
                if stop.is_set():
                    return

        def take(_: int) -> Feeds:
            return self.collate([ready.get(timeout=60) for _ in range(size)])

        threads = [threading.Thread(target=produce, args=(w,), daemon=True) for w in range(workers)]
        for thread in threads:
            thread.start()
        try:
            for session in sessions:
                session.run(take(0))  # warm-up
            return run_side_by_side(sessions, take, size, seconds)[0]
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    def summary(self, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        by_size, best = self._best(rounds, "by_batch")
        prepared, prepared_best = self._best(rounds, "with_preparation")
        return {
            "items_per_s": by_size[best],
            "best_batch": best,
            "by_batch": by_size,
            "single_item_ms": float(np.median([r["single_item_ms"] for r in rounds])),
            # CPU time of all ORT threads per item at the best batch: what an item costs the cores
            "cpu_ms_per_item": float(np.median([r["cpu_ms"][best] for r in rounds])),
            # sessions side by side in the best batch's median round (1: one on all cores)
            "sessions": int(np.median([r.get("sessions", {}).get(best, 1) for r in rounds])),
            "prepare_cpu_ms_per_item": self.prepare_ms,
            "with_preparation": {
                "items_per_s": prepared[prepared_best],
                "best_batch": prepared_best,
                "by_batch": prepared,
            },
            "rounds": rounds,
        }

    def _best(self, rounds: list[dict[str, Any]], key: str) -> tuple[dict[int, float], int]:
        """The median over rounds of ``key``'s items/s per batch size, and the best size."""
        by_size = {size: float(np.median([r[key][size] for r in rounds])) for size in self.batches}
        return by_size, max(by_size, key=lambda k: by_size[k])
