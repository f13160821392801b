"""Start a real server process on a free local port, wait until it is ready, stop it.

One launcher for the end-to-end tests (``tests.support.server``), the benchmarks
(``benchmarks.harness``) and ``scripts/soak.py``: all three start ``python -m service`` (uvicorn)
with ``ORTSERVE_*`` settings, wait for ``/health/ready`` and stop it with SIGTERM (then SIGKILL),
so a fix to any of those steps reaches every caller. ``launched`` runs any other server command
the same way (the benchmarks' naive baseline). ``rss_mb`` is the memory reading the benchmarks
and the soak share.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
# What a startup failure quotes from the log: enough for a traceback, short of a whole warm-up.
LOG_TAIL_CHARS = 10_000


def free_port() -> int:
    """A local TCP port the OS just found free (another process may still take it before the
    server binds it; for local test and benchmark servers that race is rare enough)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server: its base URL, its process and the file its stdout and stderr go to."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        text = self.log()
        return text if len(text) <= chars else "…" + text[-chars:]


@contextlib.contextmanager
def launched(
    cmd: Sequence[str],
    url: str,
    *,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 180.0,
    ready_statuses: Collection[int] = (200,),
    stop_timeout_s: float = 30.0,
) -> Iterator[Server]:
    """Run ``cmd`` (from the repository root, ``env`` over this process's environment) until the
    block ends; yields once a GET of ``url + ready_path`` answers one of ``ready_statuses``.

    Output goes to ``log_path``, or to a new temporary file that is kept after the block (tests
    read a server's log after it has stopped). Raises ``RuntimeError`` quoting the end of the log
    when the process exits first or is not ready within ``ready_timeout_s``. On the way out the
    process gets SIGTERM (a graceful uvicorn shutdown), then SIGKILL after ``stop_timeout_s``.
    """
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="ortserve-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with open(log_path, "wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            list(cmd),
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(url, process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{shlex.join(cmd)} exited with {process.returncode} before it was ready; "
                    f"its log ({log_path}) ends:\n{server.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2).status_code in ready_statuses:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{shlex.join(cmd)} not ready after {ready_timeout_s} s; "
                    f"its log ({log_path}) ends:\n{server.log_tail()}"
                )
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def running_server(
    model_repository: Path | str,
    ready_timeout_s: float = 180.0,
    *,
    extra_env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    python: Path | str | None = None,
    **settings: str,
) -> Iterator[Server]:
    """``python -m service`` serving ``model_repository`` on a free port of 127.0.0.1 until the
    block ends; yields once ``/health/ready`` is 200 (every startup model loaded).

    Keyword arguments are settings: ``name=value`` becomes ``ORTSERVE_<NAME>=value``.
    ``extra_env`` holds whole variables and is applied last, so it wins over both. ``python``
    is the interpreter (default this one): another venv's, for another onnxruntime build.
    """
    port = free_port()
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(model_repository),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_PORT": str(port),
        "ORTSERVE_GRPC_PORT": "0",  # the gRPC front end only where asked: servers run side by side
        "PYTHONUNBUFFERED": "1",  # the log is complete up to the moment it is read
        **{f"ORTSERVE_{key.upper()}": str(value) for key, value in settings.items()},
        **(extra_env or {}),
    }
    with launched(
        [str(python or sys.executable), "-m", "service"],
        f"http://127.0.0.1:{port}",
        ready_path="/health/ready",
        env=env,
        log_path=log_path,
        ready_timeout_s=ready_timeout_s,
    ) as server:
        yield server


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS, MiB) from Linux /proc.

    NaN where it cannot be read (the process has gone, no /proc): a series of readings keeps its
    shape and arithmetic on it stays defined, and ``math.isnan`` tells the gaps.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return math.nan
    return math.nan


def place(source: Path, target: Path) -> None:
    """``source``'s file at ``target`` without copying where the file system allows: a hard
    link (a name inside the new folder), else a copy. Not a symlink: the server refuses a file
    that leads outside its model folder (service.paths)."""
    try:
        os.link(source.resolve(), target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)
