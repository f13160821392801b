"""``python -m service``: Settings → service.server.run(create_app(settings)) (uvicorn).

``ORTSERVE_WORKERS`` > 1 adds HTTP processes that share this one's models (``service.workers``);
scale out beyond one machine with replicas. ``ortserve serve`` (service.cli) runs the same
``serve`` with settings from its options.
"""

from __future__ import annotations

import logging
import sys

from service import server
from service.app import create_app
from service.logs import configure_logging
from service.runtime.session import SessionError, resolve_providers
from service.settings import Settings

log = logging.getLogger("service")


def serve(settings: Settings) -> None:
    configure_logging(settings)
    try:  # ORTSERVE_REQUIRE_CUDA on a build without CUDA: one clear line, not a traceback
        resolve_providers(settings.providers, settings.require_cuda)
    except SessionError as exc:
        log.error("not starting: %s", exc)
        sys.exit(2)
    server.run(create_app(settings), settings)


def main() -> None:
    serve(Settings())


if __name__ == "__main__":
    main()
