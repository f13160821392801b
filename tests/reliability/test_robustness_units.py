"""In-process checks of the fixes behind the end-to-end reliability tests: how the batcher drops
vanished clients, and what start-up does with model folders that cannot even be read."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import yaml

from service.errors import ClientDisconnectedError
from service.model_config import ConfigError
from service.runtime.batcher import DynamicBatcher
from service.runtime.registry import ModelRegistry
from service.settings import Settings
from tests.support.tiny_models import classifier


def _batcher(run, **kw: float) -> DynamicBatcher[int, int]:
    opts = {"max_batch_size": 1, "max_delay_ms": 0, "max_queue_size": 16, **kw}
    batcher: DynamicBatcher[int, int] = DynamicBatcher("m", run, **opts)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def test_a_vanished_client_gets_a_typed_error_not_a_cancellation() -> None:
    """A CancelledError escaping a route is logged by uvicorn as a crash and counted as a 500;
    a ClientDisconnectedError (499) is handled like any other service error."""
    hold = threading.Event()
    ran: list[int] = []

    def run(items: list[int]) -> list[int]:
        hold.wait(5)
        ran.extend(items)
        return items

    async def gone() -> bool:
        return True

    batcher = _batcher(run)
    deadline = asyncio.get_running_loop().time() + 5
    blocker = asyncio.create_task(batcher.submit(1, deadline))
    await asyncio.sleep(0.02)
    left = asyncio.create_task(batcher.submit(2, deadline, gone))
    await asyncio.sleep(0.1)  # queued longer than the 50 ms after which clients are checked
    hold.set()
    await blocker
    with pytest.raises(ClientDisconnectedError) as info:
        await left
    assert info.value.status_code == 499
    assert ran == [1]
    assert batcher.stats.dropped_disconnected == 1
    await batcher.stop()


async def test_a_failing_disconnect_check_does_not_stop_the_model() -> None:
    async def broken_transport() -> bool:
        raise RuntimeError("the transport is in a strange state")

    batcher = _batcher(lambda items: items)
    deadline = asyncio.get_running_loop().time() + 5
    hold = asyncio.create_task(asyncio.sleep(0))
    await hold
    results = await asyncio.gather(
        *(batcher.submit(i, deadline, broken_transport) for i in range(6))
    )
    assert [r.value for r in results] == list(range(6))
    assert batcher.healthy
    assert (await batcher.submit(7, deadline)).value == 7
    await batcher.stop()


def _set_labels_file(folder: Path, content: bytes) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["labels"] = "labels.txt"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "labels.txt").write_bytes(content)


@pytest.fixture
def unreadable_repo(tmp_path: Path) -> Path:
    classifier(tmp_path / "good")
    classifier(tmp_path / "latin1-labels")
    _set_labels_file(tmp_path / "latin1-labels", "rot\ngrün\nblau\n".encode("latin-1"))
    (tmp_path / "binary-config").mkdir()
    (tmp_path / "binary-config" / "config.yaml").write_bytes(b"\xff\xfe\x00\x01task: classify")
    return tmp_path


def test_non_strict_start_up_survives_folders_that_cannot_even_be_decoded(
    unreadable_repo: Path,
) -> None:
    registry = ModelRegistry(Settings(model_repository=unreadable_repo, strict_startup=False))
    registry.load()  # before the fix: UnicodeDecodeError, the whole service down
    status = {name: (m.status, m.error or "") for name, m in registry.models.items()}
    assert status["good"][0] == "loading"  # loaded; start() would make it ready
    assert status["latin1-labels"][0] == "failed"
    assert "labels" in status["latin1-labels"][1]
    assert status["binary-config"][0] == "failed"
    assert "config.yaml cannot be read" in status["binary-config"][1]


def test_strict_start_up_names_the_undecodable_model(unreadable_repo: Path) -> None:
    registry = ModelRegistry(Settings(model_repository=unreadable_repo, strict_startup=True))
    with pytest.raises(ConfigError, match="'binary-config'"):
        registry.load()
