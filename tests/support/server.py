"""Start a real ``python -m service`` (uvicorn) process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_server(
    model_repository: Path | str, ready_timeout_s: float = 180.0, **env: str
) -> Iterator[Server]:
    """Run the service on a free port until the block ends; yields once /health/ready is 200.

    Extra keyword arguments become ``ORTSERVE_<NAME>`` environment variables.
    """
    port = free_port()
    environ = dict(os.environ)
    environ.update(
        ORTSERVE_MODEL_REPOSITORY=str(model_repository),
        ORTSERVE_HOST="127.0.0.1",
        ORTSERVE_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    environ.update({f"ORTSERVE_{key.upper()}": str(value) for key, value in env.items()})
    log_file = tempfile.NamedTemporaryFile(prefix="ortserve-", suffix=".log", delete=False)  # noqa: SIM115 - outlives this frame
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=environ,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, Path(log_file.name))
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout_s} s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log_file.close()


def assert_close(got: object, want: object, atol: float = 1e-4, path: str = "$") -> None:
    """Structural equality of JSON values with a tolerance on floats."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: {got!r} is not an object"
        assert got.keys() == want.keys(), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_close(got[key], want[key], atol, f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), f"{path}: {got!r} is not a list"
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, atol, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, str):
        assert abs(float(got) - want) <= atol, f"{path}: {got} != {want} ± {atol}"  # type: ignore[arg-type]
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
