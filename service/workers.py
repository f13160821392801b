"""Worker processes (``ORTSERVE_WORKERS`` > 1): HTTP front ends beside the model owner.

One Python event loop costs about a quarter of a millisecond of CPU per request around the model,
on one core. With ``workers: N`` the server is N processes on one port (``SO_REUSEPORT``: the
kernel spreads connections over them): the first loads the models and owns them
(``service.runtime.owner``), the others mirror them (``service.runtime.mirror``) and send their
batches to it. Models are loaded once — not N times, as ``--workers`` of a plain ASGI server
would — so memory and GPU contexts do not grow with the workers.

The owner starts the workers once its own start-up is done, restarts one that dies, and stops
them first when it shuts down (they finish their requests on its sessions). A worker whose owner
goes away stops. Workers run in their own process group, so a Ctrl-C in a terminal reaches the
owner only, which stops them in order.

``python -m service.worker CHANNEL INDEX`` (``service.worker``) is a worker's entry point; the
owner starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from service.core import Core
from service.metrics import Metrics, merge
from service.runtime import channel
from service.runtime.owner import ModelOwner
from service.settings import Settings

log = logging.getLogger("service")
_RESTART_DELAY_S = 1.0
_QUICK_EXIT_S = 10.0  # a worker that dies this soon after starting, this many times, stays down
_QUICK_EXITS = 5
_READY_TIMEOUT_S = 300.0
# a process group of their own (in the owner's session, where tools that account for the
# server's CPU look): a terminal's Ctrl-C reaches the owner only, which stops them in order
_OWN_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
)


class Workers:
    """The owner's side: the model channel and the worker processes it supervises."""

    def __init__(self, settings: Settings, port: int) -> None:
        # what every worker runs with: the owner's settings (from the environment or the CLI),
        # on the port the owner bound (and its gRPC port, shared the same way)
        self.settings = settings.model_copy(update={"port": port})
        self.count = settings.workers - 1
        self.folder = channel.private_dir()
        self._owner: ModelOwner | None = None
        self._supervisors: list[asyncio.Task[None]] = []
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    async def start(self, core: Core, metrics: Metrics) -> None:
        (self.folder / channel.SETTINGS_NAME).write_bytes(pickle.dumps(self.settings))
        self._owner = owner = ModelOwner(core.registry, metrics.families, merge)
        core.settled = owner.settled
        metrics.gather = owner.scrape
        await self._owner.start(self.folder / channel.SOCKET_NAME)
        loop = asyncio.get_running_loop()
        self._supervisors = [
            loop.create_task(self._supervise(index), name=f"worker-{index}")
            for index in range(1, self.count + 1)
        ]
        for task in self._supervisors:
            task.add_done_callback(_log_failure)
        try:
            await asyncio.wait_for(self._owner.wait_ready(self.count), _READY_TIMEOUT_S)
        except (TimeoutError, asyncio.TimeoutError):
            log.error(
                "%d of %d worker process(es) ready after %.0f s; serving without the rest",
                len(self._owner.ready),
                self.count,
                _READY_TIMEOUT_S,
            )
            return
        log.info("%d worker process(es) ready beside the model owner", self.count)

    async def _supervise(self, index: int) -> None:
        quick = 0
        while not self._stopping:
            started = time.monotonic()
            # Popen (off the loop), not the loop's subprocesses: uvloop's take no process_group
            process = await asyncio.to_thread(_spawn, self.folder, index)
            self._processes[index] = process
            code = await asyncio.to_thread(process.wait)
            if self._stopping:
                return
            quick = quick + 1 if time.monotonic() - started < _QUICK_EXIT_S else 0
            if quick >= _QUICK_EXITS:
                log.error(
                    "worker %d exited with %d %d times at start; not restarting", index, code, quick
                )
                return
            log.warning("worker %d exited with %d; restarting it", index, code)
            await asyncio.sleep(_RESTART_DELAY_S)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every worker (each finishes its requests), SIGKILL what is left after
        ``grace_s``; then close the channel."""
        self._stopping = True
        running = [p for p in self._processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            waits = asyncio.gather(*(asyncio.to_thread(p.wait) for p in running))
            try:
                await asyncio.wait_for(waits, grace_s)
            except (TimeoutError, asyncio.TimeoutError):
                for process in running:
                    if process.returncode is None:
                        log.warning(
                            "worker pid %d did not stop in %.0f s; killing it", process.pid, grace_s
                        )
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                await asyncio.gather(
                    *(asyncio.to_thread(p.wait) for p in running), return_exceptions=True
                )
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        if self._owner is not None:
            await self._owner.stop()
        channel.remove_quietly(self.folder)


def _spawn(folder: Path, index: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.worker", str(folder), str(index)], **_OWN_GROUP
    )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s: supervising failed", task.get_name(), exc_info=task.exception())
