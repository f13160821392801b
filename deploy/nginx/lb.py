"""Health-aware upstreams for nginx: the replicas of a Compose service that answer /health/ready.

Docker's embedded DNS returns one address per running container of a service, also for replicas
that are still loading their models or are shutting down, and nginx before 1.27.3 resolves the
names in an upstream block only when it loads its configuration. So every LB_INTERVAL_S seconds
this process resolves LB_UPSTREAM (host:port), probes each address's LB_HEALTH_PATH, and when the
set of ready replicas changes it rewrites the upstream file and reloads nginx (SIGHUP: in-flight
requests finish on the old workers). Replicas added with `docker compose up --scale` join, stopped
or unready ones leave. A replica leaves after LB_FAILS failed probes in a row and joins after one
good one. nginx's passive checks (max_fails, proxy_next_upstream) cover the time between probes.

It runs as the container's PID 1: SIGTERM becomes nginx's graceful shutdown (SIGQUIT).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HOST, _, PORT = os.environ.get("LB_UPSTREAM", "api:8000").rpartition(":")
HEALTH_PATH = os.environ.get("LB_HEALTH_PATH", "/health/ready")
INTERVAL_S = float(os.environ.get("LB_INTERVAL_S", "2"))
PROBE_TIMEOUT_S = float(os.environ.get("LB_PROBE_TIMEOUT_S", "3"))
FAILS = int(os.environ.get("LB_FAILS", "2"))
RUN_DIR = Path("/tmp/nginx")
UPSTREAM_FILE = RUN_DIR / "upstream.conf"
NO_REPLICA = "127.0.0.1:8081"  # nginx.conf's server answering 503 "no replica is ready"

# Probes go straight to the replicas, never through a proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} ortserve-lb: {message}\n")
    sys.stderr.flush()


def resolve() -> set[str]:
    try:
        infos = socket.getaddrinfo(HOST, int(PORT), socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return set()
    return {str(info[4][0]) for info in infos}


def probe(address: str) -> bool:
    url = f"http://{address}:{PORT}{HEALTH_PATH}"
    try:
        with _opener.open(url, timeout=PROBE_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):  # 503 while loading or draining, refused, timeout
        return False


class ReadySet:
    """The replicas to send requests to, with LB_FAILS probes of hysteresis before one leaves."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}
        self.pool = ThreadPoolExecutor(max_workers=16)

    def update(self) -> list[str]:
        addresses = sorted(resolve())
        results = dict(zip(addresses, self.pool.map(probe, addresses), strict=True))
        previous = self.failures
        self.failures = {}
        for address, ok in results.items():
            # a new address must pass once; a known one stays until it fails FAILS times in a row
            was = previous.get(address, FAILS)
            self.failures[address] = 0 if ok else was + 1
        return sorted(a for a, n in self.failures.items() if n < FAILS)


def write(servers: list[str]) -> None:
    lines = [f"server {a}:{PORT} max_fails=3 fail_timeout=10s;" for a in servers]
    text = "\n".join(lines or [f"server {NO_REPLICA};"]) + "\n"
    tmp = UPSTREAM_FILE.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(UPSTREAM_FILE)


def main() -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    ready = ReadySet()
    current = ready.update()
    write(current)
    log(f"upstream {HOST}:{PORT}, ready: {', '.join(current) or 'none'}")
    nginx = subprocess.Popen(["nginx", "-e", "stderr", "-g", "daemon off;"])
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        stopping.set()
        nginx.send_signal(signal.SIGQUIT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.wait(INTERVAL_S) and nginx.poll() is None:
        now = ready.update()
        if now != current:
            write(now)
            nginx.send_signal(signal.SIGHUP)
            log(f"ready: {', '.join(now) or 'none'} (was: {', '.join(current) or 'none'})")
            current = now
    return nginx.wait()


if __name__ == "__main__":
    sys.exit(main())
