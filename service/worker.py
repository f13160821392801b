"""``python -m service.worker CHANNEL INDEX``: one worker process (``service.workers`` starts
it): the owner's settings, a registry that mirrors the owner's models, the same app and server."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from prometheus_client.core import Metric

from service import server
from service.app import create_app
from service.logs import configure_logging
from service.metrics import Metrics
from service.runtime import channel
from service.runtime.mirror import MirrorRegistry, OwnerLink
from service.runtime.registry import ModelRegistry
from service.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """A worker: the owner's settings, a registry that mirrors the owner's, the same server."""
    folder_arg, index_arg = (argv if argv is not None else sys.argv[1:])[:2]
    folder, index = Path(folder_arg), int(index_arg)
    settings: Settings = pickle.loads((folder / channel.SETTINGS_NAME).read_bytes())
    configure_logging(settings)
    link = OwnerLink(folder / channel.SOCKET_NAME, index)

    def mirror(settings: Settings, metrics: Metrics) -> ModelRegistry:
        return MirrorRegistry(settings, metrics, link=link)

    async def from_owner() -> list[Metric]:  # scraped here: the owner merges every process
        families: list[Metric] = await link.call("metrics")
        return families

    app = create_app(settings, registry_factory=mirror)
    metrics: Metrics = app.state.metrics
    link.families = metrics.families
    metrics.gather = from_owner
    server.run(app, settings, worker=True)


if __name__ == "__main__":
    main()
