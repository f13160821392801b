"""The benchmark's processes: starting servers (with the launcher the tests share,
``devtools.server``), driving them with the load generator, and reading their CPU time from
/proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools.server import REPO_ROOT, launched, running_server

ROOT = REPO_ROOT
# Every default model loads and warms up before /health/ready: allow a slow, shared host.
READY_TIMEOUT_S = 300.0


@contextmanager
def server(
    cmd: list[str], env: dict[str, str], port: int, ready_path: str, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a server command (the naive baseline) with the shared launcher, wait until
    ``ready_path`` answers, stop it on exit. Its output goes to ``log`` (quoted when it exits
    early) or nowhere."""
    with launched(
        cmd,
        f"http://127.0.0.1:{port}",
        ready_path=ready_path,
        env=env,
        log_path=log or Path(os.devnull),
        ready_timeout_s=READY_TIMEOUT_S,
        ready_statuses=(200, 405),  # 405: a POST-only route answered, so the app is up
    ) as running:
        yield running.url, running.process


@contextmanager
def ortserve_server(
    models: Path, extra_env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m service`` serving ``models`` on a free local port, warnings only; yields once
    every model is ready."""
    with running_server(
        models,
        READY_TIMEOUT_S,
        extra_env=extra_env,
        log_path=log or Path(os.devnull),
        log_level="warning",
    ) as running:
        yield running.url, running.process


def save_results(out: Path, stem: str, report: dict[str, Any], table: str) -> Path:
    """``<stem>-<time>.json`` (the report) and ``.md`` (the table) under ``out``; returns the
    JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    path.with_suffix(".md").write_text(table + "\n")
    print(f"saved {path}")
    return path


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


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, plus every run's throughput (``runs_rps``), so one
    slow moment of the host is visible, not decisive."""
    ordered = sorted(runs, key=lambda r: r["throughput_rps"])
    chosen = dict(ordered[len(ordered) // 2])
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
    result: dict[str, Any] = json.loads(out.stdout)
    return result
